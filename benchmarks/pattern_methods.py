"""Which filter-pattern parameterisation should be the default: `pixel` (the tutorials' RMS-normalised pixel
ascent, batched and clipped to the valid range) or `fourier` (Lucid's decorrelated Fourier image with jitter)?

Runs both on the bundled example model (trained, so the pictures mean something), 16 filters per conv layer, 40
ascent steps at the model's 64 px, with the report's arithmetic (bfloat16 steps where the CPU has them). Prints per
layer and method: seconds (second run, tracing excluded), mean activation reached, the share of filters whose own
pattern drives them harder than the other filters' patterns do on average, and how much of each pattern differs
from the flat grey start (the share of pixels more than 10 grey levels away from it). Writes both methods' grids
side by side for a look.

    python benchmarks/pattern_methods.py [--steps 40] [--out pattern_methods.png]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

FILTERS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="pattern_methods.png", help="PNG of both methods' grids, per layer.")
    args = parser.parse_args()

    import cv2

    from reportgen import figures
    from reportgen.example import example_model_path
    from reportgen.loading.models import load_model
    from reportgen.loading.preprocess import Preprocessor
    from reportgen.techniques.filter_patterns import (
        PatternSettings,
        fast_bfloat16,
        filter_responses,
        search_patterns,
    )
    from reportgen.techniques.pattern_params import PixelMap

    model = load_model(example_model_path()).model
    pixel_map = PixelMap.from_preprocessor(Preprocessor("scale"))
    dtype = "bfloat16" if fast_bfloat16() else "float32"
    print(f"example model, {FILTERS} filters per layer, {args.steps} ascent steps at 64 px, {dtype} steps\n")
    print(f"{'layer':<7} {'method':<8} {'seconds':>8} {'mean act.':>10} {'own > others':>13} {'changed px':>11}")
    rows = []
    for layer in ("conv1", "conv2", "conv3"):
        for method in ("pixel", "fourier"):
            settings = PatternSettings(steps=args.steps, height=64, width=64, method=method, directions=("ascent",),
                                       compute_dtype=dtype)
            search_patterns(model, layer, range(FILTERS), settings, pixel_map)  # trace once, time the second run
            result = search_patterns(model, layer, range(FILTERS), settings, pixel_map)
            patterns = result.direction("ascent")
            responses = filter_responses(model, layer, patterns.inputs, range(FILTERS))
            own = np.diag(responses)
            others = (responses.sum(axis=0) - own) / (FILTERS - 1)
            start = search_patterns(model, layer, range(FILTERS), PatternSettings(
                steps=0, height=64, width=64, method=method, directions=("ascent",)), pixel_map)
            moved = np.abs(patterns.inputs - start.direction("ascent").inputs).max(axis=3) > 10 / 255
            print(f"{layer:<7} {method:<8} {result.seconds:>8.2f} {patterns.activation.mean():>10.4g} "
                  f"{np.mean(own > others):>13.0%} {moved.mean():>11.0%}")
            tiles = np.clip(patterns.inputs * 255, 0, 255).round().astype(np.uint8)
            tiles = np.stack([figures.upscale(tile, 2) for tile in tiles])
            grid = figures.tile_grid(tiles, columns=FILTERS, pad=3)
            label = np.full((grid.shape[0], 120, 3), figures.BACKGROUND, np.uint8)
            cv2.putText(label, f"{layer} {method}", (6, grid.shape[0] // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (40, 40, 40), 1, cv2.LINE_AA)
            rows.append(np.concatenate([label, grid], axis=1))
    cv2.imwrite(args.out, np.concatenate(rows)[:, :, ::-1])
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
