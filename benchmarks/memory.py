"""Peak memory of a whole report: a 50-layer CNN and 64 images, measured with /usr/bin/time -v.

    python benchmarks/memory.py [--images 64] [--size 128] [--sections LIST]
    python benchmarks/memory.py --large      # one 2048 px image, the default CAM methods (predictions,cam)

`--large` is the case where memory used to grow with the input size: the deletion / insertion curves built all
their variants of the image at full size in float64 at once (2 x 17 per map, 3.4 GB at 2048 px for one map).

Builds the model and images in a temporary folder, runs `reportgen generate` as a child process, and prints its
peak resident memory beside the size of the model's weights and of all its activations for all images at once
(what a run that kept every layer's output for every image would need on top).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_model(size: int):
    """17 blocks of conv -> batch norm -> relu (51 layers) with a pooling layer every 4 blocks."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = inputs
    width = 16
    for block in range(17):
        if block and block % 4 == 0:
            x = keras.layers.MaxPooling2D(name=f"pool{block}")(x)
            width *= 2
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{block}")(x)
        x = keras.layers.Activation("relu", name=f"relu{block}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x), name="deep50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sections", default=None)
    parser.add_argument("--large", action="store_true",
                        help="one 2048 px image with the default CAM methods (sets --images 1 --size 2048 "
                             "--sections predictions,cam)")
    args = parser.parse_args()
    if args.large:
        args.images, args.size, args.sections = 1, 2048, "predictions,cam"

    import cv2
    import numpy as np

    from reportgen.graph import layer_output_shapes

    work = Path(tempfile.mkdtemp(prefix="reportgen-memory-"))
    model = build_model(args.size)
    model_path = work / "deep50.keras"
    model.save(model_path)
    images = work / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.images):
        cv2.imwrite(str(images / f"{i:03d}.png"), rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    shapes = layer_output_shapes(model, (args.size, args.size, 3))
    activation_bytes = sum(int(np.prod(s[1:])) * 4 for s in shapes.values() if isinstance(s[-1], int))
    all_at_once = activation_bytes * args.images

    command = ["/usr/bin/time", "-v", sys.executable, "-m", "reportgen", "generate", str(model_path), str(images),
               "-o", str(work / "report"), "--quiet"]
    if args.sections:
        command += ["--sections", args.sections]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"reportgen failed:\n{run.stderr[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    print(f"model: {len(model.layers)} layers, {model.count_params():,} parameters, {args.images} images at "
          f"{args.size}px")
    print(f"wall time: {seconds:.1f} s")
    print(f"peak resident memory: {peak_kib / 1024:.0f} MiB")
    print(f"every layer's activations for every image at once would be: {all_at_once / 2**20:.0f} MiB")
    if args.large:
        variants = 2 * 17 * args.size * args.size * 3 * 8
        print(f"one map's deletion/insertion variants at once in float64 would be: {variants / 2**20:.0f} MiB")
    print(f"report size: {sum(p.stat().st_size for p in (work / 'report').rglob('*')) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
