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
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.errors import InputError
from reportgen.graph import LayerNode, input_tape, pick_channel, run_layers
from reportgen.layer_kinds import has_kernel, is_conv, is_spatial
from reportgen.precision import computing_in
from reportgen.techniques.cam_trust import (
    DELETION_STEPS,
    CurvesProgress,
    SanityCheck,
    deletion_insertion,
    random_maps,
    sanity_check,
)
from reportgen.techniques.predictions import PROBABILITY_ACTIVATIONS, FinalLayer, Target, compiled, traceable

CAM_LAYER_FLAG = "--cam-layer"
# Images of one forward pass of the deletion and insertion curves at most: past it a pass gains nothing on
# dispatch, only memory.
CURVE_BATCH_LIMIT = 256
CURVE_BATCH_BUDGET = 1 << 30  # bytes of layer outputs (float32) one such pass may hold


@dataclass(frozen=True)
class CamSettings:
    """Knobs of the costlier methods; the defaults keep a CPU run to seconds per image."""

    batch_size: int = 16  # images per layer pass
    scorecam_channels: int = 32  # Faster Score-CAM: only the channels with the largest spatial variance
    smoothgrad_samples: int = 16  # Smilkov et al. use 50; 16 already averages most of the noise out
    smoothgrad_noise: float = 0.15  # noise std as a share of the input's value range (the paper's 10-20%)
    ig_steps: int = 32  # Riemann midpoint steps from the black image to the input
    seed: int = 0
    curves_dtype: str = "float32"  # the deletion and insertion curves' arithmetic (`precision.ranking_dtype`)
    # Images per forward pass of the curves (inference only, no tape): None for 4 x batch_size; a report without
    # --batch-size sets it from the layers' output sizes (`curve_batch_size`).
    curve_batch_size: int | None = None


def curve_batch_size(shapes: Mapping[str, Any], batch_size: int) -> int:
    """Images per forward pass of the deletion and insertion curves: an inference pass holds a few layer outputs
    at once (a layer's input and output, and a residual branch's), so as many images as three times the largest
    fit in CURVE_BATCH_BUDGET, at least the 4 x `batch_size` of the other passes, at most CURVE_BATCH_LIMIT."""
    largest = max((4 * math.prod(shape[1:]) for shape in shapes.values()
                   if all(isinstance(d, int) for d in shape[1:])), default=0)
    fitting = CURVE_BATCH_BUDGET // (3 * largest) if largest else CURVE_BATCH_LIMIT
    return max(4 * batch_size, min(CURVE_BATCH_LIMIT, fitting))


# --------------------------------------------------------------------------------------------- target layer


@dataclass(frozen=True)
class TargetLayer:
    """The layer whose activations the CAM methods weigh, and why it was chosen."""

    path: str
    type_name: str
    shape: tuple  # (None, h, w, channels)
    reason: str


# Grad-CAM's maps are upsampled from the target layer: below this many cells a side they are too coarse to say
# where the evidence is, so a later but coarser layer loses to an earlier block output of at least this size.
MIN_MAP_SIDE = 7


def _carries_features(layer: Any) -> bool:
    """Convolutions and the layers that keep a conv's map and only transform its values (normalisation,
    activation, merges): their outputs are feature maps. Pooling only resamples one, and nested models are
    represented by their own layers."""
    import keras

    layers = keras.layers
    kinds = (layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization, layers.Activation,
             layers.ReLU, layers.LeakyReLU, layers.PReLU, layers.ELU, layers.Softmax, layers.Add, layers.Multiply,
             layers.Average, layers.Maximum, layers.Concatenate, layers.Dropout, layers.SpatialDropout2D)
    return is_conv(layer) or isinstance(layer, kinds)


def class_score_conv(nodes: Sequence[LayerNode], shapes: Mapping[str, Any], classes: int | None) -> int | None:
    """Index of a conv that computes the class scores itself (one channel per class, as in all-convolutional
    nets such as the mini-Xception): no weighted layer follows it, only pooling, normalisation and activations.
    Its channels are the answer, not features, so every CAM method gives it the same map."""
    if not classes:
        return None
    for i in range(len(nodes) - 1, -1, -1):
        node = nodes[i]
        if node.is_model:
            continue
        if is_conv(node.layer):
            shape = shapes.get(node.path)
            if is_spatial(shape) and shape[-1] in (classes, 1 if classes == 2 else classes):
                return i
            return None
        if has_kernel(node.layer):
            return None  # a Dense head computes the scores: the convs before it carry features
    return None


def choose_target_layer(nodes: Sequence[LayerNode], shapes: Mapping[str, Any], requested: str | None = None, *,
                        blocks: set[str] | None = None, classes: int | None = None) -> TargetLayer | None:
    """`requested` (a path or a unique layer name, with a 4-D output), else the last block output with a map of
    at least MIN_MAP_SIDE cells a side (the last one of any size when none is that large).

    A block output is a layer the whole computation passes through (`graph.block_outputs`; every layer when
    `blocks` is None): in conv -> BN -> ReLU blocks the ReLU, in residual blocks the add or the activation after
    it. A class-score conv (`class_score_conv`) and what follows it are never chosen. None when the model has no
    conv layer with a spatial output.
    """
    if requested:
        node = _find_layer(nodes, requested)
        shape = shapes.get(node.path)
        if not is_spatial(shape):
            raise InputError(
                f"{CAM_LAYER_FLAG}: {node.path} ({node.type_name}) has output shape {shape}, not one 4-D (batch, "
                f"height, width, channels) map; choose a conv, pooling or activation layer such as "
                f"{_spatial_examples(nodes, shapes)}"
            )
        return TargetLayer(node.path, node.type_name, tuple(shape), f"chosen with {CAM_LAYER_FLAG}")
    convs = [i for i, node in enumerate(nodes) if is_conv(node.layer) and is_spatial(shapes.get(node.path))]
    if not convs:
        return None
    score = class_score_conv(nodes, shapes, classes)
    end = len(nodes) if score is None else score

    def candidates(require_block: bool) -> list[int]:
        return [i for i in range(convs[0], end) if not nodes[i].is_model and _carries_features(nodes[i].layer)
                and is_spatial(shapes.get(nodes[i].path)) and min(shapes[nodes[i].path][1:3]) > 1
                and (not require_block or blocks is None or nodes[i].path in blocks)]

    found = candidates(True) or candidates(False) or [c for c in convs if c < end] or convs[-1:]
    large = [i for i in found if min(shapes[nodes[i].path][1:3]) >= MIN_MAP_SIDE]
    chosen = (large or found)[-1]
    node = nodes[chosen]
    last_conv = max(i for i in convs if i <= chosen)
    h, w = shapes[node.path][1:3]
    between = nodes[last_conv + 1:chosen + 1]
    if chosen == last_conv:
        reason = "the last convolutional layer"
    elif blocks is None or all(n.path in blocks for n in between):  # a chain: conv -> BN -> ReLU
        reason = (f"the output of the convolutional layer {nodes[last_conv].path} after its "
                  f"{', '.join(dict.fromkeys(n.type_name for n in between))}")
    else:
        reason = f"the output of the residual block that ends at {node.path} ({node.type_name})"
    reason += f", {h}x{w}: the last block output" + (f" with a map of at least {MIN_MAP_SIDE}x{MIN_MAP_SIDE}"
                                                      if large else "")
    notes = []
    later = [i for i in found if i > chosen]
    if large and later:
        coarse = nodes[later[-1]]
        ch, cw = shapes[coarse.path][1:3]
        notes.append(f"later ones such as {coarse.path} ({ch}x{cw}) are too coarse to localise")
    if score is not None:
        scored = nodes[score]
        notes.append(f"{scored.path} is a class-score convolution ({shapes[scored.path][-1]} channels, one per "
                     "class, only pooling after it): its maps are the scores themselves, the same for every method")
    reason += ("; " + "; ".join(notes) if notes else "")
    return TargetLayer(node.path, node.type_name, tuple(shapes[node.path]), reason)


def _find_layer(nodes: Sequence[LayerNode], requested: str) -> LayerNode:
    by_path = {node.path: node for node in nodes}
    if requested in by_path:
        return by_path[requested]
    named = [node for node in nodes if node.layer.name == requested]
    if len(named) == 1:
        return named[0]
    if named:
        raise InputError(f"{CAM_LAYER_FLAG}: {requested!r} names several layers ({', '.join(n.path for n in named)}); "
                         "give the full path")
    raise InputError(f"{CAM_LAYER_FLAG}: no layer {requested!r}; paths look like "
                     f"{', '.join(node.path for node in nodes[:4])}; `reportgen layers MODEL` lists them all")


def _spatial_examples(nodes: Sequence[LayerNode], shapes: Mapping[str, Any]) -> str:
    spatial = [node.path for node in nodes if is_spatial(shapes.get(node.path)) and not node.is_model]
    return ", ".join(spatial[-3:]) or "(none: this model has no spatial layer)"


# ---------------------------------------------------------------------------------------------- class scores


@dataclass(frozen=True)
class ScoreHead:
    """How to get one differentiable score per class from a model run."""

    feeder: str | None  # record this layer's output and apply `linear` to it (None: use the model output)
    linear: Any  # the final layer without its activation (None: identity)
    single_unit: bool  # one output unit: class 1 scores z, class 0 scores -z
    logits: bool  # False when only probabilities could be had
    description: str


def score_head(model: Any, final: FinalLayer, units: int) -> ScoreHead:
    """Logits for the gradients: the model's own outputs when they are logits, else recomputed without the
    final softmax / sigmoid; probabilities (said so) when the layer feeding the last one cannot be found."""
    single = units == 1
    if final.activation not in PROBABILITY_ACTIVATIONS:
        how = "the model's outputs" + (" (logits)" if final.activation == "linear" else "")
        return ScoreHead(None, None, single, final.activation == "linear", f"Gradients are taken of {how}.")
    feeder = feeder_path(model, final.path)
    linear = _without_activation(final.layer) if feeder else None
    if feeder and linear is not False:
        return ScoreHead(feeder, linear, single, True,
                         f"Gradients are taken of the logits: {final.path} without its {final.activation}, "
                         f"applied to the output of {feeder} (the model itself is not changed).")
    return ScoreHead(None, None, single, False,
                     f"Gradients are taken of the {final.activation} probabilities: the logits before "
                     f"{final.path} could not be recovered, so maps of very confident predictions can be faint.")


def _without_activation(layer: Any) -> Any:
    """A copy of `layer` with a linear activation and the same weights; None for a pure activation layer;
    False when the layer cannot be copied."""
    import keras

    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        return None
    try:
        config = dict(layer.get_config())
        config["activation"] = "linear"
        config["name"] = f"{layer.name}_logits"
        copy = type(layer).from_config(config)
        copy.build_from_config(layer.get_build_config())
        copy.set_weights(layer.get_weights())
        return copy
    except Exception:  # any custom layer we cannot rebuild: fall back to probabilities, and say so
        return False


def feeder_path(model: Any, path: str) -> str | None:
    """The path of the layer whose output feeds the layer at `path` (its single input), or None."""
    parts = path.split("/")
    containers = [model]
    for name in parts[:-1]:
        containers.append(containers[-1].get_layer(name))
    depth = len(parts) - 1
    while depth >= 0:
        container = containers[depth]
        source = _inbound(container, container.get_layer(parts[depth]))
        if source is None:
            return None
        if source != "input":
            return "/".join([*parts[:depth], source.name])
        depth -= 1  # fed by its container's input: look at what feeds the container
    return None  # fed by the model's input itself


def _inbound(container: Any, layer: Any) -> Any:
    import keras

    if isinstance(container, keras.Sequential):
        layers = [item for item in container.layers if not isinstance(item, keras.layers.InputLayer)]
        index = next(i for i, item in enumerate(layers) if item is layer)
        return layers[index - 1] if index > 0 else "input"
    for nodes in getattr(container, "_nodes_by_depth", {}).values():
        for node in nodes:
            if node.operation is layer:
                tensors = list(node.input_tensors)
                if len(tensors) != 1:
                    return None
                source = tensors[0]._keras_history.operation
                return "input" if isinstance(source, keras.layers.InputLayer) else source
    return None


# ------------------------------------------------------------------------------------------ model functions


class ModelFunctions:
    """The model as the methods use it; each function is one `tf.function`, traced once per batch shape."""

    def __init__(self, model: Any, head: ScoreHead, layer: str | None,
                 to_probabilities: Callable[[np.ndarray], np.ndarray], batch_size: int = 16,
                 curves_dtype: str = "float32", curve_batch_size: int | None = None) -> None:
        """`curve_batch_size`: images per forward pass of `curve_probabilities` (default 4 x `batch_size`)."""
        import tensorflow as tf

        self.model, self.head, self.layer = model, head, layer
        self.to_probabilities = to_probabilities
        self.batch_size = batch_size
        self.traced = traceable(model)
        self.curves_dtype = curves_dtype
        self.curve_batch_size = curve_batch_size or 4 * batch_size
        self._layer_pass = compiled(self._layer_pass_graph, model, gradients=True)
        self._input_gradients = compiled(self._input_gradients_graph, model, gradients=True)
        self._raw = compiled(lambda x: model(x, training=False), model)
        self._raw_curves = self._raw if curves_dtype == "float32" else compiled(
            lambda x: tf.cast(model(x, training=False), tf.float32), model)

    def scores(self, x: Any, capture: Sequence[str]) -> tuple[Any, Any]:
        """Class scores (B, classes) and the run, with `capture` recorded."""
        import tensorflow as tf

        wanted = [*capture, *([self.head.feeder] if self.head.feeder else [])]
        run = run_layers(self.model, x, capture=wanted)
        z = run.captured[self.head.feeder] if self.head.feeder else run.output
        if self.head.linear is not None:
            z = self.head.linear(z)
        z = tf.reshape(z, (tf.shape(z)[0], -1))
        if self.head.single_unit:
            z = tf.concat([-z, z] if self.head.logits else [1.0 - z, z], axis=1)
        return z, run

    @staticmethod
    def _slot_copies(x: Any, slots: Any) -> Any:
        """Each image of x (B, ...) once per class slot of `slots` (B, T), slot-major: (T * B, ...).

        Image b's scores depend on image b alone (inference mode), so the gradient of the sum of every copy's own
        slot score with respect to a copy is that slot's gradient: one backward pass gives every (image, class)
        pair. When T is 1, the usual case, that is one forward and one backward pass, as before. Else it costs
        T - 1 more forward passes of the batch (few beside the deletion curves' hundreds), where a vectorised
        Jacobian would cost its tracing: the conversion of the backward graph was 0.17 s of the 0.21 s it took
        to trace the layer pass of a 3-conv CNN."""
        import tensorflow as tf

        return tf.tile(x, tf.concat([[tf.shape(slots)[1]], tf.ones([tf.rank(x) - 1], tf.int32)], 0))

    def _selected_sum(self, copies: Any, slots: Any, capture: Sequence[str]) -> tuple[Any, Any]:
        """The run of the copies (`capture` recorded) and the sum of each copy's own slot score."""
        import tensorflow as tf

        scores, run = self.scores(copies, capture)
        copy_slots = tf.reshape(tf.transpose(slots), [-1])  # slot-major, as the copies
        return run, tf.reduce_sum(pick_channel(scores, copy_slots))

    @staticmethod
    def _per_image(gradients: Any, slots: Any) -> Any:
        """(T * B, *shape) slot-major gradients -> (B, T, *shape)."""
        import tensorflow as tf

        split = tf.reshape(gradients, tf.concat([[tf.shape(slots)[1], tf.shape(slots)[0]],
                                                 tf.shape(gradients)[1:]], 0))
        return tf.transpose(split, [1, 0, *range(2, len(gradients.shape) + 1)])

    def _layer_pass_graph(self, x: Any, slots: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        copies = self._slot_copies(x, slots)
        with input_tape(copies) as tape:  # recorded from the input on; differentiated back to the layer only
            run, total = self._selected_sum(copies, slots, [self.layer])
            activations = run.captured[self.layer]
        gradients = tape.gradient(total, activations)
        return activations[:tf.shape(x)[0]], self._per_image(gradients, slots)  # (B, h, w, K), (B, T, h, w, K)

    def _input_gradients_graph(self, x: Any, slots: Any) -> Any:
        copies = self._slot_copies(x, slots)
        with input_tape(copies) as tape:
            _, total = self._selected_sum(copies, slots, [])
        return self._per_image(tape.gradient(total, copies), slots)  # (B, T, H, W, C)

    def layer_pass(self, inputs: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target-layer activations (B, h, w, K) and d score / d activations (B, T, h, w, K)."""
        import tensorflow as tf

        activations, gradients = self._layer_pass(tf.constant(inputs, tf.float32), tf.constant(slots, tf.int32))
        return np.asarray(activations, np.float32), np.asarray(gradients, np.float32)

    def input_gradients(self, inputs: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """d score / d input (B, T, H, W, C) for every image and class slot."""
        import tensorflow as tf

        grads = self._input_gradients(tf.constant(inputs, tf.float32), tf.constant(slots, tf.int32))
        return np.asarray(grads, np.float32)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes), in chunks of a few batches."""
        return self._probabilities(self._raw, inputs, 4 * self.batch_size)

    def curve_probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """`probabilities` in the arithmetic of the deletion and insertion curves (`curves_dtype`): hundreds of
        variants per image whose probabilities are only averaged into areas."""
        with computing_in(self.model, self.curves_dtype):
            return self._probabilities(self._raw_curves, inputs, self.curve_batch_size)

    def _probabilities(self, function: Callable[[Any], Any], inputs: np.ndarray, chunk: int) -> np.ndarray:
        import tensorflow as tf

        outs = [np.asarray(function(tf.constant(inputs[i:i + chunk], tf.float32)), np.float64)
                for i in range(0, len(inputs), chunk)]
        raw = np.concatenate(outs).reshape(len(inputs), -1)
        return self.to_probabilities(raw)


# ---------------------------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class MethodBatch:
    """Everything a method may use for B images and their T class slots (padded by repeating a class)."""

    inputs: np.ndarray  # (B, H, W, C) model inputs
    slots: np.ndarray  # (B, T) class index of each slot
    activations: np.ndarray | None  # (B, h, w, K) target layer output (None without a target layer)
    gradients: np.ndarray | None  # (B, T, h, w, K) d class score / d activations
    model: ModelFunctions
    settings: CamSettings
    baseline: np.ndarray  # (C,) the model input of a black pixel
    value_range: float  # span of valid model input values


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _weighted_sum(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ReLU(sum_k w_k A_k) for every slot: activations (B, h, w, K), weights (B, T, K) -> (B, T, h, w)."""
    return _relu(np.einsum("bhwk,btk->bthw", activations, weights, optimize=True))


def gradcam(batch: MethodBatch) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017, eq. 1-2): channel weights are the spatially averaged gradients."""
    return _weighted_sum(batch.activations, batch.gradients.mean(axis=(2, 3)))


def gradcam_plus_plus(batch: MethodBatch) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): pixel-wise weights
    alpha_ij = g_ij^2 / (2 g_ij^2 + g_ij^3 * sum_ab A_ab), with g the gradient at (i, j) and the sum over the
    whole map of channel k. With the exponential of the score the 2nd and 3rd derivatives are powers of the 1st,
    so one backward pass suffices (as in the authors' code)."""
    grads, acts = batch.gradients, batch.activations[:, None]
    grads2 = grads * grads
    denominator = 2.0 * grads2 + grads2 * grads * np.sum(acts, axis=(2, 3), keepdims=True)
    alpha = np.divide(grads2, denominator, out=np.zeros_like(grads2), where=denominator != 0)
    return _weighted_sum(batch.activations, np.sum(alpha * _relu(grads), axis=(2, 3)))


def layercam(batch: MethodBatch) -> np.ndarray:
    """LayerCAM (Jiang et al. 2021, eq. 5-6): every position weighted by its own positive gradient."""
    return _relu(np.sum(_relu(batch.gradients) * batch.activations[:, None], axis=-1))


def scorecam(batch: MethodBatch) -> np.ndarray:
    """Score-CAM (Wang et al. 2020, Algorithm 1): each channel, upsampled and scaled to [0, 1], masks the input;
    its weight is the class probability of the masked input. Gradient-free, one forward pass per channel, so
    only the `scorecam_channels` channels of largest spatial variance are used (Faster Score-CAM)."""
    import cv2

    acts = batch.activations
    b, h, w, k = acts.shape
    height, width = batch.inputs.shape[1:3]
    keep = min(k, batch.settings.scorecam_channels)
    out = np.zeros((b, batch.slots.shape[1], h, w), np.float32)
    for i in range(b):
        channels = np.argsort(-acts[i].reshape(h * w, k).var(axis=0), kind="stable")[:keep]
        maps = acts[i][:, :, channels]
        masks = np.stack([cv2.resize(maps[:, :, j], (width, height), interpolation=cv2.INTER_LINEAR)
                          for j in range(keep)])
        low, high = masks.min(axis=(1, 2), keepdims=True), masks.max(axis=(1, 2), keepdims=True)
        masks = np.divide(masks - low, high - low, out=np.zeros_like(masks), where=high > low)
        probs = batch.model.probabilities(batch.inputs[i][None] * masks[..., None])  # (keep, classes)
        weights = probs[:, batch.slots[i]].T  # (T, keep)
        out[i] = _relu(np.einsum("hwk,tk->thw", maps, weights))
    return out


def saliency(batch: MethodBatch) -> np.ndarray:
    """Gradient saliency (Simonyan et al. 2014): |d score / d pixel|, the largest over colour channels."""
    return np.abs(batch.model.input_gradients(batch.inputs, batch.slots)).max(axis=-1)


def image_seed(seed: int, image: np.ndarray) -> int:
    """A seed for the random draws made for one image: from the report's seed and the image's own values, so an
    image gets the same noise whatever batch it falls in, whatever images come before it."""
    digest = hashlib.blake2b(np.ascontiguousarray(image, np.float32).tobytes(), digest_size=8).digest()
    return int(np.random.SeedSequence([seed, int.from_bytes(digest, "little")]).generate_state(1, np.uint64)[0])


def smoothgrad(batch: MethodBatch) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): the input gradient averaged over noisy copies of the image. Each image
    draws its noise from its own generator (`image_seed`), so its map does not depend on batching or order."""
    rngs = [np.random.default_rng(image_seed(batch.settings.seed, image)) for image in batch.inputs]
    sigma = batch.settings.smoothgrad_noise * batch.value_range
    total = np.zeros((*batch.slots.shape, *batch.inputs.shape[1:]), np.float32)
    for _ in range(batch.settings.smoothgrad_samples):
        noise = np.stack([rng.normal(0.0, sigma, batch.inputs.shape[1:]) for rng in rngs]).astype(np.float32)
        total += batch.model.input_gradients(batch.inputs + noise, batch.slots)
    return np.abs(total / max(1, batch.settings.smoothgrad_samples)).max(axis=-1)


def integrated_gradients_attributions(batch: MethodBatch) -> np.ndarray:
    """Integrated Gradients (Sundararajan et al. 2017, eq. 3, midpoint rule) from a black image: (B, T, H, W, C)
    attributions whose sum approximates score(input) - score(black) (completeness)."""
    steps = max(1, batch.settings.ig_steps)
    baseline = np.broadcast_to(batch.baseline.astype(np.float32), batch.inputs.shape)
    delta = batch.inputs - baseline
    total = np.zeros((*batch.slots.shape, *batch.inputs.shape[1:]), np.float32)
    for step in range(steps):
        total += batch.model.input_gradients(baseline + (step + 0.5) / steps * delta, batch.slots)
    return delta[:, None] * total / steps


def integrated_gradients(batch: MethodBatch) -> np.ndarray:
    """Integrated Gradients map: |sum of a pixel's attributions over colour channels|."""
    return np.abs(integrated_gradients_attributions(batch).sum(axis=-1))


@dataclass(frozen=True)
class CamMethod:
    name: str  # the --cam-methods value
    label: str
    function: Callable[[MethodBatch], np.ndarray]
    resolution: str  # "layer": maps at the target layer's size; "input": at the image's size
    reference: str
    cost: str  # passes per batch of images, for the report


METHODS: dict[str, CamMethod] = {
    "gradcam": CamMethod("gradcam", "Grad-CAM", gradcam, "layer", "Selvaraju et al., ICCV 2017",
                         "shares one forward and one vectorised backward pass with Grad-CAM++ and LayerCAM"),
    "gradcam++": CamMethod("gradcam++", "Grad-CAM++", gradcam_plus_plus, "layer", "Chattopadhay et al., WACV 2018",
                           "shares one forward and one vectorised backward pass with Grad-CAM and LayerCAM"),
    "layercam": CamMethod("layercam", "LayerCAM", layercam, "layer", "Jiang et al., IEEE TIP 2021",
                          "shares one forward and one vectorised backward pass with Grad-CAM and Grad-CAM++"),
    "scorecam": CamMethod("scorecam", "Score-CAM", scorecam, "layer", "Wang et al., CVPR-W 2020 (Faster Score-CAM "
                          "channel cap)", "one forward pass per kept channel per image"),
    "saliency": CamMethod("saliency", "Gradient saliency", saliency, "input", "Simonyan et al., ICLR-W 2014",
                          "one full forward and backward pass"),
    "smoothgrad": CamMethod("smoothgrad", "SmoothGrad", smoothgrad, "input", "Smilkov et al., 2017",
                            "one full forward and backward pass per noise sample"),
    "integrated_gradients": CamMethod("integrated_gradients", "Integrated Gradients", integrated_gradients, "input",
                                      "Sundararajan et al., ICML 2017", "one full forward and backward pass per step"),
}


# --------------------------------------------------------------------------------------------------- pipeline


def pad_slots(targets: Sequence[Sequence[Target]]) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) class slots, short rows padded with their first class, and the (B, T) mask of real slots."""
    width = max((len(row) for row in targets), default=1)
    slots = np.zeros((len(targets), width), np.int32)
    valid = np.zeros((len(targets), width), bool)
    for i, row in enumerate(targets):
        classes = [t.class_index for t in row] or [0]
        slots[i] = classes + [classes[0]] * (width - len(classes))
        valid[i, :len(row)] = True
    return slots, valid


def compute_maps(
    functions: ModelFunctions,
    inputs: np.ndarray,
    targets: Sequence[Sequence[Target]],
    methods: Sequence[str],
    settings: CamSettings,
    baseline: np.ndarray,
    value_range: float,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[list[np.ndarray]]]:
    """Raw maps (before normalisation) per method, image and target: maps[method][image][target] (h, w).

    Per batch of images the layer pass runs once and every layer method reuses its activations and gradients.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown CAM methods {unknown}")
    needs_layer = any(METHODS[m].resolution == "layer" for m in methods)
    if needs_layer and functions.layer is None:
        raise ValueError("layer methods need a target layer")
    out: dict[str, list[list[np.ndarray]]] = {m: [] for m in methods}
    size = max(1, settings.batch_size)
    for start in range(0, len(inputs), size):
        rows = targets[start:start + size]
        x = np.asarray(inputs[start:start + size], np.float32)
        slots, valid = pad_slots(rows)
        activations = gradients = None
        if needs_layer:
            activations, gradients = functions.layer_pass(x, slots)
        batch = MethodBatch(x, slots, activations, gradients, functions, settings, np.asarray(baseline, np.float32),
                            float(value_range))
        for method in methods:
            if progress:
                progress(f"{METHODS[method].label}: images {start + 1}-{start + len(x)} of {len(inputs)}")
            maps = np.asarray(METHODS[method].function(batch), np.float32)
            for i in range(len(x)):
                out[method].append([maps[i, t] for t in range(slots.shape[1]) if valid[i, t]])
    return out


# ------------------------------------------------------------------------------------- maps with their trust


@dataclass(frozen=True)
class Heatmap:
    """One map of one method for one image and class, with the deletion / insertion scores that qualify it."""

    method: str
    image: int
    target: Target
    raw: np.ndarray  # (h, w) at the method's resolution (target layer or input), before normalisation
    probability: float  # the class probability on the intact image
    deletion_auc: float  # lower is better
    insertion_auc: float  # higher is better
    random_deletion_auc: float  # the same image and class with a random map of the same resolution
    random_insertion_auc: float


@dataclass(frozen=True)
class CamResults:
    layer: TargetLayer | None
    methods: tuple[str, ...]
    head: ScoreHead
    heatmaps: tuple[Heatmap, ...]
    sanity: dict[str, SanityCheck]
    fresh_maps: dict[str, list[list[np.ndarray]]]  # the fresh model's maps of the first `sanity_images` images
    sanity_images: int
    steps: int
    curves_dtype: str = "float32"  # the arithmetic of the deletion and insertion curves' forward passes

    def for_method(self, method: str) -> list[Heatmap]:
        return [h for h in self.heatmaps if h.method == method]


@dataclass(frozen=True)
class Faithfulness:
    """How one method's maps fare under deletion and insertion, against random maps on the same images.

    The margin is (insertion - deletion) of the method's maps minus that of the random maps, averaged over every
    map: positive when the pixels the method ranks first matter more to the model than random pixels do.
    """

    method: str
    maps: int
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    beats_random_deletion: int  # maps whose deletion AUC is below their random map's
    empty_maps: int

    @property
    def margin(self) -> float:
        return (self.insertion_auc - self.deletion_auc) - (self.random_insertion_auc - self.random_deletion_auc)

    @property
    def beats_random(self) -> bool:
        return bool(self.margin > 0)


def faithfulness(results: CamResults) -> dict[str, Faithfulness]:
    """Per method, its mean deletion and insertion AUC against the random maps' (`Faithfulness`)."""
    from reportgen.techniques.cam_trust import is_empty

    out = {}
    for method in results.methods:
        maps = results.for_method(method)
        if not maps:
            continue

        def mean(values: list[float]) -> float:
            return float(np.mean(values))

        out[method] = Faithfulness(
            method, len(maps), mean([h.deletion_auc for h in maps]), mean([h.insertion_auc for h in maps]),
            mean([h.random_deletion_auc for h in maps]), mean([h.random_insertion_auc for h in maps]),
            sum(h.deletion_auc < h.random_deletion_auc for h in maps), sum(is_empty(h.raw) for h in maps))
    return out


# Methods whose maps, each scaled to its own maximum, differ by less than this everywhere show the same thing.
SAME_MAPS_TOLERANCE = 1e-3


def same_maps(results: CamResults, tolerance: float = SAME_MAPS_TOLERANCE) -> list[tuple[tuple[str, ...], float]]:
    """Groups of methods whose maps are the same on every image and class (each map scaled to its maximum), with
    the largest difference seen: e.g. Grad-CAM, Grad-CAM++ and LayerCAM at a class-score layer."""

    def scaled(raw: np.ndarray) -> np.ndarray:
        peak = float(np.max(np.abs(raw))) if raw.size else 0.0
        return raw / peak if peak > 0 and np.isfinite(peak) else np.zeros_like(raw)

    maps = {m: [scaled(h.raw) for h in results.for_method(m)] for m in results.methods}
    groups: list[list[str]] = []
    largest: dict[str, float] = {}
    for method in results.methods:
        for group in groups:
            first = maps[group[0]]
            if len(first) != len(maps[method]) or any(a.shape != b.shape for a, b in zip(first, maps[method],
                                                                                          strict=True)):
                continue
            difference = max((float(np.max(np.abs(a - b))) for a, b in zip(first, maps[method], strict=True)),
                             default=0.0)
            if difference < tolerance:
                group.append(method)
                largest[group[0]] = max(largest.get(group[0], 0.0), difference)
                break
        else:
            groups.append([method])
    return [(tuple(group), largest[group[0]]) for group in groups if len(group) > 1]


def output_units(model: Any) -> int:
    try:
        return int(model.outputs[0].shape[-1] or 1)
    except (AttributeError, IndexError, TypeError, ValueError):
        return 0  # unknown: treated as a multi-unit output


def explain(
    model: Any,
    inputs: np.ndarray,
    targets: Sequence[Sequence[Target]],
    methods: Sequence[str],
    layer: TargetLayer | None,
    to_probabilities: Callable[[np.ndarray], np.ndarray],
    settings: CamSettings,
    baseline: np.ndarray,
    value_range: float,
    fresh_model: Any = None,
    sanity_images: int = 8,
    steps: int = DELETION_STEPS,
    progress: Callable[[str], None] | None = None,
    probabilities: np.ndarray | None = None,
) -> CamResults:
    """Every method's maps for every image and its targets, each with deletion / insertion AUC against a random
    map, and per method the model-randomisation check on the first `sanity_images` images (if `fresh_model`).
    `probabilities` (N, classes): the float32 class probabilities of `inputs` when already known (the
    predictions'), shown beside each map; else they come from the curves' first point or a forward pass."""
    from reportgen.techniques.predictions import final_layer

    units = output_units(model)
    head = score_head(model, final_layer(model), units)
    path = layer.path if layer else None

    def functions_for(network: Any, network_head: ScoreHead, curves_dtype: str = "float32") -> ModelFunctions:
        return ModelFunctions(network, network_head, path, to_probabilities, settings.batch_size, curves_dtype,
                              curve_batch_size=settings.curve_batch_size)

    functions = functions_for(model, head, settings.curves_dtype)
    maps = compute_maps(functions, inputs, targets, methods, settings, baseline, value_range, progress)

    heatmaps: list[Heatmap] = []
    if progress:
        progress(f"deletion and insertion curves: {len(inputs)} images x ({len(methods)} methods + a random map)")
    tracker = CurvesProgress(progress, len(inputs))  # a line every few seconds, however long the curves take
    for i, row in enumerate(targets):
        classes = [t.class_index for t in row]
        seed = image_seed(settings.seed, inputs[i])
        step = tracker.image(i)
        # The random baseline has each method's own resolution: deleting 4x4 blocks at random is not deleting
        # pixels at random, so layer-resolution and input-resolution (saliency) maps each get their own.
        shapes = list(dict.fromkeys(tuple(maps[method][i][0].shape) for method in methods))
        # One call for every map set of the image: the curves' ends (intact, deleted, blurred) are shared.
        sets = [random_maps(shape, len(row), seed) for shape in shapes] + [maps[method][i] for method in methods]
        curves = deletion_insertion(functions.curve_probabilities, inputs[i], [m for maps_ in sets for m in maps_],
                                    classes * len(sets), steps, seed, step)
        deletion_auc = curves.deletion_auc.reshape(len(sets), len(row))
        insertion_auc = curves.insertion_auc.reshape(len(sets), len(row))
        # The class probabilities shown are float32 whatever the curves' arithmetic.
        if probabilities is not None:
            probability = np.asarray(probabilities[i], np.float64)[classes]
        elif functions.curves_dtype == "float32":
            probability = curves.deletion[:len(row), 0]
        else:
            probability = functions.probabilities(inputs[i][None])[0, classes]
        for m, method in enumerate(methods, start=len(shapes)):
            noise = shapes.index(tuple(maps[method][i][0].shape))
            for t, target in enumerate(row):
                heatmaps.append(Heatmap(
                    method=method, image=i, target=target, raw=maps[method][i][t],
                    probability=float(probability[t]), deletion_auc=float(deletion_auc[m, t]),
                    insertion_auc=float(insertion_auc[m, t]), random_deletion_auc=float(deletion_auc[noise, t]),
                    random_insertion_auc=float(insertion_auc[noise, t]),
                ))

    sanity: dict[str, SanityCheck] = {}
    fresh_maps: dict[str, list[list[np.ndarray]]] = {}
    count = min(len(inputs), sanity_images) if fresh_model is not None else 0
    if count:
        if progress:
            progress(f"sanity check: maps of the freshly initialised model for {count} images")
        fresh_functions = functions_for(fresh_model, score_head(fresh_model, final_layer(fresh_model), units))
        fresh_maps = compute_maps(fresh_functions, inputs[:count], targets[:count], methods, settings, baseline,
                                  value_range)
        for method in methods:
            trained = [m for row in maps[method][:count] for m in row]
            fresh = [m for row in fresh_maps[method] for m in row]
            sanity[method] = sanity_check(method, trained, fresh)
    ordered = sorted(heatmaps, key=lambda h: list(methods).index(h.method))
    return CamResults(layer, tuple(methods), head, tuple(ordered), sanity, fresh_maps, count, steps,
                      settings.curves_dtype)
