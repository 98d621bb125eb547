"""The `weights` sections: an overview, then per layer statistics, histogram and kernel grid, trained vs fresh."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict

from reportgen import figures
from reportgen.analysis import Analysis
from reportgen.report import Figure, FigureRow, Section, SectionResult, Table, Text
from reportgen.sections.anchors import section_id
from reportgen.techniques.feature_maps import select_layers
from reportgen.techniques.untrained import KS_SAMPLE, KS_SIGNIFICANCE, InitialiserDistance
from reportgen.techniques.weights import (
    NEAR_ZERO_SHARE,
    KernelComparison,
    WeightStats,
    compare_weights,
    drawn_layers,
)

TRAINED_COLOR, FRESH_COLOR = "#c0392b", "#2c7fb8"


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.4g}"  # NaN-safe


def stats_rows(trained: WeightStats, fresh: WeightStats) -> tuple[tuple[str, str, str], ...]:
    return (
        ("count", f"{trained.count:,}", f"{fresh.count:,}"),
        ("mean", _fmt(trained.mean), _fmt(fresh.mean)),
        ("std", _fmt(trained.std), _fmt(fresh.std)),
        ("min", _fmt(trained.min), _fmt(fresh.min)),
        ("max", _fmt(trained.max), _fmt(fresh.max)),
        ("near zero", f"{trained.near_zero:.1%}", f"{fresh.near_zero:.1%}"),
        ("NaN or Inf", str(trained.non_finite), str(fresh.non_finite)),
    )


def _distance_cell(distance: InitialiserDistance) -> str:
    """"0.412 (0.188) distinguishable": the KS distance, its critical value, and what they say."""
    if distance.statistic != distance.statistic:  # NaN: no finite value to compare
        return "n/a"
    verdict = "indistinguishable" if distance.indistinguishable else "distinguishable"
    return f"{distance.statistic:.3f} ({distance.critical:.3f}) {verdict}"


def _distance_sentence(distance: InitialiserDistance) -> str:
    if distance.statistic != distance.statistic:
        return "KS distance to the initialiser's distribution: n/a (no finite weight)"
    verdict = ("cannot be told from a fresh draw" if distance.indistinguishable else
               "is not a draw of the initialiser's distribution")
    return (f"KS distance to the initialiser's distribution {distance.statistic:.3f} (critical {distance.critical:.3f}"
            f" at p = {KS_SIGNIFICANCE:g}, {distance.sampled:,} values of each): the trained tensor {verdict}")


def _tensor_blocks(analysis: Analysis, comparison: KernelComparison, key_prefix: str, channel_order: str,
                   drawn: bool) -> list:
    """A tensor's statistics, and when `drawn` its histogram and kernel grids (trained beside fresh)."""
    tensor = comparison.tensor
    blocks: list = [
        Table(
            columns=(tensor, "trained", "fresh"),
            rows=stats_rows(comparison.trained.stats, comparison.fresh.stats),
            caption=(f"Shape {tuple(comparison.trained.values.shape)}; {_distance_sentence(comparison.distance)}. "
                     f"Near zero: |w| < {NEAR_ZERO_SHARE:.0%} of the tensor's largest |w|."),
        ),
    ]
    if not drawn:
        return blocks
    blocks += [
        Figure(
            key=f"{key_prefix}-histogram",
            title=f"{comparison.layer}: {tensor} histogram",
            caption="Trained (red) and freshly initialised (blue) weights over the same bins.",
            pixels=analysis.plot(
                figures.plot_histogram, comparison.bin_edges,
                [("trained", comparison.trained_counts, TRAINED_COLOR), ("fresh", comparison.fresh_counts,
                                                                          FRESH_COLOR)],
                title=f"{comparison.layer} {tensor}",
            ),
        ),
    ]
    if comparison.trained.values.ndim == 4 and comparison.trained.values.shape == comparison.fresh.values.shape:
        grids = figures.shared_kernel_grids((comparison.trained.values, comparison.fresh.values), ("trained", "fresh"),
                                            channel_order=channel_order, depthwise=comparison.depthwise)
        blocks.append(FigureRow((
            Figure(key=f"{key_prefix}-trained", title=f"{comparison.layer}: trained {tensor}", caption=grids.caption,
                   pixels=grids.pixels[0]),
            Figure(key=f"{key_prefix}-fresh", title=f"{comparison.layer}: fresh {tensor}",
                   caption=(f"The same layer freshly initialised, laid out the same way and on the same colour scale "
                            f"as the trained grid: {grids.measure} = {grids.scale:.3g} is full colour."),
                   pixels=grids.pixels[1]),
        )))
    return blocks


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    comparisons = compare_weights(analysis.layers, analysis.fresh_layers, analysis.options.seed)
    if not comparisons:
        return SectionResult((Section(id="weights", kind="weights", title="Weights",
                                      blocks=(Text("This model has no convolutional or dense layer with weights."),)),),
                             ("weights: the model has no conv or dense layer; the weights section is empty",),
                             shared={"initialiser_distances": ()})
    by_layer: dict[str, list[KernelComparison]] = defaultdict(list)
    for comparison in comparisons:
        by_layer[comparison.layer].append(comparison)

    overview = Table(
        columns=("Layer", "Type", "Tensor", "Trained std", "Fresh std", "KS distance to initialiser (critical)",
                 "Near zero", "NaN or Inf"),
        rows=tuple(
            (c.layer, c.layer_type, c.tensor, _fmt(c.trained.stats.std), _fmt(c.fresh.stats.std),
             _distance_cell(c.distance), f"{c.trained.stats.near_zero:.1%}", str(c.trained.stats.non_finite))
            for c in comparisons
        ),
        caption=("Each tensor against the same tensor of a freshly initialised copy of the architecture (seed "
                 f"{analysis.options.seed}). Two independent draws of one initialiser differ by about sqrt(2) of "
                 "their norm (||a - b|| / ||b|| is 1.41 for a model that never saw an image), so how far the weights "
                 "are from the fresh copy cannot show training. The KS distance compares their distributions instead: "
                 "the largest gap between the two cumulative distributions of the values (at most "
                 f"{KS_SAMPLE:,} of each, sampled), about 0 for an untrained tensor and above the critical value "
                 "(which two draws of one distribution exceed with probability "
                 f"{KS_SIGNIFICANCE:g}) when training reshaped the distribution. A short training run can leave a "
                 "large tensor indistinguishable."),
        row_links=tuple((("details", "#" + section_id("weights", analysis, c.layer)),) for c in comparisons),
    )
    sections = [Section(id="weights", kind="weights", title="Weights: trained against freshly initialised",
                        blocks=(overview,))]
    non_finite = [c.layer for c in comparisons if c.trained.stats.non_finite]
    warnings = [f"weights: NaN or Inf values in {', '.join(sorted(set(non_finite)))}"] if non_finite else []

    requested = None
    if analysis.options.layers:
        requested = {n.path for n in select_layers(analysis.layers, analysis.layer_shapes, analysis.options.layers)}
    drawn = drawn_layers(list(by_layer), analysis.layer_shapes, requested)
    if len(drawn) < len(by_layer):
        sections[0] = dataclasses.replace(sections[0], blocks=(*sections[0].blocks, Text(
            f"Histograms and kernel grids for {len(drawn)} of {len(by_layer)} layers"
            + (" (chosen with --layers)" if requested is not None else
               ": the first, the last, and the last of each map size; --layers draws others") +
            ". Every layer's statistics are below.")))
    # The first conv reads the image itself, in the model's colour order (BGR for caffe preprocessing).
    first_conv = next((c.layer for c in comparisons if c.trained.values.ndim == 4), None)
    image_order = analysis.preprocessor.channel_order if analysis.preprocessor.channels == 3 else "RGB"
    for n, (path, layer_comparisons) in enumerate(by_layer.items(), start=1):
        analysis.progress("weights", f"{path} ({n}/{len(by_layer)})")
        sid = section_id("weights", analysis, path)
        blocks: list = []
        arrays = {}
        tensors = []
        for comparison in layer_comparisons:
            key_prefix = f"{sid}-{comparison.tensor.replace('_', '-')}"
            order = image_order if path == first_conv else "RGB"
            blocks.extend(_tensor_blocks(analysis, comparison, key_prefix, order, path in drawn))
            keys = {"trained": f"{key_prefix}.trained", "fresh": f"{key_prefix}.fresh"}
            if analysis.options.save_arrays:  # else let the tensors go: VGG16's are 1.1 GB with the fresh copy
                arrays[keys["trained"]] = comparison.trained.values
                arrays[keys["fresh"]] = comparison.fresh.values
            tensors.append({
                "tensor": comparison.tensor,
                "shape": list(comparison.trained.values.shape),
                "trained": asdict(comparison.trained.stats),
                "fresh": asdict(comparison.fresh.stats),
                "bias": asdict(comparison.trained.bias_stats) if comparison.trained.bias_stats else None,
                "initialiser_distance": {**asdict(comparison.distance),
                                         "indistinguishable": comparison.distance.indistinguishable},
                "array_keys": keys if analysis.options.save_arrays else None,
            })
        sections.append(Section(
            id=sid, kind="weights", title=f"Weights: {path}", blocks=tuple(blocks), layer=path,
            data={"type": layer_comparisons[0].layer_type, "tensors": tensors}, arrays=arrays,
        ))
    distances = tuple((c.layer, c.tensor, c.distance) for c in comparisons)
    return SectionResult(tuple(sections), tuple(warnings), shared={"initialiser_distances": distances})
