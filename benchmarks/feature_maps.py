"""Feature maps of every conv and pooling layer of VGG16 on 8 random 224 px images, from images to PNG bytes.

reportgen: one multi-output forward pass (tf.function over `graph.run_layers`, batches within the memory budget),
numpy channel grids, PNG encoding with cv2.imencode (`render.encode_png`).
Tutorials: a `keras.Model(inputs, layer.output)` per layer, `predict` per image, a matplotlib figure with one
subplot per channel (16 per row, viridis, no ticks), `savefig` to PNG bytes.

The tutorial way takes minutes, so by default it runs on the first `--baseline-images` images for every layer and
is extrapolated linearly to all images: per layer, the first image's time (which includes building the
sub-model and its first predict) plus (N - 1) x the mean time of the other measured images.

    python benchmarks/feature_maps.py [--images 8] [--size 224] [--baseline-images 2]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def reportgen_way(model, x: np.ndarray, display: np.ndarray) -> tuple[float, dict]:
    """Our pipeline from preprocessed inputs to encoded PNGs; returns seconds and some facts."""
    from reportgen import figures
    from reportgen.graph import layer_output_shapes, walk_layers
    from reportgen.render import encode_png
    from reportgen.sections.feature_maps import PANEL, feature_map_figure, grid_layout
    from reportgen.techniques.feature_maps import (
        auto_batch_size,
        iter_feature_maps,
        map_shape,
        normalise_channels,
        select_layers,
    )

    started = time.perf_counter()
    shapes = layer_output_shapes(model, x.shape[1:])  # what Analysis.layer_shapes costs in a report
    nodes = select_layers(walk_layers(model), shapes)
    paths = [node.path for node in nodes]
    batch_size = auto_batch_size(shapes, paths, len(x))
    layouts = {path: grid_layout(*map_shape(shapes, path)) for path in paths}
    panels = [figures.fit_box(image, PANEL) for image in display]
    png_bytes = 0
    count = 0
    forward = 0.0
    mark = time.perf_counter()
    for batch in iter_feature_maps(model, x, paths, batch_size):
        forward += time.perf_counter() - mark
        for path in paths:
            maps = batch.maps[path]
            normalised = normalise_channels(maps)
            for j in range(len(maps)):
                pixels = feature_map_figure(normalised.unit[j], normalised.constant[j], panels[batch.start + j],
                                            layouts[path])
                png_bytes += len(encode_png(pixels))
                count += 1
        mark = time.perf_counter()
    seconds = time.perf_counter() - started
    return seconds, {"layers": len(paths), "figures": count, "png_mb": png_bytes / 1e6, "batch_size": batch_size,
                     "forward_s": forward}


def tutorial_figure(maps: np.ndarray, columns: int = 16) -> bytes:
    """One image at one layer the tutorials' way: a subplot per channel, savefig to PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    channels = maps.shape[-1]
    rows = -(-channels // columns)
    figure = pyplot.figure(figsize=(16, rows))  # 1600 px wide at 100 dpi, like our figures
    for c in range(channels):
        axes = pyplot.subplot(rows, columns, c + 1)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.imshow(maps[:, :, c], cmap="viridis")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    return buffer.getvalue()


def tutorial_way(keras, model, x: np.ndarray, measured: int) -> tuple[float, float, list]:
    """Sub-model per layer, predict per image, subplot grid per layer and image; on the first `measured` images.

    Returns (measured seconds, extrapolated seconds for all images, the first layer's maps for image 0)."""
    from reportgen.graph import walk_layers
    from reportgen.layer_kinds import is_conv, is_pool

    layers = [node.layer for node in walk_layers(model) if is_conv(node.layer) or is_pool(node.layer)]
    total_measured = 0.0
    estimate = 0.0
    first_maps = None
    for layer in layers:
        times = []
        for i in range(measured):
            started = time.perf_counter()
            if i == 0:
                sub_model = keras.Model(model.inputs, layer.output)
            maps = sub_model.predict(x[i:i + 1], verbose=0)
            tutorial_figure(maps[0])
            times.append(time.perf_counter() - started)
            if first_maps is None:
                first_maps = maps[0]
        total_measured += sum(times)
        rest = float(np.mean(times[1:])) if len(times) > 1 else times[0]
        estimate += times[0] + (len(x) - 1) * rest
        print(f"  tutorial {layer.name:14s} {maps.shape[-1]:4d} channels: first image {times[0]:6.2f} s, "
              f"next {rest:6.2f} s", file=sys.stderr, flush=True)
    return total_measured, estimate, first_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--baseline-images", type=int, default=2,
                        help="images the tutorial way runs on before extrapolating (0 = all)")
    args = parser.parse_args()

    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, input_shape=(args.size, args.size, 3))
    rng = np.random.default_rng(0)
    display = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    x = keras.applications.vgg16.preprocess_input(display.astype(np.float32))

    ours, facts = reportgen_way(model, x, display)
    print(f"reportgen: {ours:.1f} s for {facts['figures']} figures ({facts['layers']} layers x {args.images} "
          f"images; forward pass {facts['forward_s']:.1f} s in batches of {facts['batch_size']}; "
          f"{facts['png_mb']:.1f} MB of PNG)")

    measured_images = args.images if args.baseline_images <= 0 else min(args.baseline_images, args.images)
    measured, estimate, first = tutorial_way(keras, model, x, measured_images)
    from reportgen.graph import run_layers

    ours_first = np.asarray(run_layers(model, x[:1], ["block1_conv1"], stop_early=True).captured["block1_conv1"])
    same = np.allclose(ours_first[0], first, rtol=1e-4, atol=1e-4)
    if measured_images < args.images:
        print(f"tutorial way: {measured:.1f} s measured on {measured_images} of {args.images} images, "
              f"extrapolated linearly to {estimate:.1f} s for all {args.images} (per layer: first image + "
              f"{args.images - 1} x the mean of the others)")
    else:
        print(f"tutorial way: {measured:.1f} s for all {args.images} images")
        estimate = measured
    print(f"speed-up: {estimate / ours:.1f}x (target >= 10x); block1_conv1 maps agree: {same}")


if __name__ == "__main__":
    main()
