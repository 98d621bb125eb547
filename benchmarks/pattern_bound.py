"""How high can a valid image drive a filter? An upper-bound estimate for `benchmarks/pattern_methods.py`.

Per model and layer: the tutorials' loop at 40 steps (the yardstick), then projected Adam on the pixels for many
steps (`--steps`, default 400) from several random starts (`--starts`, default 2) with two learning-rate schedules
(0.05 and 0.25 decaying to 0.002 and 0.01), keeping each filter's best, twice: inside
the valid range (any saturation), and with a 10% saturation budget (at most that share of a pattern's pixel values
within 1% of the range's ends: each step projects onto that set exactly, by clipping all but the pattern's
farthest-out 10% of values to the band). Printed: each one's mean activation against the tutorial's.

    python benchmarks/pattern_bound.py [--models rgb,grey,example] [--steps 400] [--starts 2] [--filters 8]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np


def best_of(model, layer, filters, method, steps, size, pixel_map, starts) -> tuple[np.ndarray, np.ndarray]:
    """Each filter's highest activation over `starts` seeded runs, and the saturation of that pattern."""
    from reportgen.techniques.filter_patterns import PatternSettings, search_patterns

    best = np.full(len(filters), -np.inf)
    saturation = np.zeros(len(filters))
    for seed in range(starts):
        settings = PatternSettings(steps=steps, height=size, width=size, seed=seed, directions=("ascent",))
        patterns = search_patterns(model, layer, filters, settings, pixel_map, method=method).direction("ascent")
        x = patterns.inputs.reshape(len(filters), -1)
        sat = ((x <= 0.01) | (x >= 0.99)).mean(axis=1)
        better = patterns.activation > best
        best[better], saturation[better] = patterns.activation[better], sat[better]
    return best, saturation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="rgb,grey,example")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--filters", type=int, default=8)
    args = parser.parse_args()

    from pattern_methods import MODELS, load
    from tutorial import TutorialAscent

    from reportgen.loading.preprocess import Preprocessor
    from reportgen.techniques.pattern_params import PixelMap, ProjectedAscent

    filters = tuple(range(args.filters))
    print(f"{args.filters} filters, best of {args.starts} starts x {args.steps} steps of projected Adam\n")
    print(f"{'model':<10} {'layer':<14} {'tutorial':>9} {'valid':>16} {'10% budget':>16}")
    for name in args.models.split(","):
        layers, size, mode = MODELS[name]
        model = load(name)
        pixel_map = PixelMap.from_preprocessor(Preprocessor(mode, int(model.inputs[0].shape[-1])))
        for layer in layers:
            tutorial, _ = best_of(model, layer, filters, TutorialAscent(), 40, size, pixel_map, 1)
            row = [f"{name:<10} {layer:<14} {tutorial.mean():>9.4g}"]
            for budget in (None, 0.10):
                # The report's method with a decaying rate, and the same budget on every layer (first included).
                runs = [best_of(model, layer, filters, ProjectedAscent(learning_rate=rate, final_rate=final,
                                                                       budget=budget, free_first_layer=False),
                                args.steps, size, pixel_map, args.starts) for rate, final in ((0.05, 0.002),
                                                                                              (0.25, 0.01))]
                higher = runs[1][0] > runs[0][0]
                reached = np.where(higher, runs[1][0], runs[0][0])
                sat = np.where(higher, runs[1][1], runs[0][1])
                row.append(f"{reached.mean() / tutorial.mean():>6.2f}x sat {sat.mean():>4.0%}")
            print(" ".join(row))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
