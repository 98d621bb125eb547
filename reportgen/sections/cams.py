"""The `cam` sections: an overview comparing the methods and how far to trust each, then one section per method
with every image's maps for its classes (top prediction, label, --classes), deletion / insertion AUC beside each
map, and the model-randomisation check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen import figures
from reportgen.analysis import Analysis
from reportgen.precision import ranking_dtype
from reportgen.report import Facts, Figure, Section, SectionResult, Table, Text
from reportgen.sections.anchors import CAM_IMAGES, cam_section_id, image_maps_id
from reportgen.sections.predictions import PredictionPlan, prediction_plan, shared
from reportgen.techniques.cam_trust import SANITY_THRESHOLD
from reportgen.techniques.cams import (
    METHODS,
    CamInputs,
    CamResults,
    CamSettings,
    Heatmap,
    TargetLayer,
    curve_batch_size,
    explain,
    faithfulness,
    same_maps,
)
from reportgen.techniques.cams.target_layer import alternative_layers

TILE = 128  # px, longer side of every image tile
COLORMAP = "jet"
MAX_IMAGES_SHOWN = 32  # per method; every map is still in the table, report.json and arrays.npz
SANITY_IMAGES = 8  # images whose maps are recomputed on the freshly initialised model
HOW_TO_READ = ("Colours: jet, red high and blue low, each map scaled to its own maximum. Deletion AUC (lower is "
               "better): the area under the class probability while the pixels the map ranks highest are replaced by "
               "the image's mean colour; insertion AUC (higher is better): the same while they are put back into a "
               "blurred copy. 'Random' is the same measurement with a random map of the same resolution.")


@dataclass(frozen=True)
class CamBundle:
    """Everything the cam and class sections show: predictions and targets, the layer, the maps."""

    plan: PredictionPlan
    layer: TargetLayer | None
    results: CamResults | None
    skipped: tuple[str, ...]  # layer methods left out because the model has no spatial layer
    warnings: tuple[str, ...] = ()  # what the maps' checks found, reported by whichever section shows them


def cam_bundle(analysis: Analysis) -> CamBundle:
    return shared(analysis, "cams", lambda: _compute(analysis))


def _compute(analysis: Analysis) -> CamBundle:
    plan = prediction_plan(analysis)
    options = analysis.options
    layer = analysis.cam_target
    methods = list(dict.fromkeys(options.cam_methods))
    skipped: tuple[str, ...] = ()
    warnings: list[str] = []
    if layer is None:
        skipped = tuple(m for m in methods if METHODS[m].resolution == "layer")
        methods = [m for m in methods if m not in skipped]
        if skipped:
            warnings.append(
                f"cam: the model has no convolutional layer with a spatial output, so "
                f"{', '.join(METHODS[m].label for m in skipped)} cannot run; choose a layer with --cam-layer or use "
                "saliency, smoothgrad or integrated_gradients")
    if not methods:
        return CamBundle(plan, layer, None, skipped, tuple(warnings))
    channels = analysis.loaded.input_shape[2]
    baseline = analysis.preprocessor.apply(np.zeros((1, 1, channels), np.float32))[0, 0]
    low, high = analysis.preprocessor.valid_range()
    try:
        fresh = analysis.fresh_model
    except Exception as exc:  # a custom layer that cannot be cloned: the maps still come, without the check
        warnings.append(f"cam: no sanity check, the model could not be re-initialised ({exc})")
        fresh = None
    batch_size = options.batch_size or 16
    results = explain(
        analysis.model,
        CamInputs(analysis.inputs, plan.targets, baseline, float(np.max(high - low)),
                  probabilities=plan.predictions.probabilities.values),
        methods, layer, plan.to_probabilities,
        CamSettings(batch_size=batch_size, seed=options.seed,
                    curves_dtype=ranking_dtype(analysis.model, analysis.layer_shapes),
                    # --batch-size bounds every pass's memory; else the curves take what their activations allow
                    curve_batch_size=None if options.batch_size else curve_batch_size(analysis.layer_shapes,
                                                                                       batch_size)),
        fresh_model=fresh, sanity_images=SANITY_IMAGES, progress=lambda message: analysis.progress("cam", message),
    )
    for method, check in results.sanity.items():
        if check.status == "flagged":
            warnings.append(
                f"cam: {METHODS[method].label} maps barely change when the model's weights are re-initialised "
                f"(rank correlation {check.correlation:.2f}); they show the image more than what the model learned")
        elif check.flagged:
            warnings.append(f"cam: {METHODS[method].label} sanity check {check.describe()}")
    where = f" at {layer.path}" if layer else ""
    for method, scores in faithfulness(results).items():
        if not scores.beats_random:
            warnings.append(
                f"cam: {METHODS[method].label}{where if METHODS[method].resolution == 'layer' else ''} does no better "
                f"than a random map (deletion AUC {scores.deletion_auc:.3f} vs {scores.random_deletion_auc:.3f} "
                f"random, insertion {scores.insertion_auc:.3f} vs {scores.random_insertion_auc:.3f}): its maps do "
                "not show what the model uses"
                + (f"; {layer_advice(analysis, layer, looks_untrained(analysis))}"
                   if layer and METHODS[method].resolution == "layer" else ""))
    for group, difference in same_maps(results):
        warnings.append(
            f"cam: {', '.join(METHODS[m].label for m in group)} give the same maps (largest difference "
            f"{difference:.1g} of a map's maximum){where}: they add no independent evidence")
    return CamBundle(plan, layer, results, skipped, tuple(warnings))


def cam_layer_advice(alternatives: Sequence[tuple[str, tuple[int, int]]], untrained: bool = False) -> str:
    """What to do when a layer method's maps do no better than random, as a clause: the weights when they look
    untrained (no layer helps then), else the layers to try (`target_layer.alternative_layers`) with their maps."""
    if untrained:
        return "the weights look untrained (see the verdict), so no layer choice will help"
    if not alternatives:
        return "no other block output has a spatial map to try with --cam-layer"
    named = [f"{path} ({h}x{w})" for path, (h, w) in alternatives]
    return "try --cam-layer " + (named[0] if len(named) == 1 else f"{', '.join(named[:-1])} or {named[-1]}")


def looks_untrained(analysis: Analysis) -> bool:
    """The verdict's reading of the weights (`verdict.untrained_evidence`), so the advice names the cause."""
    from reportgen.verdict import untrained_evidence

    evidence = untrained_evidence(analysis)
    return bool(evidence is not None and evidence.looks_untrained)


def trusted_methods(analysis: Analysis, bundle: CamBundle) -> tuple[str, ...]:
    """The methods whose maps the report shows as evidence of what the model uses: each beats a random map and
    passes the sanity check (`cam_trust.trustworthy`), and the model is not untrained (on random weights a map
    can beat a random map by chance and differ from another random draw's, and still show nothing learned)."""
    from reportgen.techniques.cam_trust import trustworthy

    results = bundle.results
    if results is None or looks_untrained(analysis):
        return ()
    scores = faithfulness(results)
    return tuple(m for m in results.methods
                 if trustworthy(scores[m].beats_random, results.sanity[m].status if m in results.sanity else None))


def layer_advice(analysis: Analysis, layer: TargetLayer, untrained: bool = False) -> str:
    """`cam_layer_advice` for the report's model and CAM layer. `untrained`: the verdict's finding that the weights
    look random, for the caller that has it."""
    return cam_layer_advice(alternative_layers(analysis.layers, analysis.layer_shapes, layer.path,
                                               analysis.block_outputs, classes=analysis.output_units), untrained)


# ------------------------------------------------------------------------------------------- shared drawing


def unit(raw: np.ndarray) -> np.ndarray | None:
    """The map scaled to [0, 1] by its maximum; None when it has no positive value (nothing to show)."""
    peak = float(np.max(raw)) if raw.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        return None
    return np.clip(np.nan_to_num(raw / peak), 0.0, 1.0).astype(np.float32)


def image_tile(analysis: Analysis, image: int) -> np.ndarray:
    return figures.fit_box(analysis.display_images[image], TILE)


def overlay_tile(tile: np.ndarray, raw: np.ndarray) -> np.ndarray:
    scaled = unit(raw)
    if scaled is None:  # no positive evidence: the image greyed out
        return (0.35 * tile.astype(np.float32) + 0.65 * 200).astype(np.uint8)
    return figures.overlay_heatmap(tile, scaled, COLORMAP)


def raw_tile(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    scaled = unit(raw)
    return figures.hatched(*size) if scaled is None else figures.heatmap_tile(scaled, size, COLORMAP)


def method_section_id(analysis: Analysis, bundle: CamBundle, method: str) -> str:
    at_layer = METHODS[method].resolution == "layer" and bundle.layer is not None
    return cam_section_id(analysis, bundle.layer.path if at_layer else None, method)


def map_layer(bundle: CamBundle, method: str) -> str:
    """Where a method's maps live: the target layer's path, or `input` for input attributions."""
    return bundle.layer.path if METHODS[method].resolution == "layer" and bundle.layer else "input"


def array_key(section: str, image_id: str, class_index: int) -> str:
    return f"{section}.{image_id}.class-{class_index}"


# ---------------------------------------------------------------------------------------------- sections


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    bundle = cam_bundle(analysis)
    results = bundle.results
    if results is None:
        text = ("No class activation map was computed: "
                + ("the model has no spatial layer for the chosen methods." if bundle.skipped else "no method chosen."))
        return SectionResult((Section(id="cam", kind="cam", title="Class activation maps", blocks=(Text(text),)),),
                             bundle.warnings)
    sections = [_overview(analysis, bundle, results)]
    manifest: list[dict[str, Any]] = []
    for method in results.methods:
        sections.append(_method_section(analysis, bundle, results, method, manifest))
    sections.append(_images_section(analysis, bundle, results))
    return SectionResult(tuple(sections), bundle.warnings, manifest={"heatmaps": manifest})


def _images_section(analysis: Analysis, bundle: CamBundle, results: CamResults) -> Section:
    """Every detail image once: its prediction and, per class explained, every method's map side by side with
    its deletion and insertion AUC."""
    by_image: dict[int, list[Heatmap]] = {}
    for method in results.methods:
        for heatmap in results.for_method(method):
            by_image.setdefault(heatmap.image, []).append(heatmap)
    shown = sorted(by_image)[:MAX_IMAGES_SHOWN]
    blocks: list = [Text("One row per class explained (the top prediction, the label when it differs, and "
                         "--classes): the image, then each method's map over it, with its deletion (lower is "
                         "better) and insertion (higher is better) AUC. " + HOW_TO_READ)]
    if len(by_image) > len(shown):
        blocks.append(Text(f"Figures for the first {len(shown)} of {len(by_image)} images; each method's table, "
                           "report.json and arrays.npz (--save-arrays) hold every map."))
    blocks += [_image_row(analysis, bundle, results, image, by_image[image]) for image in shown]
    return Section(id=CAM_IMAGES, kind="cam", title="Maps per image", blocks=tuple(blocks))


def _image_row(analysis: Analysis, bundle: CamBundle, results: CamResults, image: int, maps: list[Heatmap]
               ) -> Figure:
    """The image's maps, a row per class explained; for the images of the sanity check, under its top class's row
    the same maps from the freshly initialised model (a trustworthy method's maps change)."""
    names = analysis.class_names.names
    source = analysis.images.sources[image]
    tile = image_tile(analysis, image)
    by_class: dict[int, dict[str, Heatmap]] = {}
    for heatmap in maps:
        by_class.setdefault(heatmap.target.class_index, {})[heatmap.method] = heatmap
    tiles, labels, parts = [], [], []
    for class_index, per_method in by_class.items():
        first = next(iter(per_method.values()))
        tiles.append(tile)
        labels.append(f"{names[class_index]}\np = {first.probability:.0%}")
        scores = []
        for method in results.methods:
            heatmap = per_method.get(method)
            if heatmap is None:
                tiles.append(figures.hatched(*tile.shape[:2]))
                labels.append(f"{METHODS[method].label}: none")
                continue
            tiles.append(overlay_tile(tile, heatmap.raw))
            labels.append(f"{METHODS[method].label}\ndel {heatmap.deletion_auc:.2f} ins {heatmap.insertion_auc:.2f}")
            empty = ", no positive evidence (greyed)" if unit(heatmap.raw) is None else ""
            scores.append(f"{METHODS[method].label} deletion {heatmap.deletion_auc:.3f} (random "
                          f"{heatmap.random_deletion_auc:.3f}), insertion {heatmap.insertion_auc:.3f} (random "
                          f"{heatmap.random_insertion_auc:.3f}){empty}")
        parts.append(f"{names[class_index]} ({', '.join(first.target.reasons)}, p = {first.probability:.1%}): "
                     + "; ".join(scores))
        if class_index == next(iter(by_class)):
            fresh_row = _fresh_row(bundle, results, image, class_index, tile)
            if fresh_row:
                tiles += [figures.hatched(*tile.shape[:2]), *fresh_row]
                labels += ["fresh model", *(f"{METHODS[m].label}\nfresh model" for m in results.methods)]
                parts.append("second row: the same maps from the freshly initialised model (sanity check)")
    labelled = f"Label {source.label}. " if source.label else ""
    caption = labelled + ". ".join(parts) + "."
    return Figure(key=image_maps_id(analysis, image), title=source.name, caption=caption,
                  pixels=analysis.encode(figures.fit_width(figures.tile_grid(
                      tiles, columns=1 + len(results.methods), labels=labels))))


def _overview(analysis: Analysis, bundle: CamBundle, results: CamResults) -> Section:
    layer = bundle.layer
    facts = []
    if layer is not None:
        h, w, k = layer.shape[1:]
        facts.append(("Target layer", f"{layer.path} ({layer.type_name}, {h}x{w}x{k}): {layer.reason}"))
    requested = ", ".join(analysis.class_names.names[c] for c in bundle.plan.requested)
    facts += [
        ("Scores", results.head.description),
        ("Classes per image", "the top prediction, the label when it is a class"
                              + (f", and the classes asked for with --classes ({requested})" if requested else "")),
        ("Maps", f"{len(results.heatmaps)} ({len(results.methods)} methods)"),
        ("Trust", f"deletion / insertion AUC over {results.steps} steps for every map; model randomisation on "
                  f"{results.sanity_images} images per method"
                  + ("; the curves' forward passes in bfloat16 (float32 accumulation; this CPU has native bfloat16 "
                     "and the model enough arithmetic to gain): their areas differ from float32's by 0.001 on average, "
                     "0.01 at most, on the models measured"
                     if results.curves_dtype == "bfloat16" else "")),
    ]
    rows, links, data = [], [], []
    scores = faithfulness(results)
    identical = {m: group for group, _ in same_maps(results) for m in group}
    for method in results.methods:
        faith = scores[method]
        check = results.sanity.get(method)
        same = [METHODS[m].label for m in identical.get(method, ()) if m != method]
        rows.append((METHODS[method].label, map_layer(bundle, method),
                     f"{faith.deletion_auc:.3f} ({faith.random_deletion_auc:.3f})",
                     f"{faith.insertion_auc:.3f} ({faith.random_insertion_auc:.3f})",
                     f"{faith.beats_random_deletion} of {faith.maps}",
                     f"{faith.margin:+.3f} " + ("beats random" if faith.beats_random else "NO BETTER THAN RANDOM"),
                     "n/a" if check is None or check.compared == 0 else f"{check.correlation:.2f}",
                     "n/a" if check is None else check.status,
                     ("same maps as " + ", ".join(same)) if same else ""))
        links.append((("details", "#" + method_section_id(analysis, bundle, method)),))
        data.append({"method": method, "mean_deletion_auc": faith.deletion_auc,
                     "mean_insertion_auc": faith.insertion_auc,
                     "mean_random_deletion_auc": faith.random_deletion_auc,
                     "mean_random_insertion_auc": faith.random_insertion_auc,
                     "beats_random_deletion": faith.beats_random_deletion, "maps": faith.maps,
                     "empty_maps": faith.empty_maps, "margin_over_random": faith.margin,
                     "beats_random": faith.beats_random, "same_maps_as": sorted(identical.get(method, ())),
                     "sanity_correlation": None if check is None or check.compared == 0 else check.correlation,
                     "sanity_status": None if check is None else check.status,
                     "sanity_flagged": None if check is None else check.flagged})
    table = Table(
        columns=("Method", "Maps at", "Deletion AUC (random)", "Insertion AUC (random)", "Deletion beats random",
                 "Margin over random", "Rank correlation with fresh model", "Sanity check", "Note"),
        rows=tuple(rows),
        caption=(f"Means over every map. {HOW_TO_READ} Margin over random: (insertion - deletion) of the method's "
                 "maps minus that of the random maps; a method at or below 0 does no better than a random map and "
                 "is flagged. Sanity check (Adebayo et al. 2018): Spearman rank correlation between the maps of the "
                 f"trained model and of the same architecture freshly initialised; above {SANITY_THRESHOLD} the "
                 "method is flagged, its maps show the image rather than what the model learned; a method whose "
                 "trained maps are empty fails, and one with nothing to compare is undetermined, never passed."),
        row_links=tuple(links),
    )
    blocks: list = [Facts(tuple(facts)), table]
    failing = [m for m in results.methods if not scores[m].beats_random]
    if failing:
        one = len(failing) == 1
        at_layer = layer is not None and any(METHODS[m].resolution == "layer" for m in failing)
        advice = layer_advice(analysis, layer, looks_untrained(analysis)) if at_layer else ""
        blocks.insert(1, Text(
            f"Warning: {', '.join(METHODS[m].label for m in failing)} {'does' if one else 'do'} no better than a "
            f"random map on deletion and insertion here: {'its' if one else 'their'} maps do not show what the "
            "model uses." + (f" {advice[0].upper()}{advice[1:]}." if advice else "")))
    return Section(id="cam", kind="cam", title="Class activation maps", blocks=tuple(blocks),
                   data={"layer": layer.path if layer else None, "layer_reason": layer.reason if layer else None,
                         "scores": results.head.description, "curves_dtype": results.curves_dtype,
                         "methods": data})


def _method_section(analysis: Analysis, bundle: CamBundle, results: CamResults, method: str,
                    manifest: list[dict[str, Any]]) -> Section:
    info = METHODS[method]
    sid = method_section_id(analysis, bundle, method)
    where = map_layer(bundle, method)
    names = analysis.class_names.names
    maps = results.for_method(method)
    save = analysis.options.save_arrays
    check = results.sanity.get(method)

    facts = [("Method", f"{info.label} ({info.reference})"), ("Maps at", where), ("Cost", info.cost)]
    if check is not None:
        facts.append(("Sanity check", check.describe()))
    blocks: list = [Facts(tuple(facts))]
    if check is not None and method in results.fresh_maps:
        blocks.append(Text(f"The freshly initialised model's {info.label} maps of the first "
                           f"{len(results.fresh_maps[method])} images are in Maps per image, under each image's "
                           "trained maps."))

    rows, links, arrays = [], [], {}
    for heatmap in maps:
        image_id = analysis.image_ids[heatmap.image]
        name = names[heatmap.target.class_index]
        key = array_key(sid, image_id, heatmap.target.class_index)
        arrays[key] = heatmap.raw
        rows.append((analysis.images.sources[heatmap.image].name, name, ", ".join(heatmap.target.reasons),
                     f"{heatmap.probability:.3f}", f"{heatmap.deletion_auc:.3f}", f"{heatmap.random_deletion_auc:.3f}",
                     f"{heatmap.insertion_auc:.3f}", f"{heatmap.random_insertion_auc:.3f}"))
        class_link = bundle.plan.class_link(heatmap.target.class_index, names)
        links.append(tuple(link for link in (class_link, ("prediction", f"#prediction-{image_id}"),
                                             ("maps", f"#{image_maps_id(analysis, heatmap.image)}")) if link))
        manifest.append({
            "method": method, "image": image_id, "class_index": heatmap.target.class_index, "class_name": name,
            "layer": where, "score": heatmap.probability, "deletion_auc": heatmap.deletion_auc,
            "insertion_auc": heatmap.insertion_auc, "array_key": key if save else None,
            "reasons": list(heatmap.target.reasons), "random_deletion_auc": heatmap.random_deletion_auc,
            "random_insertion_auc": heatmap.random_insertion_auc, "shape": list(heatmap.raw.shape),
        })
    blocks.append(Table(
        columns=("Image", "Class", "Why", "Probability", "Deletion AUC", "Random", "Insertion AUC", "Random"),
        rows=tuple(rows), caption=HOW_TO_READ, row_links=tuple(links)))

    blocks.append(Text(f"Every image's {info.label} map, beside the other methods' maps, is in Maps per image."))
    return Section(
        id=sid, kind="cam", title=f"{info.label} at {where}", blocks=tuple(blocks),
        layer=bundle.layer.path if info.resolution == "layer" and bundle.layer else None,
        data={"method": method, "label": info.label, "reference": info.reference, "maps_at": where,
              "sanity": None if check is None else {
                  "correlation": None if check.compared == 0 else check.correlation, "status": check.status,
                  "flagged": check.flagged, "threshold": check.threshold,
                  "correlations": [None if c != c else c for c in check.correlations],
                  "trained_empty": check.trained_empty, "fresh_empty": check.fresh_empty}},
        arrays=arrays,
    )


def _fresh_row(bundle: CamBundle, results: CamResults, image: int, class_index: int, tile: np.ndarray
               ) -> list[np.ndarray]:
    """Each method's map of `class_index` from the freshly initialised model, over `tile`; [] when the image is not
    in the sanity check's sample."""
    position = [t.class_index for t in bundle.plan.targets[image]].index(class_index)
    row = []
    for method in results.methods:
        fresh = results.fresh_maps.get(method)
        if not fresh or image >= len(fresh):
            return []
        row.append(overlay_tile(tile, fresh[image][position]))
    return row
