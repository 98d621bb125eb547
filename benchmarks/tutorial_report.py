"""The tutorials' way to the same kinds of figures: what a user writes from the well-known tutorials, less work
than a reportgen report does (ascent patterns only, no descent; Grad-CAM only; no deletion/insertion, no sanity
check, no per-class sections, no page).

    python benchmarks/tutorial_report.py MODEL.keras IMAGES_FOLDER OUT_FOLDER [--filters 16] [--steps 40]
        [--pattern-size 64] [--preprocess scale|caffe]

Per figure kind, the tutorial it follows:
- summary: `model.summary()`.
- weights (Machine Learning Mastery, "How to visualize filters and feature maps"): every conv layer's first 16
  kernels min-max scaled, one subplot per kernel and input channel (up to 3), `savefig`.
- feature maps (same tutorial): per conv and pooling layer a sub-model `keras.Model(inputs, layer.output)`,
  `predict` per image, one subplot per channel (16 per row, viridis), `savefig`.
- filter patterns (Chollet, Deep Learning with Python, 5.4: `filter_patterns.tutorial_loop`, the loop
  `benchmarks/filter_patterns.py` measures against): per conv layer a feature extractor, per filter `--steps` eager
  gradient-ascent steps from grey plus noise, the gradient normalised by its RMS, one grey level per step,
  deprocessed and saved; ascent only.
- predictions: `model.predict` per image, the top 5 printed.
- Grad-CAM (keras.io/examples/vision/grad_cam): `make_gradcam_heatmap` per image for its top class, the jet
  overlay superimposed on the image and saved.

Prints one JSON line: seconds after imports and per kind, and the number of figures written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import matplotlib
import numpy as np
import tensorflow as tf

matplotlib.use("Agg")
from filter_patterns import tutorial_loop  # the loop the pattern benchmarks measure against
from matplotlib import pyplot
from PIL import Image

CONV = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
POOL = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def save(figure, path: Path) -> None:
    figure.savefig(path, format="png")
    pyplot.close(figure)


def weights(model, out: Path) -> int:
    written = 0
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        kernels = layer.get_weights()[0]
        kernels = (kernels - kernels.min()) / (kernels.max() - kernels.min() + 1e-12)
        count, channels = min(16, kernels.shape[-1]), min(3, kernels.shape[-2])
        figure = pyplot.figure(figsize=(channels * 1.5, count * 1.5))
        index = 1
        for f in range(count):
            for c in range(channels):
                axes = pyplot.subplot(count, channels, index)
                axes.set_xticks([])
                axes.set_yticks([])
                pyplot.imshow(kernels[:, :, c, f], cmap="gray")
                index += 1
        save(figure, out / f"weights_{layer.name}.png")
        written += 1
    return written


def feature_maps(model, images: np.ndarray, out: Path) -> int:
    written = 0
    for layer in model.layers:
        if not isinstance(layer, CONV + POOL):
            continue
        sub_model = keras.Model(inputs=model.inputs, outputs=layer.output)
        for i in range(len(images)):
            maps = sub_model.predict(images[i:i + 1], verbose=0)[0]
            channels = maps.shape[-1]
            rows = -(-channels // 16)
            figure = pyplot.figure(figsize=(16, rows))
            for c in range(channels):
                axes = pyplot.subplot(rows, 16, c + 1)
                axes.set_xticks([])
                axes.set_yticks([])
                pyplot.imshow(maps[:, :, c], cmap="viridis")
            save(figure, out / f"maps_{layer.name}_{i}.png")
            written += 1
    return written


def filter_patterns(model, out: Path, filters: int, steps: int, size: int, low: float, high: float) -> int:
    written = 0
    channels = model.inputs[0].shape[-1]
    for layer in model.layers:
        if not isinstance(layer, CONV):
            continue
        count = min(filters, layer.output.shape[-1])
        _, images = tutorial_loop(model, layer.name, range(count), steps, size, seed=0, low=low, high=high)
        tiles = []
        for img in images:
            pixels = img[0].numpy()
            pixels = (pixels - pixels.mean()) / (pixels.std() + 1e-5) * 0.15 + 0.5
            tiles.append(np.clip(pixels * 255, 0, 255).astype("uint8"))
        figure = pyplot.figure(figsize=(16, -(-len(tiles) // 8) * 2))
        for k, tile in enumerate(tiles):
            axes = pyplot.subplot(-(-len(tiles) // 8), 8, k + 1)
            axes.set_xticks([])
            axes.set_yticks([])
            pyplot.imshow(tile.squeeze(), cmap="gray" if channels == 1 else None)
        save(figure, out / f"patterns_{layer.name}.png")
        written += 1
    return written


def predictions(model, images: np.ndarray) -> list[int]:
    top = []
    for i in range(len(images)):
        preds = model.predict(images[i:i + 1], verbose=0)[0]
        order = np.argsort(preds)[::-1][:5]
        print(f"image {i}: " + ", ".join(f"class {c} {preds[c]:.3f}" for c in order), file=sys.stderr)
        top.append(int(order[0]))
    return top


def make_gradcam_heatmap(img_array, model, last_conv_layer_name, pred_index):
    grad_model = keras.models.Model(model.inputs, [model.get_layer(last_conv_layer_name).output, model.outputs[0]])
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(img_array)
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis]
    heatmap = tf.squeeze(heatmap)
    heatmap = tf.maximum(heatmap, 0) / (tf.math.reduce_max(heatmap) + 1e-12)
    return heatmap.numpy()


def grad_cam(model, images: np.ndarray, display: np.ndarray, top: list[int], out: Path) -> int:
    last_conv = [layer.name for layer in model.layers if isinstance(layer, CONV)][-1]
    jet = matplotlib.colormaps["jet"](np.arange(256))[:, :3]
    for i in range(len(images)):
        heatmap = make_gradcam_heatmap(images[i:i + 1], model, last_conv, top[i])
        heatmap = np.uint8(255 * heatmap)
        coloured = keras.utils.img_to_array(keras.utils.array_to_img(jet[heatmap]).resize(display.shape[2:0:-1]))
        overlay = keras.utils.array_to_img(coloured * 0.4 + display[i])
        overlay.save(out / f"gradcam_{i}.png")
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("out")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pattern-size", type=int, default=64)
    parser.add_argument("--preprocess", choices=("scale", "caffe"), default="scale")
    args = parser.parse_args()
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    mark = time.perf_counter()
    model = keras.applications.VGG16(weights=None) if args.model == "vgg16" else keras.models.load_model(args.model)
    height, width, channels = model.inputs[0].shape[1:]
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    display = np.stack([np.asarray(Image.open(p).convert("L" if channels == 1 else "RGB").resize((width, height)),
                                   np.float32).reshape(height, width, channels) for p in files])
    if args.preprocess == "caffe":
        images, low, high = display[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32), -124.0, 152.0
    else:
        images, low, high = display / 255.0, 0.0, 1.0
    seconds["load"] = time.perf_counter() - mark

    written = 0
    mark = time.perf_counter()
    model.summary(print_fn=lambda line, **_: print(line, file=sys.stderr))
    seconds["summary"] = time.perf_counter() - mark
    for kind, work in (
        ("weights", lambda: weights(model, out)),
        ("feature_maps", lambda: feature_maps(model, images, out)),
        ("filter_patterns", lambda: filter_patterns(model, out, args.filters, args.steps, args.pattern_size, low,
                                                    high)),
    ):
        mark = time.perf_counter()
        written += work()
        seconds[kind] = time.perf_counter() - mark
    mark = time.perf_counter()
    top = predictions(model, images)
    seconds["predictions"] = time.perf_counter() - mark
    mark = time.perf_counter()
    written += grad_cam(model, images, display if channels == 3 else np.repeat(display, 3, -1), top, out)
    seconds["cam"] = time.perf_counter() - mark
    print(json.dumps({"seconds": time.perf_counter() - started, "sections": seconds, "figures": written,
                      "images": len(files)}))


if __name__ == "__main__":
    main()
