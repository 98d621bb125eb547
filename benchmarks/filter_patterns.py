"""Filter patterns on VGG16 (random weights, no top): reportgen's batched, compiled search against the tutorials'
per-filter eager loop, per layer.

Tutorial (Chollet, Deep Learning with Python, 5.4): a `keras.Model(inputs, layer.output)`, then for one filter at a
time, eagerly: start from 128 + 20 * U(0, 1), loss = mean of the filter's activation, gradient divided by its RMS,
x += 1.0 * gradient, 40 steps.
reportgen: `techniques.filter_patterns.search_patterns` with the report's defaults (all filters of the layer in
one batch, one traced step, bfloat16 steps where the CPU has them), ascent only so both do the same work, once
with each parameterisation: `pixel` (the tutorial's own update, batched and kept inside the valid input range),
`fourier` (Lucid's) and `logit` (the default). Its time includes tracing and the float32 re-evaluation of every
pattern. The tutorial's
pixels are unbounded (it never clips), so its activations are an upper bound for what a valid image could reach;
reportgen's patterns always stay valid caffe-preprocessed images.

Random weights make activations differ wildly between layers, so compare within a layer. Also printed: the time
reportgen needs to reach the tutorial's mean activation (checked every few steps on the unjittered images,
tracing included, checks excluded), and the useful GFLOP/s of each (conv forward + input gradient, from the layer
shapes) against this machine's float32 matmul rate, measured here.

With `--section`: instead, the whole default `filter_patterns` section of a VGG16 report (`reportgen generate
vgg16 --weights none` on 4 images of 224 px, the default options: search, scorecard, figures), its seconds from
report.json against its FLOP floor: the conv multiply-adds of every forward and input-gradient pass it needs
(search steps, float32 re-evaluation, scorecard views), each at the machine's measured matmul rate for its
arithmetic (float32 or bfloat16).

    python benchmarks/filter_patterns.py [--layers block1_conv1,block3_conv1,block5_conv1] [--filters 16]
        [--steps 40] [--size 128] [--float32]
    python benchmarks/filter_patterns.py --section
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def tutorial_loop(model, layer: str, filters, steps: int, size: int, seed: int, low: float = 0.0,
                  high: float = 255.0) -> tuple[float, list]:
    """DLwP 5.4, one filter at a time, eagerly, on model inputs in [low, high] (the book's 0-255): start from
    128 + 20 * U(0, 1) of 255, gradient divided by its RMS, one grey level (1/255 of the range) per step. Returns
    the seconds and each filter's final input (1, size, size, channels)."""
    import keras
    import tensorflow as tf

    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    channels = int(model.inputs[0].shape[-1])
    span = high - low
    rng = np.random.default_rng(seed)
    reached = []
    started = time.perf_counter()
    for f in filters:
        x = tf.constant(low + span * (128.0 + 20.0 * rng.random((1, size, size, channels))) / 255.0, tf.float32)
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_mean(sub(x)[..., f])
            grads = tape.gradient(loss, x)
            grads /= tf.sqrt(tf.reduce_mean(tf.square(grads))) + 1e-5
            x += span / 255.0 * grads
        reached.append(x)
    return time.perf_counter() - started, reached


def mean_activations(model, layer: str, filters, inputs: list) -> np.ndarray:
    """Each filter's mean activation on its own input."""
    import keras
    import tensorflow as tf

    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    return np.array([float(tf.reduce_mean(sub(x)[..., f])) for x, f in zip(inputs, filters, strict=True)])


def reportgen_search(model, layer: str, filters: list[int], steps: int, size: int, seed: int, dtype: str,
                     pixel_map, method: str = "fourier") -> tuple[float, np.ndarray]:
    from reportgen.techniques.filter_patterns import PatternSettings, search_patterns

    settings = PatternSettings(steps=steps, height=size, width=size, seed=seed, directions=("ascent",),
                               compute_dtype=dtype, method=method)
    result = search_patterns(model, layer, filters, settings, pixel_map)
    return result.seconds, result.direction("ascent").activation


def time_to_reach(model, layer: str, filters: list[int], steps: int, size: int, seed: int, dtype: str, pixel_map,
                  target: float, check_every: int = 2) -> tuple[float | None, int | None]:
    """Seconds (tracing included, checks excluded) and steps until the mean float32 activation of the unjittered
    patterns reaches `target`; (None, None) if it never does within `steps`."""
    import tensorflow as tf

    from reportgen.techniques import filter_patterns as fp
    from reportgen.techniques.pattern_params import method_named

    started = time.perf_counter()
    method = method_named(fp.PatternSettings().method)  # the default
    block = fp.pattern_targets(model, [layer])[0]
    compiled = fp._compile(model, [block], [method], pixel_map, (size, size, 3), dtype, False)
    salt = __import__("zlib").crc32(layer.encode("utf-8"))
    p = tf.constant(np.stack([method.init(np.random.default_rng([seed, salt, f]), size, size, 3) for f in filters]))
    state = (tf.zeros_like(p), tf.zeros_like(p))
    index = tf.constant(filters, tf.int32)
    signs = tf.ones([len(filters)])
    groups = tf.range(len(filters), dtype=tf.int32)
    members = tf.zeros([len(filters)], tf.int32)
    total = tf.constant(float(steps))
    excluded = 0.0
    for t in range(1, steps + 1):
        seed_t = tf.constant([seed * 1_000_003 + salt, t], tf.int64)
        p, state, _ = compiled.step(p, state, seed_t, tf.constant(float(t)), total, index, signs, groups,
                                    members)
        if t % check_every == 0 or t == steps:
            mark = time.perf_counter()
            reached = float(np.mean(compiled.evaluate(compiled.render(p), index, members)[1].numpy()))
            excluded += time.perf_counter() - mark
            if reached >= target:
                return time.perf_counter() - started - excluded, t
    return None, None


def section_benchmark() -> None:
    """The default filter_patterns section on VGG16 against its FLOP floor."""
    import json
    import tempfile
    from pathlib import Path

    import cv2

    from reportgen.api import generate_report
    from reportgen.config import ReportOptions
    from reportgen.graph import layer_output_shapes, walk_layers
    from reportgen.loading.models import load_model
    from reportgen.precision import search_flops
    from reportgen.techniques.filter_patterns import ROBUST_VIEWS, matmul_rate

    rates = {"float32": matmul_rate("float32", 2048) * 1e9, "bfloat16": matmul_rate("bfloat16", 2048) * 1e9}
    with tempfile.TemporaryDirectory() as folder:
        images = Path(folder) / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(4):
            cv2.imwrite(str(images / f"image{i}.png"), rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        out = Path(folder) / "report"
        options = ReportOptions(weights="none", sections=("filter_patterns",))
        started = time.perf_counter()
        generate_report("vgg16", [images], out, options)
        whole = time.perf_counter() - started
        manifest = json.loads((out / "report.json").read_text())
    seconds = manifest["seconds"]["filter_patterns"]
    overview = next(s for s in manifest["sections"] if s["id"] == "filter-patterns")["data"]
    layers = [s for s in manifest["sections"] if s["kind"] == "filter_patterns" and s.get("layer")]
    dtype, steps, (height, width) = overview["compute_dtype"], overview["steps"], overview["size"]
    model = load_model("vgg16", weights="none").model
    nodes = walk_layers(model)
    shapes = layer_output_shapes(model, (224, 224, 3))  # the report's image size; the search's area scales it
    floor = 0.0
    print(f"load average {os.getloadavg()[0]:.1f}; VGG16 default filter_patterns: {len(layers)} layers, {steps} "
          f"steps, canvas up to {width}x{height} px, {dtype} search; matmul float32 "
          f"{rates['float32'] / 1e9:.0f}, bfloat16 {rates['bfloat16'] / 1e9:.0f} GFLOP/s")
    print(f"  {'layer':<16} {'canvas':>8} {'patterns':>8} {'search s':>9} {'floor s':>8}")
    for section in layers:
        data = section["data"]
        layer_h, layer_w = data["size"]
        step = search_flops(nodes, shapes, data["target"], layer_h * layer_w / (224 * 224))  # forward + input grad.
        patterns = len(data["filters"]) * len(overview["directions"]) * data["diversity"]
        search = step * patterns * steps / rates[dtype]
        # float32 forwards (half a step each): the starts, the patterns, then the scorecard's views.
        evaluation = step / 2 * (patterns / 2 + patterns) / rates["float32"]
        views = step / 2 * patterns * len(ROBUST_VIEWS) / rates[dtype]
        layer_floor = search + evaluation + views
        floor += layer_floor
        print(f"  {section['layer']:<16} {layer_w:>5}x{layer_h:<2} {patterns:>8} {data['seconds']:>9.1f} "
              f"{layer_floor:>8.1f}")
    print(f"section {seconds:.1f} s (whole run {whole:.1f} s), floor {floor:.1f} s: {seconds / floor:.1f}x the floor "
          f"(target: at most 55 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="block1_conv1,block3_conv1,block5_conv1")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float32", action="store_true", help="Also time reportgen with float32 steps.")
    parser.add_argument("--section", action="store_true", help="Time the default section on VGG16 against its floor.")
    args = parser.parse_args()
    if args.section:
        section_benchmark()
        return

    import keras

    from reportgen.graph import layer_output_shapes, walk_layers
    from reportgen.loading.preprocess import Preprocessor
    from reportgen.precision import fast_bfloat16, search_flops
    from reportgen.techniques.filter_patterns import matmul_rate
    from reportgen.techniques.pattern_params import PixelMap

    keras.utils.set_random_seed(args.seed)
    model = keras.applications.VGG16(weights=None, include_top=False)
    pixel_map = PixelMap.from_preprocessor(Preprocessor("caffe"))
    nodes = walk_layers(model)
    shapes = layer_output_shapes(model, (args.size, args.size, 3))
    filters = list(range(args.filters))
    default_dtype = "bfloat16" if fast_bfloat16() else "float32"
    f32_rate, bf16_rate = matmul_rate("float32", 2048), matmul_rate("bfloat16", 2048)
    print(f"VGG16 (random weights), {args.filters} filters, {args.steps} steps, {args.size} px; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"matmul 2048^2: float32 {f32_rate:.0f} GFLOP/s, bfloat16 {bf16_rate:.0f} GFLOP/s; reportgen steps in "
          f"{default_dtype}\n")

    variants = [("reportgen pixel", default_dtype, "pixel"), ("reportgen fourier", default_dtype, "fourier"),
                ("reportgen logit", default_dtype, "logit"), ("reportgen projected", default_dtype, "projected")]
    if args.float32 and default_dtype != "float32":
        variants.append(("fourier float32", "float32", "fourier"))
    totals: dict[str, float] = {}
    for layer in args.layers.split(","):
        work = search_flops(nodes, shapes, layer, 1.0) * args.filters * args.steps / 1e9  # GFLOP
        tutorial_s, tutorial_inputs = tutorial_loop(model, layer, filters, args.steps, args.size, args.seed)
        tutorial_act = mean_activations(model, layer, filters, tutorial_inputs)
        rows = [("tutorial loop", tutorial_s, tutorial_act)]
        for name, dtype, method in variants:
            seconds, activation = reportgen_search(model, layer, filters, args.steps, args.size, args.seed, dtype,
                                                   pixel_map, method)
            rows.append((name, seconds, activation))
        for name, seconds, _ in rows:
            totals[name] = totals.get(name, 0.0) + seconds
        print(f"{layer}: {work:.1f} GFLOP of useful work per method")
        print(f"  {'method':<17} {'s/filter':>9} {'speed-up':>9} {'mean act.':>10} {'GFLOP/s':>8} {'% f32 mm':>9}")
        for name, seconds, activation in rows:
            print(f"  {name:<17} {seconds / args.filters:>9.3f} {tutorial_s / seconds:>8.1f}x "
                  f"{activation.mean():>10.4g} {work / seconds:>8.1f} {100 * work / seconds / f32_rate:>8.0f}%")
        reach_s, reach_steps = time_to_reach(model, layer, filters, args.steps, args.size, args.seed, default_dtype,
                                             pixel_map, float(tutorial_act.mean()))
        if reach_s is None:
            print(f"  reportgen does not reach the tutorial's mean activation {tutorial_act.mean():.4g} in "
                  f"{args.steps} steps")
        else:
            print(f"  reportgen reaches the tutorial's mean activation ({tutorial_act.mean():.4g}, {tutorial_s:.1f} s)"
                  f" after {reach_steps} steps, {reach_s:.1f} s: {tutorial_s / reach_s:.1f}x sooner")
        better = (rows[3][2] >= tutorial_act).mean()
        best = (rows[4][2] >= tutorial_act).mean()
        print(f"  reportgen logit ends higher than the tutorial on {better:.0%} of the filters, projected on "
              f"{best:.0%}\n")
        sys.stdout.flush()

    print("all layers: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in totals.items()))
    ratio = totals["tutorial loop"] / totals["reportgen projected"]
    print(f"throughput, reportgen projected against the tutorial loop: {ratio:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
