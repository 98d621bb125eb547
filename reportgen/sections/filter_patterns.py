"""The `filter_patterns` sections: an overview, then per conv layer one grid per direction of the inputs that drive
each chosen filter up (ascent) or down (descent), with the activation each reached."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from reportgen import figures, registry
from reportgen.analysis import Analysis
from reportgen.graph import layer_sources
from reportgen.layer_kinds import PATTERN_TYPES, Linearity, activation_name, describe_layer, image_linearity
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
from reportgen.techniques.filter_patterns.targets import feeds_class_scores, first_conv, layer_consumers_from
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


def filter_name(index: int, classes: Mapping[int, str] | None) -> str:
    """A filter's label: its class's name where the filters are the class scores (`class_labels`), else its index."""
    return classes[index] if classes and index in classes else str(index)


def _grid(analysis: Analysis, result: LayerPatterns, direction: str,
          shown: dict[tuple[str, str], tuple[tuple[int, ...], np.ndarray]],
          classes: Mapping[int, str] | None = None) -> np.ndarray:
    """The grid of one direction's patterns, labelled by `filter_name`; each filter's (first) tile also goes into
    `shown`, for the dataset examples, which show it beside the natural images that drive the filter."""
    k = result.diversity
    dead = np.repeat(result.dead, k)
    tiles = pattern_tiles(analysis, result.direction(direction).inputs, dead)
    shown[(result.layer, direction)] = (result.filters, tiles[::k])
    zoom = max(1, round(128 / max(tiles.shape[1:3])))  # small patterns are enlarged to ~128 px, pixels kept crisp
    tiles = np.stack([figures.upscale(tile, zoom) for tile in tiles])
    names = [filter_name(f, classes) if k == 1 else f"{filter_name(f, classes)}.{v + 1}" for f in result.filters
             for v in range(k)]
    labels = [f"{name} dead" if off else name for name, off in zip(names, dead, strict=True)]
    columns = COLUMNS if k == 1 else max(k, COLUMNS // k * k)  # a filter's patterns side by side
    return figures.fit_width(figures.tile_grid(tiles, columns=columns, pad=4, labels=labels))


def _display(analysis: Analysis, inputs: np.ndarray) -> np.ndarray:
    """Model inputs -> display pixels in [0, 1] (what the tiles show, before rounding)."""
    return np.asarray(analysis.preprocessor.invert(inputs), np.float32) / 255.0


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _chain_steps(target: PatternTarget, layers: Mapping[str, Any]) -> str:
    """What the chain from a conv to the output its patterns drive does, in words: "batch normalisation, the
    residual add and its relu activation (conv2_block1_out)"."""
    import keras

    steps = []
    for path in target.chain:
        layer = layers.get(path)
        name = activation_name(layer) if layer is not None else None
        if isinstance(layer, keras.layers.BatchNormalization):
            steps.append("batch normalisation")
        elif isinstance(layer, keras.layers.Add):
            steps.append("the residual add")
        elif name is not None:
            steps.append(f"its {name} activation ({path})")
    return _listed(list(dict.fromkeys(steps))) if steps else "layers that keep its channels"


def image_text(linearity: Linearity, layers: Mapping[str, Any], output: str) -> str:
    """What the optimised mean is as a function of the image, in words, from the graph (`image_linearity`)."""
    cause = linearity.cause or ""
    if linearity.linear:
        return ("It is an affine function of the image (only affine layers lie between the input and it), so its "
                "mean is highest with every pixel at an end of its range: its patterns are two-level images.")
    if linearity.linear is None:
        return (f"Whether it is linear in the image is not known: {describe_layer(cause, layers.get(cause))} lies "
                "between the input and it, a layer whose linearity reportgen does not know.")
    if cause == output:
        return "Its activation makes it non-linear in the image."
    return f"It is not linear in the image: the non-linear {describe_layer(cause, layers.get(cause))} lies between."


def target_text(target: PatternTarget, layers: Mapping[str, Any], sources: Mapping[str, tuple[str, ...]]) -> str:
    """Which layer's output a layer's patterns drive, whether that has an activation and whether it is linear in
    the image, in words. Every claim is read from the layer graph: the layers' own activations (`activation_name`),
    the chain `pattern_target` followed and `graph.layer_sources` (`image_linearity`)."""
    layer = layers[target.layer]
    if target.output == target.layer:
        own = activation_name(layer)
        if not isinstance(layer, PATTERN_TYPES):
            what = f"{target.layer}'s own output ({type(layer).__name__})"
        elif own is not None:
            what = f"{target.layer}'s own output, after its {own} activation"
        else:
            what = f"{target.layer}'s own output, which has no activation: an affine function of the layer's input"
    else:
        chain = " → ".join((target.layer, *target.chain))
        what = f"{target.output} ({chain}): the filter's response after {_chain_steps(target, layers)}"
        if target.linear:
            following = layer_consumers_from(sources).get(target.output, [])
            after = ", ".join(describe_layer(path, layers.get(path)) for path in following)
            what += (f"; no activation follows it directly{f': next comes {after}' if after else ''}, so it is an "
                     "affine function of the layer's input")
    return f"{what}. {image_text(image_linearity(sources, layers, target.output), layers, target.output)}"


def layer_sources_of(analysis: Analysis) -> dict[str, tuple[str, ...]]:
    """`graph.layer_sources` of the report's model, measured once per report."""
    height, width = analysis.size
    shape = (height, width, analysis.loaded.input_shape[2])
    return analysis.shared("layer_sources", lambda: layer_sources(analysis.model, shape))


def class_labels(analysis: Analysis, path: str) -> dict[int, str] | None:
    """Filter index -> class name for a conv whose filters are the class scores (`feeds_class_scores`), else
    None: its patterns and examples are then labelled with the class each filter scores, not a number."""
    layers = {node.path: node.layer for node in analysis.layers}
    names = analysis.class_names.names
    if not feeds_class_scores(layer_sources_of(analysis), layers, analysis.layer_shapes, path, len(names)):
        return None
    return dict(enumerate(names))


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
    layers = {node.path: node.layer for node in analysis.layers}
    sources = layer_sources_of(analysis)
    classes = class_labels(analysis, path)
    blocks: list = [Text(f"These patterns drive {target_text(target, layers, sources)}")]
    if classes:
        blocks.append(Text(f"{path}'s {len(classes)} filters are the class scores: filter i, pooled over the map, "
                           "is the score of class i, so each pattern is labelled with its class."))
    arrays: dict[str, np.ndarray] = {}
    k = result.diversity
    for patterns in result.patterns:
        verb = "raises" if patterns.direction == "ascent" else "lowers"
        blocks.append(Figure(
            key=f"{sid}-{patterns.direction}",
            title=f"{path}: {patterns.direction}",
            caption=(f"For each filter ({'class' if classes else 'number'} below the tile), the "
                     f"{settings.width}x{settings.height} image that "
                     f"{verb} the mean of its channel of {target.output} most after {settings.steps} steps"
                     + (f"; {k} patterns per filter (filter.pattern), kept apart by a diversity penalty" if k > 1
                        else "") + ". Grey tiles marked dead are filters the search could not switch on."),
            pixels=analysis.encode(_grid(analysis, result, patterns.direction, shown, classes)),
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
        name = f"{f} ({classes[f]})" if classes else str(f)
        rows.append((name if k == 1 else f"{name}.{index % k + 1}", _fmt(result.start_activation[index // k]),
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
                 f"{FLAG_SATURATION:.0%}; {_first_conv_text(first_conv(analysis.layers), layers, sources)})."),
    ))
    node = next(n for n in analysis.layers if n.path == path)
    return Section(
        id=sid, kind="filter_patterns", title=f"Filter patterns: {path}", blocks=tuple(blocks), layer=path,
        data={"type": node.type_name, "filters": list(result.filters), "dead": int(result.dead.sum()),
              "target": target.output, "chain": list(target.chain), "linear": target.linear,
              "linear_in_image": image_linearity(sources, layers, target.output).linear,
              **({"class_names": [classes[f] for f in result.filters]} if classes else {}),
              "diversity": k, "size": [settings.height, settings.width], "seconds": round(result.seconds, 3),
              "gflop": round(result.flops / 1e9, 3)},
        arrays=arrays,
    )


def _first_conv_text(first: str | None, layers: Mapping[str, Any], sources: Mapping[str, tuple[str, ...]]) -> str:
    """Why the scorecard never flags the first conv layer's patterns as saturated, as far as the graph shows it."""
    if first is None:
        return "never on the first conv layer"
    if image_linearity(sources, layers, first, before_activation=True).linear:
        return (f"never on the first conv layer, {first}, which is linear in the pixels up to its activation, so its "
                "best image is two-level and saturated by nature")
    return f"never on the first conv layer, {first}, whose best image is taken to be two-level"


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
    layers = {node.path: node.layer for node in analysis.layers}
    sources = layer_sources_of(analysis)
    linear = [t.layer for t in targets if image_linearity(sources, layers, t.output).linear]
    if linear:
        warnings.append("filter_patterns: only affine layers lie between the image and what the patterns of "
                        + ", ".join(linear) + " drive, so their best images are two-level (every pixel at an end of "
                        "its range), whatever the filters learned")

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
