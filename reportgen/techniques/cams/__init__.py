"""Class activation maps and input attributions: one shared pipeline, one small function per method.

The tutorials compute one Grad-CAM for one image and one class with a sub-model
`keras.Model(model.inputs, [conv.output, model.output])`, which breaks on loaded and nested Keras 3 models and
runs a forward and a backward pass per image *and* class. Here `ModelFunctions.layer_pass` runs the model once per
batch of images and class slots through `graph.run_layers` (any model, nested bases included), records the target
layer, and one backward pass gives the gradients of every (image, class) pair at once. Every method is then a
function of the same `MethodBatch` returning maps (B, T, h, w) for the B images and their T class slots
(pytorch-grad-cam's BaseCAM idea: the pipeline is shared, a method only says how to weigh).

Gradients are taken of the class *logit*: a softmax output saturates for confident predictions and its gradient
vanishes (the Keras tutorial removes the last activation for this reason). We never modify the model: when the
last layer has a softmax or sigmoid, we record the output of the layer feeding it and apply a copy of the last
layer without its activation.

The package: `target_layer` (which layer the layer methods weigh), `model_functions` (the score head and the
compiled passes), `methods` (the methods and their registry `METHODS`) and `explanation` (the pipeline, `explain`
and what is read from its results). Their public names are handed on here.
"""

from reportgen.techniques.cams.explanation import (
    SAME_MAPS_TOLERANCE,
    CamInputs,
    CamResults,
    Faithfulness,
    Heatmap,
    compute_maps,
    explain,
    faithfulness,
    pad_slots,
    same_maps,
)
from reportgen.techniques.cams.methods import (
    METHODS,
    CamMethod,
    CamSettings,
    MethodBatch,
    gradcam,
    gradcam_plus_plus,
    integrated_gradients,
    integrated_gradients_attributions,
    layercam,
    saliency,
    scorecam,
    smoothgrad,
)
from reportgen.techniques.cams.model_functions import (
    CURVE_BATCH_BUDGET,
    CURVE_BATCH_LIMIT,
    ModelFunctions,
    ScoreHead,
    curve_batch_size,
    feeder_path,
    score_head,
)
from reportgen.techniques.cams.target_layer import (
    CAM_LAYER_FLAG,
    MIN_MAP_SIDE,
    TargetLayer,
    choose_target_layer,
    class_score_conv,
)

__all__ = [
    "CAM_LAYER_FLAG",
    "CURVE_BATCH_BUDGET",
    "CURVE_BATCH_LIMIT",
    "METHODS",
    "MIN_MAP_SIDE",
    "SAME_MAPS_TOLERANCE",
    "CamInputs",
    "CamMethod",
    "CamResults",
    "CamSettings",
    "Faithfulness",
    "Heatmap",
    "MethodBatch",
    "ModelFunctions",
    "ScoreHead",
    "TargetLayer",
    "choose_target_layer",
    "class_score_conv",
    "compute_maps",
    "curve_batch_size",
    "explain",
    "faithfulness",
    "feeder_path",
    "gradcam",
    "gradcam_plus_plus",
    "integrated_gradients",
    "integrated_gradients_attributions",
    "layercam",
    "pad_slots",
    "saliency",
    "same_maps",
    "score_head",
    "scorecam",
    "smoothgrad",
]
