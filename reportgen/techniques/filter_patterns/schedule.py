"""How long a report's pattern searches will take, and which layers share a search: the cost model behind the
progress line's estimate, and the grouping of layers into searches (which must not depend on the machine's speed)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reportgen.graph import LayerNode
from reportgen.precision import search_elements, search_flops
from reportgen.techniques.filter_patterns.scorecard import ROBUST_VIEWS
from reportgen.techniques.filter_patterns.search import PatternSettings
from reportgen.techniques.filter_patterns.targets import PatternTarget

# Share of the matmul rate the search steps reach (conv forward + input gradient), only for the time estimate.
# Measured on a default VGG16 report (2 cores, bfloat16 matmul 830 GFLOP/s): 0.6 on block1_conv2, 0.85-1.0 from
# block2 on; memory-bound first layers reach far less but cost little. 0.8 keeps the estimate a little pessimistic.
SEARCH_EFFICIENCY = 0.8
SEARCH_OVERHEAD_SECONDS = 1.0  # tracing the compiled steps and evaluating the patterns, whatever the size
# Below this many search FLOPs the estimate is mostly the overhead above, and measuring the machine's matmul rate
# (0.05-0.1 s) would cost more than the arithmetic it times: a nominal rate (GFLOP/s, 2 cores) stands in.
MEASURED_RATE_FLOPS = 1e11
NOMINAL_RATE = {"float32": 300.0, "bfloat16": 600.0}
# Seconds per activation element per image and step, for the memory-bound part (normalisation, activations,
# depthwise layers): fitted on MobileNetV2's 52 layers (float32, 2 cores), where it and the overhead above predict
# every layer within 0.3 s; on VGG16 the estimate comes out about 1.4x pessimistic.
ELEMENT_SECONDS = 0.45e-9


def matmul_rate(dtype: str = "float32", size: int = 512, repeats: int = 5) -> float:
    """The machine's matrix-multiply rate in GFLOP/s (best of `repeats`), the yardstick for the search's speed.
    Run eagerly: tracing a function for it would cost more than the measurement (the benchmarks ask for 2048)."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal([size, size], seed=[0, 0]), dtype)
    tf.matmul(a, a).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tf.matmul(a, a).numpy()
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


# What one search costs beyond its arithmetic on a small model: tracing its step, evaluation and scorecard, their
# first calls, its step calls (about 0.4 s on a 3-conv CNN at 32 px). Layers on the same canvas share a search
# while the arithmetic it adds (their patterns also run the deeper layers) is below this many FLOPs: 0.1 s at this
# CPU's float32 matmul rate, about 0.3 s at the rate its 16- and 32-channel convolutions reach, still below what a
# search costs. A count, not a measured time: the grouping, and with it every pattern (a search's random views are
# drawn for the whole search), must not depend on the machine's speed.
SHARED_SEARCH_FLOPS = 3e10


def shared_searches(paths: Sequence[str], canvases: dict[str, tuple[int, int]], pattern_flops: dict[str, float],
                    patterns: dict[str, int]) -> list[list[str]]:
    """`paths` (in execution order) grouped into searches: consecutive layers with the same canvas, as long as
    running all the group's patterns to its deepest layer adds less than `SHARED_SEARCH_FLOPS` of arithmetic.
    `pattern_flops`: one pattern's whole search to that layer; `patterns`: each layer's count."""
    groups: list[list[str]] = []
    for path in paths:
        group = groups[-1] if groups else None
        if group is not None and canvases[group[0]] == canvases[path]:
            deepest = max(pattern_flops[path], *(pattern_flops[other] for other in group))
            added = sum(patterns[other] * (deepest - pattern_flops[other]) for other in (*group, path))
            if added < SHARED_SEARCH_FLOPS:
                group.append(path)
                continue
        groups.append([path])
    return groups


@dataclass(frozen=True)
class SearchPlan:
    """The searches of a report, in execution order, with their estimated seconds."""

    groups: tuple[tuple[str, ...], ...]  # layer paths sharing each search
    seconds: tuple[float, ...]  # each search's estimate
    patterns: Mapping[str, int]  # patterns per layer (filters x directions x diversity)
    flops: Mapping[str, float]  # each layer's search arithmetic, every pattern and step

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds)


def plan_searches(nodes: Sequence[LayerNode], shapes: dict[str, Any], targets: Sequence[PatternTarget],
                  filters: Mapping[str, Sequence[int]], layer_settings: Mapping[str, PatternSettings],
                  image_size: tuple[int, int]) -> SearchPlan:
    """The searches for `targets` (in execution order), each layer searching its `filters` with its
    `layer_settings`; `image_size` (height, width): the size `shapes` were measured at. The estimate counts each
    layer's arithmetic at the measured (or, for little arithmetic, a nominal) matmul rate, its memory-bound
    elements, the scorecard's forward passes, and a fixed overhead per search."""
    settings = next(iter(layer_settings.values()))
    area_scale = {path: s.height * s.width / (image_size[0] * image_size[1]) for path, s in layer_settings.items()}
    patterns = {path: len(chosen) * len(settings.directions) * settings.diversity for path, chosen in filters.items()}
    flops = {t.layer: search_flops(nodes, shapes, t.output, area_scale[t.layer]) * patterns[t.layer] * settings.steps
             for t in targets}
    elements = {t.layer: search_elements(nodes, shapes, t.output, area_scale[t.layer]) * patterns[t.layer]
                * settings.steps for t in targets}
    measure = sum(flops.values()) >= MEASURED_RATE_FLOPS

    def search_rate(dtype: str) -> float:
        return (matmul_rate(dtype) if measure else NOMINAL_RATE[dtype]) * 1e9 * SEARCH_EFFICIENCY

    rate = search_rate(settings.compute_dtype)
    float32_share = 1.0 if settings.compute_dtype == "float32" else rate / search_rate("float32")
    # Forward passes, about a third of a search step each (no input gradient), whatever the steps: the
    # scorecard's robust views in the search's arithmetic, and in float32 the starts (half a pass per pattern)
    # and the patterns' re-evaluation (which also gives the scorecard every filter's response).
    scoring = (len(ROBUST_VIEWS) + 1.5 * float32_share) / (3.0 * max(1, settings.steps))
    arithmetic = {path: (1.0 + scoring) * (flops[path] / rate + elements[path] * ELEMENT_SECONDS) for path in flops}
    groups = shared_searches([t.layer for t in targets],
                             {p: (s.height, s.width) for p, s in layer_settings.items()},
                             {p: flops[p] / max(1, patterns[p]) for p in flops}, patterns)
    seconds = [SEARCH_OVERHEAD_SECONDS + sum(arithmetic[path] for path in group) for group in groups]
    return SearchPlan(tuple(tuple(g) for g in groups), tuple(seconds), patterns, flops)
