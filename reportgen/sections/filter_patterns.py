"""The `filter_patterns` sections: an overview, then per conv layer one grid per direction of the inputs that drive
each chosen filter up (ascent) or down (descent), with the activation each reached."""

from __future__ import annotations

import numpy as np

from reportgen import figures
from reportgen.analysis import Analysis
from reportgen.layer_kinds import PATTERN_TYPES
from reportgen.report import Facts, Figure, Section, Table, Text
from reportgen.sections.anchors import section_id
from reportgen.techniques.filter_patterns import (
    LayerPatterns,
    PatternSettings,
    choose_filters,
    matmul_rate,
    search_dtype,
    search_elements,
    search_flops,
    search_patterns,
    search_size,
)
from reportgen.techniques.pattern_params import PixelMap

COLUMNS = 8
DEAD_GREY = 128
# Share of the matmul rate the search steps reach (conv forward + input gradient), only for the time estimate.
# Measured on a default VGG16 report (2 cores, bfloat16 matmul 830 GFLOP/s): 0.6 on block1_conv2, 0.85-1.0 from
# block2 on; memory-bound first layers reach far less but cost little. 0.8 keeps the estimate a little pessimistic.
SEARCH_EFFICIENCY = 0.8
LAYER_OVERHEAD_SECONDS = 1.0  # tracing the compiled steps and evaluating the patterns, whatever the layer size
# Seconds per activation element per image and step, for the memory-bound part (normalisation, activations,
# depthwise layers): fitted on MobileNetV2's 52 layers (float32, 2 cores), where it and the overhead above predict
# every layer within 0.3 s; on VGG16 the estimate comes out about 1.4x pessimistic.
ELEMENT_SECONDS = 0.45e-9
METHOD_TEXT = {
    "fourier": "a Fourier-space image with decorrelated colour (Lucid's parameterisation), updated with Adam while "
               "each ascent step sees it slightly jittered, scaled and rotated",
    "pixel": "gradient steps on the pixels, each normalised by its RMS (the tutorials' method)",
}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def pattern_tiles(analysis: Analysis, inputs: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Model inputs (F, H, W, C) -> display tiles (F, H, W, 3) uint8; dead filters become plain grey."""
    pixels = np.clip(analysis.preprocessor.invert(inputs), 0, 255).round().astype(np.uint8)
    if pixels.shape[3] == 1:
        pixels = np.repeat(pixels, 3, axis=3)
    pixels[dead] = DEAD_GREY
    return pixels


def _grid(analysis: Analysis, result: LayerPatterns, direction: str) -> np.ndarray:
    tiles = pattern_tiles(analysis, result.direction(direction).inputs, result.dead)
    # The dataset examples show each filter's patterns beside the natural images that drive it.
    analysis.shared_results.setdefault("pattern_tiles", {})[(result.layer, direction)] = (result.filters, tiles)
    zoom = max(1, round(128 / max(tiles.shape[1:3])))  # small patterns are enlarged to ~128 px, pixels kept crisp
    tiles = np.stack([figures.upscale(tile, zoom) for tile in tiles])
    labels = [f"{f} dead" if dead else str(f) for f, dead in zip(result.filters, result.dead, strict=True)]
    return figures.fit_width(figures.tile_grid(tiles, columns=COLUMNS, pad=4, labels=labels))


def _layer_section(analysis: Analysis, result: LayerPatterns, settings: PatternSettings) -> Section:
    path = result.layer
    sid = section_id("filter_patterns", analysis, path)
    slug = analysis.layer_slugs[path]
    blocks: list = []
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for patterns in result.patterns:
        verb = "raises" if patterns.direction == "ascent" else "lowers"
        blocks.append(Figure(
            key=f"{sid}-{patterns.direction}",
            title=f"{path}: {patterns.direction}",
            caption=(f"For each filter (number below the tile), the {settings.width}x{settings.height} image that "
                     f"{verb} its mean activation most after {settings.steps} steps. Grey tiles marked dead are "
                     "filters the search could not switch on."),
            pixels=analysis.encode(_grid(analysis, result, patterns.direction)),
        ))
        key = f"filter_patterns.{slug}.{patterns.direction}"
        if analysis.options.save_arrays:
            arrays[key] = patterns.inputs
        for index, f in enumerate(result.filters):
            entries.append({
                "layer": path, "filter": f, "direction": patterns.direction,
                "activation": float(patterns.activation[index]),
                "start_activation": float(result.start_activation[index]),
                "pre_activation": float(patterns.pre_activation[index]),
                "start_pre_activation": float(result.start_pre_activation[index]),
                # Like every section: a key only when arrays.npz is written, so it never points at nothing.
                "array_key": key if analysis.options.save_arrays else None, "array_index": index,
                "dead": bool(result.dead[index]),
            })
    by_direction = {p.direction: p for p in result.patterns}
    rows = []
    for index, f in enumerate(result.filters):
        reached = [_fmt(by_direction[d].activation[index]) if d in by_direction else "-" for d in
                   ("ascent", "descent")]
        rows.append((str(f), _fmt(result.start_activation[index]), *reached, "dead" if result.dead[index] else ""))
    blocks.append(Table(
        columns=("Filter", "Start", "Ascent", "Descent", ""),
        rows=tuple(rows),
        caption=("Mean activation of each filter (the layer's output, after its activation function) on the "
                 "starting image and on each pattern, evaluated in float32 on the stored image."),
    ))
    analysis.manifest_lists.setdefault("filter_patterns", []).extend(entries)
    node = next(n for n in analysis.layers if n.path == path)
    return Section(
        id=sid, kind="filter_patterns", title=f"Filter patterns: {path}", blocks=tuple(blocks), layer=path,
        data={"type": node.type_name, "filters": list(result.filters), "dead": int(result.dead.sum()),
              "seconds": round(result.seconds, 3), "gflop": round(result.flops / 1e9, 3)},
        arrays=arrays,
    )


def build(analysis: Analysis) -> list[Section]:
    options = analysis.options
    nodes = [n for n in analysis.layers if isinstance(n.layer, PATTERN_TYPES)]
    if not nodes:
        analysis.warnings.append("filter_patterns: the model has no Conv2D, SeparableConv2D or DepthwiseConv2D layer")
        return [Section(id="filter-patterns", kind="filter_patterns", title="Filter patterns",
                        blocks=(Text("This model has no convolutional layer whose filters can be visualised."),))]
    # Check every layer's filter choice before minutes of work.
    chosen = {n.path: choose_filters(int(analysis.layer_shapes[n.path][-1]), options.filters,
                                     options.filter_indices, n.path) for n in nodes}
    height, width = search_size(analysis.model, nodes[-1].path, analysis.loaded.input_shape, options.pattern_size)
    settings = PatternSettings(steps=options.steps, height=height, width=width, method=options.pattern_method,
                               seed=options.seed, directions=options.directions,
                               compute_dtype=search_dtype(analysis.layers, analysis.layer_shapes,
                                                          [n.path for n in nodes]))
    pixel_map = PixelMap.from_preprocessor(analysis.preprocessor)

    image_h, image_w = analysis.images.pixels.shape[1:3]
    area_scale = height * width / (image_h * image_w)
    patterns_per_layer = {path: len(filters) * len(settings.directions) for path, filters in chosen.items()}
    flops = {n.path: search_flops(analysis.layers, analysis.layer_shapes, n.path, area_scale)
             * patterns_per_layer[n.path] * settings.steps for n in nodes}
    elements = {n.path: search_elements(analysis.layers, analysis.layer_shapes, n.path, area_scale)
                * patterns_per_layer[n.path] * settings.steps for n in nodes}
    rate = matmul_rate(settings.compute_dtype) * 1e9 * SEARCH_EFFICIENCY
    predicted = {path: LAYER_OVERHEAD_SECONDS + flops[path] / rate + elements[path] * ELEMENT_SECONDS
                 for path in flops}
    analysis.progress("filter_patterns", (
        f"{len(nodes)} layers, {sum(patterns_per_layer.values())} patterns of {width}x{height} px, "
        f"{settings.steps} steps ({settings.method}, {settings.compute_dtype}); about "
        f"{_duration(sum(predicted.values()))}"))

    results: list[LayerPatterns] = []
    correction = 1.0
    spent = expected = 0.0
    for k, node in enumerate(nodes, start=1):
        left = correction * sum(predicted[n.path] for n in nodes[k - 1:])
        analysis.progress("filter_patterns", f"{node.path} ({k}/{len(nodes)}), about {_duration(left)} left")
        per_step = flops[node.path] / max(1, patterns_per_layer[node.path] * settings.steps)
        result = search_patterns(analysis.model, node.path, chosen[node.path], settings, pixel_map, per_step)
        results.append(result)
        # Correct the prediction by how far off it was so far: one small first layer (all tracing, no arithmetic)
        # alone would scale every later layer by its overhead.
        spent, expected = spent + result.seconds, expected + predicted[node.path]
        correction = spent / expected

    dead = [(r.layer, int(r.dead.sum()), len(r.filters)) for r in results if r.dead.any()]
    if dead:
        counts = ", ".join(f"{layer} {count}/{total}" for layer, count, total in dead)
        analysis.warnings.append(f"filter_patterns: dead filters (the search found no input that switches them on): "
                                 f"{counts}")

    total_seconds = sum(r.seconds for r in results)
    overview = Table(
        columns=("Layer", "Filters", "Dead", "Start", "Ascent", "Descent"),
        rows=tuple(
            (r.layer, str(len(r.filters)), str(int(r.dead.sum())), _fmt(float(r.start_activation.mean())),
             *(_fmt(float(r.direction(d).activation.mean())) if d in settings.directions else "-"
               for d in ("ascent", "descent")))
            for r in results
        ),
        caption="Mean activation over each layer's chosen filters, on the starting images and on the patterns.",
        row_links=tuple((("patterns", "#" + section_id("filter_patterns", analysis, r.layer)),) for r in results),
    )
    facts = Facts((
        ("Method", f"{settings.method}: {METHOD_TEXT[settings.method]}"),
        ("Steps", str(settings.steps)),
        ("Pattern size", f"{width}x{height} px"),
        ("Directions", ", ".join(settings.directions)),
        ("Seed", str(settings.seed)),
        ("Arithmetic", f"{settings.compute_dtype} search steps; every reported number re-evaluated in float32"),
    ))
    intro = Text(
        "Each pattern is an input image found by gradient ascent (or descent) on one filter's mean activation, "
        "starting from a faint random image. Its pixels stay inside the model's valid input range, so it is an "
        "image the model could be shown. Ascent shows what a filter responds to; descent what suppresses it."
    )
    sections = [Section(id="filter-patterns", kind="filter_patterns", title="Filter patterns",
                        blocks=(intro, facts, overview),
                        data={"method": settings.method, "steps": settings.steps, "size": [height, width],
                              "directions": list(settings.directions), "compute_dtype": settings.compute_dtype,
                              "seconds": round(total_seconds, 3)})]
    sections.extend(_layer_section(analysis, result, settings) for result in results)
    return sections
