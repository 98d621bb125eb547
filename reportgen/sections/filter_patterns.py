"""The `filter_patterns` sections: an overview, then per conv layer one grid per direction of the inputs that drive
each chosen filter up (ascent) or down (descent), with the activation each reached."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import numpy as np

from reportgen import figures, registry
from reportgen.analysis import Analysis
from reportgen.report import Facts, Figure, Section, SectionResult, Table, Text
from reportgen.sections.anchors import section_id
from reportgen.techniques.filter_patterns import (
    FLAG_ROBUST,
    FLAG_SATURATION,
    FLAG_SPECIFICITY,
    MIN_LAYER_SIZE,
    ROBUST_VIEWS,
    SATURATION_MARGIN,
    LayerPatterns,
    PatternJob,
    PatternSettings,
    PatternTarget,
    Scorecard,
    choose_filters,
    choose_targets,
    layer_sizes,
    plan_searches,
    score_layers,
    search_dtype,
    search_layers,
    search_size,
)
from reportgen.techniques.pattern_params import PixelMap

COLUMNS = 8
DEAD_GREY = 128


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _sizes_text(layer_settings: dict[str, PatternSettings]) -> str:
    """"32x32 px" when every layer's canvas is that, else "32x32 to 128x128 px"."""
    sizes = sorted({(s.width, s.height) for s in layer_settings.values()}, key=lambda size: size[0] * size[1])
    (low_w, low_h), (high_w, high_h) = sizes[0], sizes[-1]
    return f"{low_w}x{low_h} px" if sizes[0] == sizes[-1] else f"{low_w}x{low_h} to {high_w}x{high_h} px"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def pattern_tiles(analysis: Analysis, inputs: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Model inputs (F, H, W, C) -> display tiles (F, H, W, 3) uint8; dead filters become plain grey."""
    pixels = np.clip(analysis.preprocessor.invert(inputs), 0, 255).round().astype(np.uint8)
    if pixels.shape[3] == 1:
        pixels = np.repeat(pixels, 3, axis=3)
    pixels[dead] = DEAD_GREY
    return pixels


def _grid(analysis: Analysis, result: LayerPatterns, direction: str,
          shown: dict[tuple[str, str], tuple[tuple[int, ...], np.ndarray]]) -> np.ndarray:
    """The grid of one direction's patterns; each filter's (first) tile also goes into `shown`, for the dataset
    examples, which show it beside the natural images that drive the filter."""
    k = result.diversity
    dead = np.repeat(result.dead, k)
    tiles = pattern_tiles(analysis, result.direction(direction).inputs, dead)
    shown[(result.layer, direction)] = (result.filters, tiles[::k])
    zoom = max(1, round(128 / max(tiles.shape[1:3])))  # small patterns are enlarged to ~128 px, pixels kept crisp
    tiles = np.stack([figures.upscale(tile, zoom) for tile in tiles])
    names = [str(f) if k == 1 else f"{f}.{v + 1}" for f in result.filters for v in range(k)]
    labels = [f"{name} dead" if off else name for name, off in zip(names, dead, strict=True)]
    columns = COLUMNS if k == 1 else max(k, COLUMNS // k * k)  # a filter's patterns side by side
    return figures.fit_width(figures.tile_grid(tiles, columns=columns, pad=4, labels=labels))


def _display(analysis: Analysis, inputs: np.ndarray) -> np.ndarray:
    """Model inputs -> display pixels in [0, 1] (what the tiles show, before rounding)."""
    return np.asarray(analysis.preprocessor.invert(inputs), np.float32) / 255.0


def target_text(target: PatternTarget) -> str:
    """Which layer's output a layer's patterns drive, in words."""
    if target.output == target.layer:
        return f"{target.layer}'s own output (after its activation)"
    chain = " → ".join((target.layer, *target.chain))
    if target.linear:
        return (f"{target.output} ({chain}), linear in the input: no non-linearity follows, so its mean is "
                "highest on a flat field at the ends of the range, and the patterns show that")
    return f"{target.output} ({chain}): the block's output after its normalisation and activation"


def _score_text(value: float, share: bool = True) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{value:.0%}" if share else f"{value:.2f}"


def _layer_section(analysis: Analysis, result: LayerPatterns, settings: PatternSettings,
                   scores: dict[str, Scorecard], entries: list[dict], shown: dict) -> Section:
    """One layer's section; its report.json entries are added to `entries`, its tiles to `shown` (`_grid`)."""
    path = result.layer
    sid = section_id("filter_patterns", analysis, path)
    slug = analysis.layer_slugs[path]
    target = result.target or PatternTarget(path, path)
    blocks: list = [Text(f"These patterns drive {target_text(target)}.")]
    arrays: dict[str, np.ndarray] = {}
    k = result.diversity
    for patterns in result.patterns:
        verb = "raises" if patterns.direction == "ascent" else "lowers"
        blocks.append(Figure(
            key=f"{sid}-{patterns.direction}",
            title=f"{path}: {patterns.direction}",
            caption=(f"For each filter (number below the tile), the {settings.width}x{settings.height} image that "
                     f"{verb} the mean of its channel of {target.output} most after {settings.steps} steps"
                     + (f"; {k} patterns per filter (filter.pattern), kept apart by a diversity penalty" if k > 1
                        else "") + ". Grey tiles marked dead are filters the search could not switch on."),
            pixels=analysis.encode(_grid(analysis, result, patterns.direction, shown)),
        ))
        key = f"filter_patterns.{slug}.{patterns.direction}"
        if analysis.options.save_arrays:
            arrays[key] = patterns.inputs
        card = scores[patterns.direction]
        for index in range(len(patterns.inputs)):
            f, variant = result.filters[index // k], index % k
            entries.append({
                "layer": path, "target": target.output, "filter": f, "direction": patterns.direction,
                **({"variant": variant} if k > 1 else {}),
                "activation": float(patterns.activation[index]),
                "start_activation": float(result.start_activation[index // k]),
                "pre_activation": float(patterns.pre_activation[index]),
                "start_pre_activation": float(result.start_pre_activation[index // k]),
                # Like every section: a key only when arrays.npz is written, so it never points at nothing.
                "array_key": key if analysis.options.save_arrays else None, "array_index": index,
                "dead": bool(result.dead[index // k]),
                "scores": {"activation": float(card.activation[index]), "robust": _finite(card.robust[index]),
                           "specificity": _finite(card.specificity[index]),
                           "saturation": float(card.saturation[index]),
                           "flags": list(card.flags(index, patterns.direction))},
            })
    by_direction = {p.direction: p for p in result.patterns}
    rows = []
    for index in range(len(result.filters) * k):
        f = result.filters[index // k]
        reached = [_fmt(by_direction[d].activation[index]) if d in by_direction else "-" for d in
                   ("ascent", "descent")]
        main = scores.get("ascent") or next(iter(scores.values()))
        direction = "ascent" if "ascent" in scores else next(iter(scores))
        flags = (("dead",) if result.dead[index // k] else ()) + main.flags(index, direction)
        rows.append((str(f) if k == 1 else f"{f}.{index % k + 1}", _fmt(result.start_activation[index // k]),
                     *reached, _score_text(main.robust[index]), _score_text(main.specificity[index]),
                     _score_text(main.saturation[index]), ", ".join(flags)))
    blocks.append(Table(
        columns=("Filter", "Start", "Ascent", "Descent", "Robust", "Specific", "Saturated", "Flags"),
        rows=tuple(rows),
        caption=(f"Mean activation of each filter (its channel of {target.output}) on the starting image and on "
                 f"each pattern, evaluated in float32 on the stored image, and the {direction} pattern's scorecard: "
                 f"robust, the share of its gain over the start that it keeps on average over {len(ROBUST_VIEWS)} "
                 "fixed views (rotations up to 5°, scales 0.9-1.1, shifts up to 6%), from 0 (the views undo the "
                 "search) to 100%; specific, the share of the other "
                 "filters' patterns that drive this filter less; saturated, the share of pixel values within "
                 f"{SATURATION_MARGIN:.0%} of the range's ends. Flagged (ascent): fragile (robust below "
                 f"{FLAG_ROBUST:.0%}), unspecific (below {FLAG_SPECIFICITY:.0%}), saturated (above "
                 f"{FLAG_SATURATION:.0%}; not on the first conv layer, which is linear in the pixels up to its "
                 "activation, so its best image is two-level and saturated by nature)."),
    ))
    node = next(n for n in analysis.layers if n.path == path)
    return Section(
        id=sid, kind="filter_patterns", title=f"Filter patterns: {path}", blocks=tuple(blocks), layer=path,
        data={"type": node.type_name, "filters": list(result.filters), "dead": int(result.dead.sum()),
              "target": target.output, "chain": list(target.chain), "linear": target.linear,
              "diversity": k, "size": [settings.height, settings.width], "seconds": round(result.seconds, 3),
              "gflop": round(result.flops / 1e9, 3)},
        arrays=arrays,
    )


def pattern_layers(analysis: Analysis) -> list[PatternTarget]:
    """The report's pattern layers (`targets.choose_targets` with --layers)."""
    return choose_targets(analysis.model, analysis.layers, analysis.layer_shapes, analysis.options.layers)


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    options = analysis.options
    targets = pattern_layers(analysis)
    nodes = [next(n for n in analysis.layers if n.path == t.layer) for t in targets]
    by_layer = {t.layer: t for t in targets}
    if not nodes:
        return SectionResult((Section(id="filter-patterns", kind="filter_patterns", title="Filter patterns",
                                      blocks=(Text("This model has no convolutional layer whose filters can be "
                                                   "visualised."),)),),
                             ("filter_patterns: the model has no Conv2D, SeparableConv2D or DepthwiseConv2D layer",))
    # Check every layer's filter choice before minutes of work.
    chosen = {t.layer: choose_filters(int(analysis.layer_shapes[t.output][-1]), options.filters,
                                      options.filter_indices, t.layer) for t in targets}
    deepest = max(targets, key=lambda t: [n.path for n in analysis.layers].index(t.output)).output
    height, width = search_size(analysis.model, deepest, analysis.loaded.input_shape, options.pattern_size)
    settings = PatternSettings(steps=options.steps, height=height, width=width, method=options.pattern_method,
                               seed=options.seed, directions=options.directions, diversity=options.pattern_diversity,
                               compute_dtype=search_dtype(analysis.layers, analysis.layer_shapes,
                                                          [n.path for n in nodes]))
    pixel_map = PixelMap.from_preprocessor(analysis.preprocessor)
    # Each layer's canvas: twice its receptive field (`layer_sizes`), unless --pattern-size sets one for all.
    channels = analysis.loaded.input_shape[2]
    outputs = [t.output for t in targets]
    sizes = layer_sizes(analysis.model, outputs, (height, width), channels, analysis.receptive_fields(outputs)) \
        if options.pattern_size is None else {}
    layer_settings = {t.layer: settings if options.pattern_size is not None else dataclasses.replace(
        settings, height=sizes[t.output][0], width=sizes[t.output][1]) for t in targets}

    plan = plan_searches(analysis.layers, analysis.layer_shapes, targets, chosen, layer_settings,
                         analysis.images.pixels.shape[1:3])
    analysis.progress("filter_patterns", (
        f"{len(nodes)} layers, {sum(plan.patterns.values())} patterns of {_sizes_text(layer_settings)}, "
        f"{settings.steps} steps ({settings.method}, {settings.compute_dtype}); about {_duration(plan.total_seconds)}"))
    found: dict[str, LayerPatterns] = {}
    scores: dict[str, dict[str, Scorecard]] = {}
    correction = 1.0
    spent = expected = 0.0
    for k, (group, predicted) in enumerate(zip(plan.groups, plan.seconds, strict=True), start=1):
        left = correction * sum(plan.seconds[k - 1:])
        analysis.progress("filter_patterns", f"{', '.join(group)} ({k}/{len(plan.groups)}), about "
                          f"{_duration(left)} left", expect_seconds=correction * predicted)
        started = time.perf_counter()
        jobs = [PatternJob(path, chosen[path], by_layer[path],
                           plan.flops[path] / max(1, plan.patterns[path] * settings.steps)) for path in group]
        steps = analysis.progress.counter("filter_patterns", 1, unit="steps", what=", ".join(group))
        searched = search_layers(analysis.model, jobs, layer_settings[group[0]], pixel_map, progress=steps)
        steps.close()
        cards = score_layers(analysis.model, searched, [{d.direction: _display(analysis, d.inputs)
                                                         for d in result.patterns} for result in searched],
                             settings.compute_dtype)
        for result, card in zip(searched, cards, strict=True):
            found[result.layer], scores[result.layer] = result, card
        # Correct the prediction by how far off it was so far: one small first search (all tracing, no arithmetic)
        # alone would scale every later one by its overhead.
        spent, expected = spent + time.perf_counter() - started, expected + predicted
        correction = spent / expected
    results = [found[node.path] for node in nodes]

    warnings: list[str] = []
    dead = [(r.layer, int(r.dead.sum()), len(r.filters)) for r in results if r.dead.any()]
    if dead:
        counts = ", ".join(f"{layer} {count}/{total}" for layer, count, total in dead)
        warnings.append(f"filter_patterns: dead filters (the search found no input that switches them on): {counts}")

    flagged = []
    for r in results:
        direction = "ascent" if "ascent" in scores[r.layer] else r.patterns[0].direction
        card = scores[r.layer][direction]
        bad = sum(1 for i in range(len(card.activation)) if card.flags(i, direction))
        if bad:
            flagged.append(f"{r.layer} {bad}/{len(card.activation)}")
    if flagged:
        warnings.append("filter_patterns: patterns that score badly (fragile, unspecific or saturated; see each "
                        f"layer's scorecard): {', '.join(flagged)}")
    linear = [t.layer for t in targets if t.linear]
    if linear:
        warnings.append("filter_patterns: no non-linearity follows " + ", ".join(linear) + "; their patterns "
                        "maximise a mean that is linear in the input (flat fields are its optimum)")

    total_seconds = sum(r.seconds for r in results)
    overview = Table(
        columns=("Layer", "Drives", "Filters", "Dead", "Start", "Ascent", "Descent"),
        rows=tuple(
            (r.layer, by_layer[r.layer].output, str(len(r.filters)), str(int(r.dead.sum())),
             _fmt(float(r.start_activation.mean())),
             *(_fmt(float(r.direction(d).activation.mean())) if d in settings.directions else "-"
               for d in ("ascent", "descent")))
            for r in results
        ),
        caption=("Mean activation over each layer's chosen filters, on the starting images and on the patterns. "
                 "Drives: the layer whose output the patterns maximise (a conv followed by batch norm and an "
                 "activation: the block's output after them, what the filter's response really is)."),
        row_links=tuple((("patterns", "#" + section_id("filter_patterns", analysis, r.layer)),) for r in results),
    )
    facts = Facts((
        ("Method", f"{settings.method}: {registry.pattern_method(settings.method).summary}"),
        ("Steps", str(settings.steps)),
        ("Patterns per filter", str(settings.diversity)),
        ("Pattern size", f"{width}x{height} px" if options.pattern_size is not None else
         f"{_sizes_text(layer_settings)}: twice each layer's receptive field (at least {MIN_LAYER_SIZE} px, at "
         f"most {width}x{height}); a filter sees no further, and a larger canvas repeats the same texture"),
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
                              "diversity": settings.diversity,
                              "seconds": round(total_seconds, 3)})]
    entries: list[dict] = []
    shown: dict[tuple[str, str], tuple[tuple[int, ...], np.ndarray]] = {}
    sections.extend(_layer_section(analysis, result, layer_settings[result.layer], scores[result.layer], entries,
                                   shown) for result in results)
    return SectionResult(tuple(sections), tuple(warnings), manifest={"filter_patterns": entries},
                         shared={"pattern_tiles": shown})
