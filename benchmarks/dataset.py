"""Validation-set scale: a whole default report over many images, against the physical floor of a forward pass.

    python benchmarks/dataset.py [--sizes 1000,5000,20000] [--vgg 2000] [--baseline-src DIR]
    python benchmarks/dataset.py --engine ray [--sizes 20000] [--pairs 2] [--sections predictions]
    python benchmarks/dataset.py --data-health [--sizes 20000] [--pairs 2]

For the bundled model on generated shapes images (64 px) at each size: the report's wall time and images/s, the
dataset pass's own images/s (decoding included, from report.json), peak resident memory (/usr/bin/time -v) and
index.html's size, against a bare `model.predict` over the same images already decoded and preprocessed (the
floor of one forward pass). `--vgg N`: VGG16 with random weights on N images at 224 px, reported as the whole
report's marginal cost per image against one forward and backward pass per image. `--baseline-src DIR`: a
checkout of an older reportgen, run on the smallest size for "today's way".

`--data-health` measures what data health costs: pairs of reports (`predictions,evaluation` without and with
`data_health`, the order alternating), each pass's images/s, the data health section's own seconds (label issues,
duplicates, outliers, map, atlas and galleries after the pass) and peak memory.

`--engine ray` measures the dataset pass itself, Ray against the local engine (a local Ray started per run), from
report.json's `dataset`: images/s with start-up excluded, start-up, each worker's images/s and the driver's merge
seconds. On one core first: `--pairs` pairs of runs, each pair the local engine and `--engine ray --workers 1`
back to back (which goes first alternates, so a machine that gets busier or quieter mid-pair favours neither),
both under `taskset -c 0` with one TensorFlow thread; then one pair on every core, Ray with 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def write_shapes(folder: Path, count: int, size: int = 64) -> None:
    import cv2

    from reportgen.example.shapes import CLASS_NAMES, generate

    data = generate(count, seed=7, size=size)
    for name in CLASS_NAMES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        cv2.imwrite(str(folder / CLASS_NAMES[label] / f"{i:06d}.png"), image[:, :, ::-1])


def run_report(model: str, images: Path, out: Path, extra: list[str], source: str | None = None,
               pin: str | None = None) -> dict:
    """One report in a process of its own; `pin`: a CPU list for taskset, with TensorFlow at one thread."""
    command = ["/usr/bin/time", "-v", *(["taskset", "-c", pin] if pin else []), sys.executable, "-m", "reportgen",
               "generate", model, str(images), "-o", str(out), "--quiet", "--force", *extra]
    env = dict(os.environ, **({"PYTHONPATH": source} if source else {}),
               **({"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"} if pin else {}))
    started = time.perf_counter()
    # From the output's parent: `python -m` puts the working directory first on sys.path, which would shadow
    # the --baseline-src checkout with the one the benchmark is run from.
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"reportgen failed:\n{run.stderr[-3000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1)) / 1024
    manifest = json.loads((out / "report.json").read_text())
    return {"seconds": seconds, "peak_mib": peak, "page_mb": (out / "index.html").stat().st_size / 1e6,
            "pass_images_per_second": (manifest.get("dataset") or {}).get("images_per_second"),
            "dataset": manifest.get("dataset") or {}}


def describe_pass(label: str, result: dict) -> str:
    """One line of a run's dataset pass: images/s once started, start-up, each worker's rate, the driver's merge."""
    d = result["dataset"]
    workers = d.get("worker_images_per_second")
    merge = d.get("merge_seconds")
    return (f"{label}: {d['images_per_second']:7.0f} images/s (start-up excluded), start-up "
            f"{d['engine_startup_seconds']:.2f} s, pass {d['seconds']:.1f} s"
            + (f", per worker {', '.join(f'{r:.0f}' for r in workers)} images/s" if workers else "")
            + (f", driver merge {merge:.3f} s ({d['images'] / merge:,.0f} images/s)" if merge else ""))


def compare_engines(model_path: str, images: Path, count: int, work: Path, pairs: int, sections: str) -> None:
    """Ray against the local engine on the same images: paired runs on one core, then one pair on every core."""
    extra = ["--sections", sections]
    ratios = []
    for pair in range(pairs):
        order = ("local", "ray") if pair % 2 == 0 else ("ray", "local")
        got = {}
        for engine in order:
            flags = ["--engine", "ray", "--workers", "1"] if engine == "ray" else []
            got[engine] = run_report(model_path, images, work / f"{engine}-{count}-{pair}", [*extra, *flags],
                                     pin="0")
            print(describe_pass(f"{count:>7} images, one core, pair {pair + 1}, {engine:>5}", got[engine]),
                  flush=True)
        ratios.append(got["ray"]["dataset"]["images_per_second"] / got["local"]["dataset"]["images_per_second"])
        print(f"{count:>7} images, one core, pair {pair + 1}: ray / local = {ratios[-1]:.2f}", flush=True)
    print(f"{count:>7} images, one core: ray --workers 1 / local, start-up excluded: "
          f"{', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})", flush=True)
    cpus = len(os.sched_getaffinity(0))
    for engine, flags in (("local", []), ("ray", ["--engine", "ray", "--workers", str(min(2, cpus))])):
        result = run_report(model_path, images, work / f"{engine}-{count}-all", [*extra, *flags])
        print(describe_pass(f"{count:>7} images, {cpus} cores, {engine:>5}", result), flush=True)


def compare_data_health(model_path: str, images: Path, count: int, work: Path, pairs: int) -> None:
    """The pass with and without data health's embeddings, and the section's own time, in alternating pairs."""
    base = "predictions,evaluation"
    ratios = []
    for pair in range(pairs):
        order = ("without", "with") if pair % 2 == 0 else ("with", "without")
        got = {}
        for variant in order:
            sections = base + (",data_health" if variant == "with" else "")
            got[variant] = run_report(model_path, images, work / f"health-{variant}-{count}-{pair}",
                                      ["--sections", sections])
            manifest = json.loads((work / f"health-{variant}-{count}-{pair}" / "report.json").read_text())
            section = manifest["seconds"].get("data_health")
            print(f"{count:>7} images, pair {pair + 1}, {variant:>7} data health: pass "
                  f"{got[variant]['pass_images_per_second']:7.0f} images/s, report {got[variant]['seconds']:.1f} s, "
                  f"peak {got[variant]['peak_mib']:.0f} MiB"
                  + (f", data health section {section:.2f} s" if section is not None else ""), flush=True)
        ratios.append(got["with"]["pass_images_per_second"] / got["without"]["pass_images_per_second"])
    print(f"{count:>7} images: pass images/s with data health / without: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.2f})", flush=True)


def predict_floor(model, images: Path, size: int, preprocess) -> float:
    """Images/s of a bare model.predict over the images decoded and preprocessed beforehand."""
    import cv2
    import numpy as np

    files = sorted(images.rglob("*.png"))
    x = np.stack([cv2.resize(cv2.imread(str(f))[:, :, ::-1], (size, size)) for f in files]).astype("float32")
    x = preprocess(x)
    model.predict(x, batch_size=32, verbose=0)  # traces every batch shape it will see
    best = float("inf")
    for _ in range(3):  # the best of three: this machine is shared and noisy
        started = time.perf_counter()
        model.predict(x, batch_size=32, verbose=0)
        best = min(best, time.perf_counter() - started)
    return len(x) / best


def forward_backward_seconds(model, size: int, batch: int = 8, repeats: int = 3) -> float:
    """Seconds per image of one forward and one backward pass (gradient of the top logit to the input)."""
    import numpy as np
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).random((batch, size, size, 3), np.float32) * 255)

    def step() -> tf.Tensor:  # eager: for VGG16's arithmetic the dispatch overhead is noise
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = tf.reduce_sum(model(x, training=False))
        return tape.gradient(score, x)

    step()
    started = time.perf_counter()
    for _ in range(repeats):
        step().numpy()
    return (time.perf_counter() - started) / (batch * repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--vgg", type=int, default=0, help="images for the VGG16 run (0: skip)")
    parser.add_argument("--baseline-src", default=None, help="an older checkout for today's way, smallest size")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--pairs", type=int, default=2, help="--engine ray: local/Ray run pairs on one core")
    parser.add_argument("--sections", default="predictions", help="--engine ray: the sections of each report")
    parser.add_argument("--data-health", action="store_true", help="the pass with and without data health")
    args = parser.parse_args()

    import keras

    from reportgen.example import example_model_path

    work = Path(tempfile.mkdtemp(prefix="reportgen-dataset-"))
    model_path = str(example_model_path())
    model = keras.models.load_model(model_path)
    rows = []
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.data_health:
        for count in sizes:
            images = work / f"shapes-{count}"
            write_shapes(images, count)
            compare_data_health(model_path, images, count, work, args.pairs)
        return
    if args.engine == "ray":
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray.shutdown()
        print(f"starting and stopping a local Ray: {time.perf_counter() - started:.1f} s", flush=True)
        for count in sizes:
            images = work / f"shapes-{count}"
            write_shapes(images, count)
            compare_engines(model_path, images, count, work, args.pairs, args.sections)
        return
    for count in sizes:
        images = work / f"shapes-{count}"
        write_shapes(images, count)
        result = run_report(model_path, images, work / f"report-{count}", [])
        floor = predict_floor(model, images, 64, lambda x: x / 255.0)
        rows.append((count, result, floor))
        print(f"{count:>6} images: report {result['seconds']:.1f} s ({count / result['seconds']:.0f} images/s), "
              f"pass {result['pass_images_per_second']:.0f} images/s = "
              f"{result['pass_images_per_second'] / floor:.2f}x bare model.predict ({floor:.0f} images/s), "
              f"peak {result['peak_mib']:.0f} MiB, index.html {result['page_mb']:.1f} MB", flush=True)
    if len(rows) > 1:
        ratio = rows[-1][1]["peak_mib"] / rows[0][1]["peak_mib"]
        print(f"peak memory at {rows[-1][0]} images / at {rows[0][0]}: {ratio:.2f}")
    if args.baseline_src:
        count = sizes[0]
        old = run_report(model_path, work / f"shapes-{count}", work / "baseline", [], args.baseline_src)
        new = rows[0][1]
        print(f"today's way ({args.baseline_src}) on {count} images: {old['seconds']:.1f} s, peak "
              f"{old['peak_mib']:.0f} MiB, index.html {old['page_mb']:.1f} MB; now {new['seconds']:.1f} s, "
              f"{new['peak_mib']:.0f} MiB, {new['page_mb']:.1f} MB ({old['seconds'] / new['seconds']:.1f}x faster)")
    if args.vgg:
        from reportgen.loading.preprocess import Preprocessor

        images = work / "vgg"
        write_shapes(images, args.vgg, size=224)
        small = work / "vgg-small"
        write_shapes(small, 24, size=224)
        big = run_report("vgg16", images, work / "vgg-report", ["--weights", "none"])
        base = run_report("vgg16", small, work / "vgg-small-report", ["--weights", "none"])
        vgg = keras.applications.VGG16(weights=None)
        # The convolutions are 99% of VGG16's arithmetic (15.4 of 15.5 GFLOPs per image); its dense head gave no
        # input gradient through Keras 3 here, so the forward and backward floor is timed on the conv base.
        per_image = forward_backward_seconds(keras.applications.VGG16(weights=None, include_top=False,
                                                                      input_shape=(224, 224, 3)), 224)
        floor = predict_floor(vgg, images, 224, Preprocessor("caffe").apply)
        marginal = (big["seconds"] - base["seconds"]) / (args.vgg - 24)
        print(f"VGG16 (random weights) on {args.vgg} images at 224 px: {big['seconds']:.0f} s, peak "
              f"{big['peak_mib']:.0f} MiB, index.html {big['page_mb']:.1f} MB; pass "
              f"{big['pass_images_per_second']:.1f} images/s vs bare predict {floor:.1f} images/s")
        print(f"marginal cost per image {marginal:.3f} s = {marginal / per_image:.2f}x one forward + backward pass "
              f"({per_image:.3f} s)")


if __name__ == "__main__":
    main()
