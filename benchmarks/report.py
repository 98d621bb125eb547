"""The whole default report, end to end, against the tutorials' code and against the machine's physical floor.

    python benchmarks/report.py [--models example,small,vgg16] [--tutorial example,small] [--repeats 3]

Models: the bundled example CNN on its 12 images; `small`, a CNN this script trains in seconds that the project
was not designed on (three conv layers with ReLU and max pooling, 64 px RGB shapes,
pixels/255, flatten and dense head) on 8 images; VGG16 with random weights (`--weights none`) on 4 images of 224 px.

Each report runs as `python -m reportgen generate ...` in its own process, with its defaults. Printed per model:
the process's wall time, the time after imports (the progress clock, which starts once TensorFlow is imported), its
CPU time (every thread, the plotting worker's too: beside the wall time it shows whether the cores or the waits
bound it), the phases outside the sections (process start and imports, model load and option checks, render), and
per section (the dataset pass first) its seconds (report.json), the forward and backward FLOPs it needs and its
floor, those FLOPs over the machine's measured matmul rate (float32 and bfloat16, 2048^2). A floor is a lower
bound, not a target: it counts the conv and dense multiply-adds of every pass a section needs (a backward pass to
the input or to a layer counted as its forward again, weight gradients never needed), nothing for memory-bound
layers, figures or pages.

`--tutorial` runs `benchmarks/tutorial_report.py` on the same model and images (each run paired with one of the
report, `--repeats` pairs, the ratio the median of theirs), the tutorials' way (sub-models per
layer and image, one filter at a time, the Keras Grad-CAM function per image, matplotlib figures), doing less
work than the report (ascent only, Grad-CAM only, no deletion/insertion, no sanity check, 16 filters of every
conv layer at 40 steps, 64 px), and prints the ratio of its time to the report's, with and without imports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
FLOOR_SECTIONS = ("dataset", "feature_maps", "filter_patterns", "dataset_examples", "predictions", "cam")


def write_images(folder: Path, count: int, size: int, seed: int) -> None:
    import cv2

    from reportgen.example.shapes import CLASS_NAMES, generate

    data = generate(count, seed=seed, size=size)
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        (folder / CLASS_NAMES[label]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / CLASS_NAMES[label] / f"{i:03d}.png"), image[:, :, ::-1])


def train_small_cnn(path: Path) -> float:
    """Three conv -> ReLU -> max-pool blocks, flatten, two dense layers (the Keras tutorials' CNN), 64 px RGB,
    pixels/255, trained for half a minute on shapes; returns the held-out accuracy."""
    import keras

    from reportgen.example.shapes import generate

    keras.utils.set_random_seed(3)
    layers = keras.layers
    # Functional, not Sequential: the Keras Grad-CAM tutorial's sub-model gets no gradient from a loaded
    # Sequential model in Keras 3.
    inputs = keras.Input((64, 64, 3), name="image")
    x = inputs
    for i, filters in enumerate((16, 32, 32), start=1):
        x = layers.Conv2D(filters, 3, activation="relu", padding="same", name=f"c{i}")(x)
        x = layers.MaxPooling2D(name=f"p{i}")(x)
    x = layers.Dense(64, activation="relu", name="fc")(layers.Flatten(name="flatten")(x))
    model = keras.Model(inputs, layers.Dense(4, activation="softmax", name="out")(x), name="small_cnn")
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    train, held = generate(2048, seed=11), generate(200, seed=12)
    model.fit(train.images / 255.0, train.labels, epochs=14, batch_size=32, verbose=0)
    accuracy = float(model.evaluate(held.images / 255.0, held.labels, verbose=0)[1])
    model.save(path)
    return accuracy


def forward_flops(model, size: tuple[int, int, int]) -> Any:
    """`flops(area_scale)` -> {layer path: forward FLOPs from the input to that layer}: the conv and dense
    multiply-adds of every layer before it in execution order (`precision.search_flops`, which counts the forward
    and the input gradient, halved), conv layers scaled by `area_scale` (a pattern canvas against `size`)."""
    from reportgen.graph import layer_output_shapes, walk_layers
    from reportgen.precision import search_flops

    shapes, nodes = layer_output_shapes(model, size), walk_layers(model)

    def flops(area_scale: float = 1.0) -> dict[str, float]:
        return {node.path: search_flops(nodes, shapes, node.path, area_scale) / 2 for node in nodes}

    return flops


def section_flops(model_name: str, manifest: dict) -> dict[str, float]:
    """The FLOPs each section's passes need, from the report's own manifest and the model."""
    import keras

    from reportgen.loading.models import load_model
    from reportgen.techniques.cam_trust import DELETION_STEPS

    model = (keras.applications.VGG16(weights=None) if model_name == "vgg16" else load_model(model_name).model)
    height, width, channels = model.inputs[0].shape[1:]
    prefix = forward_flops(model, (height, width, channels))
    full = prefix()
    total = max(full.values())
    canvases = {section["layer"]: section["data"]["size"] for section in manifest["sections"]
                if section["kind"] == "filter_patterns" and "size" in section.get("data", {}) and "layer" in section}
    images = manifest["dataset"]["images"] if manifest.get("dataset") else len(manifest["images"])
    detail = sum(1 for image in manifest["images"] if image.get("detail"))
    heatmaps = manifest.get("heatmaps") or []
    cam_layer = heatmaps[0]["layer"] if heatmaps else None
    to_cam = full.get(cam_layer, total)
    flops = {"dataset": images * (total + (total - to_cam))}
    layers = [entry["layer"] for entry in manifest.get("feature_maps") or [] if isinstance(entry, dict)]
    flops["feature_maps"] = detail * max((full.get(path, 0.0) for path in layers), default=total)
    steps = manifest["options"]["steps"]
    patterns = manifest.get("filter_patterns") or []
    scaled = {layer: prefix(size[0] * size[1] / (height * width)) for layer, size in canvases.items()}
    # Each pattern: `steps` forward and input-gradient passes to its target, then the scorecard's 1 + 8 views.
    flops["filter_patterns"] = sum((2 * steps + 9) * scaled.get(p["layer"], full).get(p.get("target") or p["layer"],
                                                                                     0.0) for p in patterns)
    example_layers = {entry.get("output") or entry["layer"] for entry in manifest.get("dataset_examples") or []}
    pattern_outputs = {p.get("target") or p["layer"] for p in patterns} if not manifest["options"].get(
        "pattern-size") else set()
    # The receptive fields: one forward pass of two random inputs to the deepest layer, a backward from each, for
    # the pattern canvases and the examples' patches together, in the first of the two sections to run.
    fields = example_layers | pattern_outputs
    flops["dataset_examples"] = 0.0
    flops["filter_patterns" if pattern_outputs else "dataset_examples"] += 2 * (
        max((full.get(path, 0.0) for path in fields), default=0.0) + sum(full.get(path, 0.0) for path in fields))
    flops["predictions"] = detail * total
    methods = len(manifest["options"]["cam-methods"])
    by_image: dict[str, set] = {}
    for entry in heatmaps:
        by_image.setdefault(entry["image"], set()).add(entry["class_index"])
    maps = sum(len(classes) for classes in by_image.values())
    backward = total - to_cam
    # Per image: the curves' 3 shared ends, then every map's and random map's steps between.
    curves = sum(3 + len(classes) * (methods + 1) * 2 * (DELETION_STEPS - 1) for classes in by_image.values())
    flops["cam"] = ((detail * total + maps * backward)  # one forward per image, a backward per class
                    + curves * total  # deletion and insertion variants
                    + min(detail, 8) * (total + backward))  # the freshly initialised model's maps
    return flops


def run_report(model: str, images: Path, out: Path) -> dict:
    command = [sys.executable, "-m", "reportgen", "generate", model, str(images), "-o", str(out), "--force"]
    if model == "vgg16":
        command += ["--weights", "none"]
    before = _children_cpu()
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - started
    cpu = _children_cpu() - before  # the report's process and its plotting worker, every thread
    if run.returncode != 0:
        sys.exit(f"reportgen failed:\n{run.stderr[-3000:]}")
    stamps = {stage: float(t) for t, stage in re.findall(r"\[\s*([\d.]+)s\] (\w+):", run.stderr)[::-1]}
    last = {stage: float(t) for t, stage in re.findall(r"\[\s*([\d.]+)s\] (\w+):", run.stderr)}
    manifest = json.loads((out / "report.json").read_text())
    after = last.get("done", float("nan"))
    first_section = min(stamps[kind] for kind in manifest["seconds"] if kind in stamps)
    return {"wall": wall, "cpu": cpu, "after_imports": after, "manifest": manifest,
            "phases": {"process start and imports": wall - after,
                       "model load and checks": first_section - manifest["dataset"]["seconds"],
                       "render (waits for figure encoding)": after - last.get("render", after)}}


def _children_cpu() -> float:
    """User and system CPU seconds of this process's finished children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tutorial(model: str, images: Path, out: Path, preprocess: str) -> dict:
    command = [sys.executable, str(HERE / "tutorial_report.py"), model, str(images), str(out), "--preprocess",
               preprocess]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"tutorial script failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return {"wall": wall, "after_imports": result["seconds"], "sections": result["sections"]}


def _paired_ratio(slow: list[dict], fast: list[dict], key: str) -> str:
    """The median of the pairs' ratios slow / fast, with their range when there are several pairs."""
    ratios = sorted(a[key] / b[key] for a, b in zip(slow, fast, strict=True))
    median = statistics.median(ratios)
    if len(ratios) == 1:
        return f"{median:.1f}x"
    return f"{median:.1f}x (median of {len(ratios)} pairs, {ratios[0]:.1f}-{ratios[-1]:.1f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="example,small,vgg16")
    parser.add_argument("--tutorial", default="example,small", help="Models to also run the tutorials' way on.")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Runs of each model with a tutorial pair: the report, then the tutorials' way, in turn, "
                             "so both see the same drift of a noisy machine; the ratio printed is the median of the "
                             "pairs' ratios, the sections those of the fastest report. Models without one (VGG16) "
                             "run once.")
    args = parser.parse_args()

    from reportgen.example import example_images_dir, example_model_path
    from reportgen.techniques.filter_patterns import matmul_rate

    f32, bf16 = matmul_rate("float32", 2048), matmul_rate("bfloat16", 2048)
    print(f"matmul 2048^2: float32 {f32:.0f} GFLOP/s, bfloat16 {bf16:.0f} GFLOP/s; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            if name == "example":
                model, images, preprocess = str(example_model_path()), example_images_dir(), "scale"
            elif name == "small":
                model, images, preprocess = str(root / "small.keras"), root / "small_images", "scale"
                accuracy = train_small_cnn(Path(model))
                write_images(images, 8, 64, seed=21)
                print(f"small: 3-conv CNN trained on shapes, held-out accuracy {accuracy:.0%}")
            elif name == "vgg16":
                model, images, preprocess = "vgg16", root / "vgg_images", "caffe"
                write_images(images, 4, 224, seed=22)
            else:
                sys.exit(f"--models: unknown model {name!r}")
            paired = name in args.tutorial.split(",")
            results, tutorials = [], []
            for _ in range(max(1, args.repeats) if paired else 1):
                results.append(run_report(model, images, root / f"{name}-report"))
                if paired:
                    tutorials.append(run_tutorial(model, images, root / f"{name}-tutorial", preprocess))
            best = min(results, key=lambda r: r["wall"])
            manifest = best["manifest"]
            flops = section_flops(model, manifest)
            seconds = {"dataset": manifest["dataset"]["seconds"], **manifest["seconds"]}
            print(f"== {name}: {len(manifest['images'])} images; wall {best['wall']:.1f} s, after imports "
                  f"{best['after_imports']:.1f} s; CPU {best['cpu']:.1f} s ({best['cpu'] / best['wall']:.1f} of "
                  f"{os.cpu_count()} cores busy on average)")
            print("   " + ", ".join(f"{phase} {spent:.1f} s" for phase, spent in best["phases"].items()))
            print(f"   {'section':17s} {'s':>7s} {'GFLOP':>9s} {'floor f32':>10s} {'bf16':>7s} {'x f32':>7s} "
                  f"{'x bf16':>7s}")
            for section, spent in seconds.items():
                work = flops.get(section)
                if not work:  # no floor (figures and pages only), or its passes ran in another section
                    print(f"   {section:17s} {spent:7.2f}" + ("" if work is None else f" {0.0:9.1f}"))
                    continue
                floor, floor_bf16 = work / 1e9 / f32, work / 1e9 / bf16
                print(f"   {section:17s} {spent:7.2f} {work / 1e9:9.1f} {floor:10.2f} {floor_bf16:7.2f} "
                      f"{spent / max(floor, 1e-9):6.1f}x {spent / max(floor_bf16, 1e-9):6.1f}x")
            if paired:
                tutorial = min(tutorials, key=lambda r: r["wall"])
                parts = ", ".join(f"{k} {v:.1f}" for k, v in tutorial["sections"].items())
                print(f"   tutorials' way (fastest run): wall {tutorial['wall']:.1f} s, after imports "
                      f"{tutorial['after_imports']:.1f} s ({parts})")
                print(f"   reportgen is {_paired_ratio(tutorials, results, 'wall')} the tutorials' way "
                      f"({_paired_ratio(tutorials, results, 'after_imports')} after imports)")
            print()


if __name__ == "__main__":
    main()
