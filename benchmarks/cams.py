"""Grad-CAM for 32 images x 3 classes on a VGG-style CNN (13 conv + BN + ReLU layers, 160 px, 3.9 M parameters, He
initialised, built in code, softmax over 1000 classes): reportgen against the Keras Grad-CAM tutorial's per-image,
per-class loop. (keras.applications.MobileNetV2 with random weights is no use here: its logits hardly depend on the
image, every map is ~1e-13 and max-normalisation compares rounding noise.)

reportgen: `choose_target_layer` (one probe pass for the layer shapes), then per batch of 16 images one forward pass
through `graph.run_layers` and one vectorised `batch_jacobian` for all class slots (tf.function, traced once); the
logits are recomputed from the layer feeding the softmax, without touching the model.
Tutorial (keras.io/examples/vision/grad_cam, `make_gradcam_heatmap`): `model.layers[-1].activation = None`, then per
image and class a sub-model `keras.Model(model.inputs, [last_conv.output, model.output])` built inside the call,
a GradientTape forward and backward pass, mean-pooled gradients, ReLU and max-normalisation. A second baseline
builds the sub-model only once, to show where the time goes.

    python benchmarks/cams.py [--images 32] [--classes 3] [--size 160]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def build_model(keras, size: int):
    """VGG-like: five blocks of 3x3 convs (conv -> BN -> ReLU as separate layers), GAP, Dense(1000, softmax)."""
    layers = keras.layers
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for block, (filters, convs) in enumerate([(32, 2), (64, 2), (128, 3), (256, 3), (256, 3)], start=1):
        for j in range(1, convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal",
                              name=f"block{block}_conv{j}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{j}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{j}")(x)
        if block < 5:
            x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="vgg_like")


def reportgen_way(model, x: np.ndarray, classes: np.ndarray) -> tuple[float, float, list[list[np.ndarray]], str]:
    """Seconds from model to maps (tracing included), seconds of a second pass reusing the traced graph, the maps
    and the target layer."""
    from reportgen.graph import layer_output_shapes, walk_layers
    from reportgen.techniques.cams import CamSettings, ModelFunctions, choose_target_layer, compute_maps, score_head
    from reportgen.techniques.predictions import Target, final_layer

    started = time.perf_counter()
    layer = choose_target_layer(walk_layers(model), layer_output_shapes(model, x.shape[1:]))
    head = score_head(model, final_layer(model), int(model.outputs[0].shape[-1]))
    functions = ModelFunctions(model, head, layer.path, lambda raw: raw)
    targets = [tuple(Target(int(c), ("requested",)) for c in row) for row in classes]
    settings = CamSettings(batch_size=16)
    maps = compute_maps(functions, x, targets, ["gradcam"], settings, np.zeros(3), 1.0)["gradcam"]
    cold = time.perf_counter() - started
    started = time.perf_counter()
    compute_maps(functions, x, targets, ["gradcam"], settings, np.zeros(3), 1.0)
    return cold, time.perf_counter() - started, maps, layer.path


def make_gradcam_heatmap(keras, tf, img_array, model, last_conv_layer_name, pred_index):
    """The Keras tutorial's function, verbatim apart from the explicit imports."""
    grad_model = keras.models.Model(model.inputs, [model.get_layer(last_conv_layer_name).output, model.output])
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(img_array)
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    last_conv_layer_output = last_conv_layer_output[0]
    heatmap = last_conv_layer_output @ pooled_grads[..., tf.newaxis]
    heatmap = tf.squeeze(heatmap)
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy()


def tutorial_way(keras, tf, model, x, classes, layer_name, build_once: bool) -> tuple[float, list[list[np.ndarray]]]:
    started = time.perf_counter()
    out = []
    if build_once:
        grad_model = keras.models.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
    for i in range(len(x)):
        row = []
        for c in classes[i]:
            if not build_once:
                row.append(make_gradcam_heatmap(keras, tf, x[i:i + 1], model, layer_name, int(c)))
                continue
            with tf.GradientTape() as tape:
                conv, preds = grad_model(x[i:i + 1])
                score = preds[:, int(c)]
            grads = tape.gradient(score, conv)
            heat = tf.maximum(tf.squeeze(conv[0] @ tf.reduce_mean(grads, axis=(0, 1, 2))[..., None]), 0)
            row.append((heat / tf.reduce_max(heat)).numpy())
        out.append(row)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    # The tutorial calls its sub-model with a tensor where Keras expects a list; Keras warns on every call.
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
    keras.utils.set_random_seed(0)
    model = build_model(keras, args.size)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, args.size, args.size, 3)).astype(np.float32) / 127.5 - 1.0
    print(f"model: {model.name}, {model.count_params():,} parameters, input {args.size}x{args.size}x3")
    probabilities = model.predict(x, verbose=0, batch_size=16)
    classes = np.argsort(-probabilities, axis=1)[:, :args.classes]  # each image's top classes

    ours, warm, maps, layer = reportgen_way(model, x, classes)
    pairs = args.images * args.classes
    print(f"reportgen: {ours:.2f} s for {pairs} maps ({args.images} images x {args.classes} classes at {layer}), "
          f"layer search and tracing included; {warm:.2f} s for a second pass on the traced graph")

    model.layers[-1].activation = None  # the tutorial's step: gradients of the logits (reportgen needs no edit)
    tutorial, reference = tutorial_way(keras, tf, model, x, classes, layer, build_once=False)
    print(f"tutorial loop (sub-model built per call, as in the tutorial): {tutorial:.2f} s "
          f"({1000 * tutorial / pairs:.0f} ms per map)")
    once, _ = tutorial_way(keras, tf, model, x, classes, layer, build_once=True)
    print(f"tutorial loop with the sub-model built once: {once:.2f} s ({1000 * once / pairs:.0f} ms per map)")

    differences, empty = [], 0
    for row, ref_row in zip(maps, reference, strict=True):
        for m, r in zip(row, ref_row, strict=True):
            if m.max() <= 0:  # no positive evidence: the tutorial divides 0 by 0
                empty += 1
                continue
            differences.append(float(np.max(np.abs(m / m.max() - r))))
    print(f"largest difference between the max-normalised maps: {max(differences):.2e} over {len(differences)} maps "
          f"({empty} maps with no positive value skipped)")
    print(f"speed-up: {tutorial / ours:.1f}x against the tutorial loop (target >= 5x), {once / ours:.1f}x against "
          f"the loop with one sub-model; warm: {tutorial / warm:.1f}x and {once / warm:.1f}x")


if __name__ == "__main__":
    main()
