"""`diff_reports`: compare two report folders (two versions of a model on the same images) as a report of its own.

The diff is a regular `Report` written by `render.write_report`, so it has the same page, anchors, figures and
report.json as any report. Its sections: an overview with a layer table (the anchors per-layer sections link
to), weights side by side, prediction changes, CAM changes, filter patterns side by side, and what did not match.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reportgen import figures
from reportgen.diff.compare import (
    MapChange,
    PredictionChange,
    TensorChange,
    as_map,
    common_size,
    compare_predictions,
    compare_tensor,
    keyed_maps,
    match_keys,
    unit_range,
)
from reportgen.errors import InputError
from reportgen.loading.preprocess import Preprocessor
from reportgen.report import Facts, Figure, FigureRow, ImageEntry, Report, Section, SlugRegistry, Table, Text
from reportgen.report_folder import facts, read
from reportgen.report_folder.schema import FilterPattern, Heatmap
from reportgen.sections.weights import FRESH_COLOR, TRAINED_COLOR, stats_rows

OLD_COLOR, NEW_COLOR = FRESH_COLOR, TRAINED_COLOR  # blue and red, as trained vs fresh in the weights section
MAP_TILE = 128  # px, longer side of a heatmap tile
MAX_MAP_FIGURES = 48  # heatmap figures, the largest changes first; the table lists every map
MAX_LISTED = 20  # names per cell in the "not compared" table; report.json has them all
FLIP_MARK = "FLIPPED"
DEAD_GREY = 128  # a dead filter's tile


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4g}"


def _corr(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", … and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "") if items else "—"


@dataclass
class DiffContext:
    """The two reports and what the builders found, collected for the overview and the summary."""

    old: read.ReportFolder
    new: read.ReportFolder
    progress: Callable[[str, str], None]
    images_dir: Path | None = None  # --images: where the images are; the diff reads no other image path
    old_names: dict[str, str] = field(init=False)  # image id -> name
    new_names: dict[str, str] = field(init=False)
    layer_ids: dict[str, str] = field(default_factory=dict)  # layer path -> slug, shared by every section
    unmatched: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # what -> (only old, only new)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # report.json "diff" (what summary.md reads)

    def __post_init__(self) -> None:
        self.old_names = self.old.report.image_names
        self.new_names = self.new.report.image_names
        self._slugs = SlugRegistry()

    def layer_slug(self, path: str) -> str:
        if path not in self.layer_ids:
            self.layer_ids[path] = self._slugs.take(path, "layer")
        return self.layer_ids[path]

    def record_unmatched(self, what: str, only_old: Sequence[str], only_new: Sequence[str]) -> None:
        if only_old or only_new:
            self.unmatched[what] = (list(only_old), list(only_new))


def _absent(section_id: str, title: str, in_old: bool, in_new: bool, what: str, how: str) -> Section:
    """The section of something one report (or both) lacks, saying which and how to get it."""
    missing = " and ".join(role for role, present in (("OLD", in_old), ("NEW", in_new)) if not present)
    verb = "have" if " and " in missing else "has"
    text = f"{missing} {verb} no {what}, so they cannot be compared: generate both reports with {how}."
    return Section(id=section_id, kind=section_id.removesuffix("-diff").replace("-", "_") + "_diff", title=title,
                   blocks=(Text(text),))


# ---------------------------------------------------------------------------------------------------- weights


def _tensor_label(key: tuple[str, str]) -> str:
    return f"{key[0]} {key[1]}"


def _weights(ctx: DiffContext) -> list[Section]:
    old_t, new_t = facts.weight_tensors(ctx.old.report), facts.weight_tensors(ctx.new.report)
    matching = match_keys(old_t, new_t)
    ctx.record_unmatched("weight tensors", [_tensor_label(k) for k in matching.only_old],
                         [_tensor_label(k) for k in matching.only_new])
    changes: list[TensorChange] = []
    for key in matching.both:
        old = ctx.old.array(old_t[key].array_key, old_t[key].shape, field="sections[].data.tensors[].shape")
        new = ctx.new.array(new_t[key].array_key, new_t[key].shape, field="sections[].data.tensors[].shape")
        if old is None or new is None:
            ctx.warnings.append(f"weights: {_tensor_label(key)} has no array in "
                                f"{'OLD' if old is None else 'NEW'}'s arrays.npz; not compared")
            continue
        changes.append(compare_tensor(key[0], key[1], new_t[key].layer_type, old, new))
    ctx.summary["weights"] = {"compared": len(changes)}
    if not changes:
        text = ("No weight tensor is in both reports' arrays (generate both with the weights section and "
                "--save-arrays)." if not (old_t and new_t) else "No weight tensor matched by layer and name.")
        return [Section(id="weights-diff", kind="weights_diff", title="Weights", blocks=(Text(text),))]
    finite = [c for c in changes if np.isfinite(c.relative_change)]
    if finite:
        largest = max(finite, key=lambda c: c.relative_change)
        ctx.summary["weights"]["largest"] = {"layer": largest.layer, "tensor": largest.tensor,
                                             "relative_change": largest.relative_change}
        ctx.summary["weights"]["unchanged"] = sum(1 for c in finite if c.relative_change == 0)
    overview = Table(
        columns=("Layer", "Tensor", "Shape", "Old std", "New std", "Relative change", "Max |change|"),
        rows=tuple((c.layer, c.tensor, _shapes(c), _fmt(c.old_stats.std), _fmt(c.new_stats.std),
                    _fmt(c.relative_change), _fmt(c.max_abs_change)) for c in changes),
        caption="Relative change = ||new - old|| / ||old|| per tensor: 0 means the weights are identical.",
        row_links=tuple((("details", f"#weights-diff-{ctx.layer_slug(c.layer)}"),) for c in changes),
    )
    sections = [Section(id="weights-diff", kind="weights_diff", title="Weights: old against new",
                        blocks=(overview,))]
    by_layer: dict[str, list[TensorChange]] = defaultdict(list)
    for change in changes:
        by_layer[change.layer].append(change)
    for path, layer_changes in by_layer.items():
        sid = f"weights-diff-{ctx.layer_slug(path)}"
        blocks: list = []
        for change in layer_changes:
            blocks.extend(_tensor_blocks(change, f"{sid}-{change.tensor.replace('_', '-')}"))
        sections.append(Section(
            id=sid, kind="weights_diff", title=f"Weights: {path}", blocks=tuple(blocks), layer=path,
            data={"type": layer_changes[0].layer_type, "tensors": [
                {"tensor": c.tensor, "old_shape": list(c.old.shape), "new_shape": list(c.new.shape),
                 "old": asdict(c.old_stats), "new": asdict(c.new_stats), "relative_change": c.relative_change,
                 "max_abs_change": c.max_abs_change} for c in layer_changes]},
        ))
    return sections


def _shapes(change: TensorChange) -> str:
    old, new = "x".join(map(str, change.old.shape)), "x".join(map(str, change.new.shape))
    return old if old == new else f"{old} → {new}"


def _tensor_blocks(change: TensorChange, key: str) -> list:
    blocks: list = [
        Table(columns=(change.tensor, "old", "new"), rows=stats_rows(change.old_stats, change.new_stats),
              caption=(f"Shape {_shapes(change)}; relative change ||new - old|| / ||old|| = "
                       f"{_fmt(change.relative_change)}, largest |new - old| = {_fmt(change.max_abs_change)}.")),
        Figure(key=f"{key}-histogram", title=f"{change.layer}: {change.tensor} histogram",
               caption="Old (blue) and new (red) weights over the same bins.",
               pixels=figures.plot_histogram(change.bin_edges, [("old", change.old_counts, OLD_COLOR),
                                                                ("new", change.new_counts, NEW_COLOR)],
                                             title=f"{change.layer} {change.tensor}")),
    ]
    if change.old.ndim == 4 and change.new.ndim == 4 and change.same_shape:
        grids = figures.shared_kernel_grids((change.old, change.new), ("old", "new"))
        row = [Figure(key=f"{key}-old", title=f"{change.layer}: old {change.tensor}", caption=grids.caption,
                      pixels=grids.pixels[0]),
               Figure(key=f"{key}-new", title=f"{change.layer}: new {change.tensor}",
                      caption="The new version, on the same colour scale as the old.", pixels=grids.pixels[1])]
    elif change.old.ndim == 4 and change.new.ndim == 4:  # reshaped: each on its own scale, and the captions say so
        old_grid, how = figures.kernel_grid(change.old)
        new_grid, new_how = figures.kernel_grid(change.new)
        row = [Figure(key=f"{key}-old", title=f"{change.layer}: old {change.tensor}", caption=how, pixels=old_grid),
               Figure(key=f"{key}-new", title=f"{change.layer}: new {change.tensor}",
                      caption=f"The new version (another shape, its own scale): {new_how}", pixels=new_grid)]
    if change.old.ndim == 4 and change.new.ndim == 4:
        if change.same_shape:
            delta_grid, _ = figures.kernel_grid(change.new - change.old)
            row.append(Figure(key=f"{key}-change", title=f"{change.layer}: new - old",
                              caption="The change of every weight, scaled by the largest |change|.",
                              pixels=delta_grid))
        blocks.append(FigureRow(tuple(row)))
    return blocks


# ------------------------------------------------------------------------------------------------ predictions


def _prediction_text(p: facts.ImagePrediction) -> str:
    if p.predicted is None:
        return "n/a"
    return p.predicted + (f" ({p.probability:.1%})" if p.probability is not None else "")


def _accuracy_on(changes: Sequence[PredictionChange], which: str) -> dict[str, Any] | None:
    verdicts = [getattr(c, which).correct for c in changes]
    known = [v for v in verdicts if v is not None]
    if not known:
        return None
    return {"accuracy": sum(known) / len(known), "correct": sum(known), "labelled": len(known)}


def _predictions(ctx: DiffContext) -> list[Section]:
    old_p, new_p = facts.predictions(ctx.old.report), facts.predictions(ctx.new.report)
    if not old_p or not new_p:
        return [_absent("predictions-diff", "Prediction changes", bool(old_p), bool(new_p), "predictions",
                        "the predictions section")]
    changes = compare_predictions(old_p, new_p, ctx.old_names, ctx.new_names)
    flips = [c for c in changes if c.flipped]
    old_acc, new_acc = _accuracy_on(changes, "old"), _accuracy_on(changes, "new")
    ctx.summary["predictions"] = {
        "compared": len(changes), "old_accuracy": old_acc, "new_accuracy": new_acc,
        "flipped": [{"image": c.name, "label": c.label, "old": c.old.predicted, "new": c.new.predicted,
                     "verdict": c.verdict} for c in flips],
    }
    counts = {v: sum(1 for c in flips if c.verdict == v) for v in ("fixed", "broken", "changed")}
    known = Facts((
        ("Images compared", str(len(changes))),
        ("Flipped top prediction", f"{len(flips)} of {len(changes)} ({counts['fixed']} fixed, {counts['broken']} "
                                   f"broken, {counts['changed']} changed between wrong classes)"),
        ("Accuracy on these images", f"{_accuracy_text(old_acc)} → {_accuracy_text(new_acc)}"),
    ))
    blocks: list = [known]
    if flips:
        blocks.append(Table(
            columns=("Image", "Label", "Old prediction", "New prediction", "Verdict"),
            rows=tuple((c.name, c.label or "", _prediction_text(c.old), _prediction_text(c.new), c.verdict)
                       for c in flips),
            caption="Every image whose top prediction changed. Fixed: wrong before, right now; broken: the reverse.",
        ))
        blocks.extend(_flips_on_the_map(ctx, flips))
        gallery = _flips_gallery(ctx, flips)
        if gallery is not None:
            blocks.append(gallery)
    else:
        blocks.append(Text("No image changed its top prediction."))
    blocks.append(Table(
        columns=("Image", "Label", "Old prediction", "New prediction", "Change", "Δ probability"),
        rows=tuple((c.name, c.label or "", _prediction_text(c.old), _prediction_text(c.new),
                    f"{FLIP_MARK} ({c.verdict})" if c.flipped else "", _probability_delta(c)) for c in changes),
        caption=(f"Every image in both reports; {FLIP_MARK} marks a changed top prediction. Δ probability: of the "
                 "same top class, new minus old."),
        row_ids=tuple(f"prediction-diff-{c.image}" for c in changes),
    ))
    data = {"compared": len(changes), "flipped": len(flips), **counts,
            "old_accuracy": old_acc, "new_accuracy": new_acc,
            "images": [{"image": c.image, "name": c.name, "label": c.label, "old": c.old.predicted,
                        "new": c.new.predicted, "old_probability": c.old.probability,
                        "new_probability": c.new.probability, "flipped": c.flipped, "verdict": c.verdict or None}
                       for c in changes]}
    return [Section(id="predictions-diff", kind="predictions_diff", title="Prediction changes",
                    blocks=tuple(blocks), data=data)]


FLIPS_SHOWN = 48  # thumbnails of changed predictions in the gallery; the table lists every one


def _flips_on_the_map(ctx: DiffContext, flips: Sequence[PredictionChange]) -> list:
    """The new version's map of the set (its data health layout, with --save-arrays) with the images whose
    prediction changed in red; nothing when the new report has no layout."""
    section = next((s for s in ctx.new.report.sections if s.id == "data-health"), None)
    key = (section.data or {}).get("layout_array_key") if section is not None else None
    names = [image.name for image in ctx.new.report.images]
    layout = ctx.new.array(key, (len(names), 2)) if key else None
    if layout is None:
        return []
    placed = np.isfinite(layout).all(axis=1)
    flipped = {c.name for c in flips}
    wrong = np.array([name in flipped for name in names])[placed]
    predicted = [image.prediction.class_name if image.prediction is not None else "" for image in
                 ctx.new.report.images]
    classes = sorted(set(predicted))
    groups = np.array([classes.index(p) for p in predicted])[placed]
    return [Figure(key="predictions-diff-map", title="Changed predictions on the map of the set",
                   caption=(f"The new version's map of the set (data health's layout). Left: by new prediction; "
                            f"right: the {int(wrong.sum())} images whose top prediction changed, in red. Changes "
                            "in one region point at a class boundary that moved; changes everywhere, at noise."),
                   pixels=figures.plot_embedding_map(layout[placed], groups, classes, wrong,
                                                     "Changed predictions"))]


def _flips_gallery(ctx: DiffContext, flips: Sequence[PredictionChange]) -> Figure | None:
    """Thumbnails of the images whose prediction changed (with --images), fixed and broken first."""
    order = {"broken": 0, "fixed": 1, "changed": 2}
    shown = sorted(flips, key=lambda c: (order.get(c.verdict, 3), c.name))[:FLIPS_SHOWN]
    tiles, labels = [], []
    for change in shown:
        tile = _thumbnail(_image_file(ctx.images_dir, change.name), (72, 72))
        if tile is not None:
            tiles.append(tile)
            labels.append(f"{change.old.predicted} -> {change.new.predicted}\n{change.verdict}")
    if not tiles:
        return None
    more = f" (the first {len(shown)} of {len(flips)})" if len(flips) > len(shown) else ""
    return Figure(key="predictions-diff-gallery", title="Images whose prediction changed",
                  caption=f"Broken first, then fixed, then changed between wrong classes{more}: old -> new.",
                  pixels=figures.fit_width(figures.tile_grid(tiles, columns=min(12, len(tiles)), labels=labels)))


def _accuracy_text(acc: dict[str, Any] | None) -> str:
    return "n/a" if acc is None else f"{acc['accuracy']:.1%} ({acc['correct']} of {acc['labelled']})"


def _probability_delta(change: PredictionChange) -> str:
    if change.flipped or change.old.probability is None or change.new.probability is None:
        return ""
    return f"{change.new.probability - change.old.probability:+.3f}"


# ---------------------------------------------------------------------------------------------------- heatmaps


def _cams(ctx: DiffContext) -> list[Section]:
    old_e = keyed_maps(ctx.old_names, ctx.old.report.heatmaps)
    new_e = keyed_maps(ctx.new_names, ctx.new.report.heatmaps)
    title = "Class activation map changes"
    if not old_e or not new_e:
        return [_absent("cam-diff", title, bool(old_e), bool(new_e), "class activation maps",
                        "the cam section and --save-arrays")]
    matching = match_keys(old_e, new_e)
    ctx.record_unmatched("class activation maps", [_map_label(k, old_e[k]) for k in matching.only_old],
                         [_map_label(k, new_e[k]) for k in matching.only_new])
    changes: list[MapChange] = []
    for key in matching.both:
        old_entry, new_entry = old_e[key], new_e[key]
        old = as_map(read.heatmap_array(ctx.old, old_entry))
        new = as_map(read.heatmap_array(ctx.new, new_entry))
        if old is None or new is None:
            ctx.warnings.append(f"cam: no stored map for {_map_label(key, new_entry)} in "
                                f"{'OLD' if old is None else 'NEW'} (was it generated with --save-arrays?)")
            continue
        old, new = common_size(old, new)
        changes.append(MapChange(key[0], new_entry.image, new_entry.class_index, new_entry.class_name or key[1],
                                 key[2], old_entry.layer, new_entry.layer, old, new))
    if not changes:
        return [Section(id="cam-diff", kind="cam_diff", title=title,
                        blocks=(Text("No class activation map is in both reports with its array."),))]
    # The largest changes first; a map constant in one version (NaN correlation) is the largest of all.
    order = sorted(changes, key=lambda c: (np.nan_to_num(c.correlation, nan=-2.0), c.name, c.class_name, c.method))
    correlations = np.array([c.correlation for c in changes], np.float64)
    finite = correlations[np.isfinite(correlations)]
    mean = float(finite.mean()) if finite.size else None
    lowest = order[0]
    ctx.summary["cams"] = {
        "compared": len(changes), "mean_correlation": mean,
        "lowest": {"image": lowest.name, "class": lowest.class_name, "method": lowest.method,
                   "correlation": lowest.correlation},
    }
    image_ids = SlugRegistry()
    section_of = {name: f"cam-diff-{image_ids.take(name, 'image')}" for name in dict.fromkeys(c.name for c in order)}
    table = Table(
        columns=("Image", "Class", "Method", "Layer", "Correlation"),
        rows=tuple((c.name, c.class_name, c.method, _layers(c), _corr(c.correlation)) for c in order),
        caption=("Pearson correlation between the old and the new map of the same image, class and method (at a "
                 "common size): 1 unchanged pattern, 0 unrelated, negative reversed. Lowest first."),
        row_links=tuple((("maps", "#" + section_of[c.name]),) for c in order),
    )
    intro = Text(f"{len(changes)} maps compared; mean correlation {_corr(mean)}."
                 + (f" Figures for the {MAX_MAP_FIGURES} largest changes." if len(order) > MAX_MAP_FIGURES else ""))
    sections = [Section(id="cam-diff", kind="cam_diff", title=title, blocks=(intro, table),
                        data={"compared": len(changes), "maps": [
                            {"image": c.name, "class_index": c.class_index, "class_name": c.class_name,
                             "method": c.method, "old_layer": c.old_layer, "new_layer": c.new_layer,
                             "correlation": c.correlation} for c in order]})]
    shown = order[:MAX_MAP_FIGURES]
    for name, sid in section_of.items():
        image_changes = [c for c in shown if c.name == name]
        if not image_changes:
            continue
        path = _image_file(ctx.images_dir, name)
        blocks = [_map_figure(c, f"{sid}-{n}", path) for n, c in enumerate(image_changes, start=1)]
        sections.append(Section(id=sid, kind="cam_diff", title=f"Map changes: {name}", blocks=tuple(blocks)))
    return sections


def _map_label(key: tuple[str, str, str], entry: Heatmap) -> str:
    return f"{key[0]} / {entry.class_name or key[1]} / {key[2]}"


def _layers(change: MapChange) -> str:
    if change.old_layer == change.new_layer:
        return str(change.new_layer or "")
    return f"{change.old_layer} → {change.new_layer}"


def _image_file(folder: Path | None, name: str) -> Path | None:
    """The image called `name` (its path below the images folder, as report.json names it) inside `folder`, or
    None. The paths a report.json records are never opened: a crafted report could name any file on this
    machine. A name that leads outside `folder` (`..`, an absolute path, a link) or to no regular file is None."""
    if folder is None:
        return None
    root = folder.resolve()
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def _thumbnail(path: Path | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The image the maps explain, at the maps' tile size; None without --images or when it does not decode.
    Decoded as `generate` decodes (over 80 megapixels is refused from the header, before decoding)."""
    import cv2

    from reportgen.loading.images import decode_image

    if path is None:
        return None
    try:
        image = decode_image(path)
    except (ValueError, OSError, cv2.error):
        return None
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def _map_figure(change: MapChange, key: str, image_path: Path | None) -> Figure:
    delta = figures.fit_box(figures.diverging(unit_range(change.new) - unit_range(change.old)), MAP_TILE)

    def tile(values: np.ndarray) -> np.ndarray:
        """Min-max scaled through jet; a constant map (nothing to rank) hatched, as in the cam sections."""
        if float(values.max()) <= float(values.min()):
            return figures.hatched(*delta.shape[:2])
        return figures.fit_box(figures.colormap(unit_range(values), "jet"), MAP_TILE)

    tiles, labels = [tile(change.old), tile(change.new), delta], ["old", "new", "new - old"]
    thumbnail = _thumbnail(image_path, delta.shape)
    if thumbnail is not None:
        tiles, labels = [thumbnail, *tiles], ["image", *labels]
    return Figure(
        key=key, title=f"{change.name}: {change.class_name} ({change.method})",
        caption=(f"Old map, new map (each min-max scaled, jet: red high; hatched: constant) and the difference of "
                 f"the scaled maps (red stronger now, blue weaker); correlation {_corr(change.correlation)}; layer "
                 f"{_layers(change)}."),
        pixels=figures.tile_grid(tiles, columns=len(tiles), labels=labels),
    )


# ------------------------------------------------------------------------------------------- filter patterns


def _pattern_key(entry: FilterPattern) -> tuple[str, int, str]:
    return entry.layer, entry.filter, entry.direction


def _pattern_pixels(inputs: np.ndarray, mode: str | None) -> np.ndarray:
    """Pattern model inputs (H, W, C) -> RGB uint8 through the report's preprocessing, or min-max if unknown."""
    inputs = np.asarray(inputs, np.float32)
    if inputs.ndim == 2:
        inputs = inputs[:, :, None]
    try:
        pixels = Preprocessor(str(mode), channels=inputs.shape[2]).invert(inputs)
    except ValueError:
        pixels = unit_range(inputs) * 255
    pixels = np.clip(np.nan_to_num(pixels), 0, 255).round().astype(np.uint8)
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]


def _filter_patterns(ctx: DiffContext) -> list[Section]:
    old_e = {_pattern_key(e): e for e in ctx.old.report.filter_patterns}
    new_e = {_pattern_key(e): e for e in ctx.new.report.filter_patterns}
    title = "Filter patterns: old against new"
    if not old_e or not new_e:
        return [_absent("filter-patterns-diff", title, bool(old_e), bool(new_e), "filter patterns",
                        "the filter_patterns section and --save-arrays")]
    matching = match_keys(old_e, new_e)
    ctx.record_unmatched("filter patterns", [f"{k[0]} #{k[1]} {k[2]}" for k in matching.only_old],
                         [f"{k[0]} #{k[1]} {k[2]}" for k in matching.only_new])
    groups: dict[tuple[str, str], list[tuple[str, int, str]]] = defaultdict(list)
    for key in matching.both:
        groups[(key[0], key[2])].append(key)
    modes = (ctx.old.report.model.preprocess, ctx.new.report.model.preprocess)
    by_layer: dict[str, list] = defaultdict(list)
    rows_by_layer: dict[str, list] = defaultdict(list)
    overview_rows = []
    compared = 0
    for (layer, direction), keys in groups.items():
        tiles: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        labels = []
        for key in keys:
            pair = [read.pattern_array(ctx.old, old_e[key]), read.pattern_array(ctx.new, new_e[key])]
            if pair[0] is None or pair[1] is None:
                continue
            shown = [_pattern_pixels(a, mode) for a, mode in zip(pair, modes, strict=True)]
            size = max(max(s.shape[:2]) for s in shown)
            zoom = max(1, round(128 / size))  # small patterns enlarged to ~128 px, pixels kept crisp
            dead = ["dead" if e.dead else "" for e in (old_e[key], new_e[key])]
            for target, image, is_dead in zip(tiles, shown, dead, strict=True):
                tile = figures.upscale(_square(image, size), zoom)
                target.append(np.full_like(tile, DEAD_GREY) if is_dead else tile)  # as the patterns section does
            labels.append(str(key[1]))
            rows_by_layer[layer].append((str(key[1]), direction, _fmt(old_e[key].activation),
                                         _fmt(new_e[key].activation), dead[0], dead[1]))
        if not labels:
            continue
        compared += len(labels)
        slug = ctx.layer_slug(layer)
        by_layer[layer].append(FigureRow(tuple(
            Figure(key=f"filter-patterns-diff-{slug}-{direction}-{role}", title=f"{layer}: {direction}, {role}",
                   caption=f"The {role} version's pattern of each filter (number below the tile); grey: dead.",
                   pixels=figures.fit_width(figures.tile_grid(np.stack(t), columns=8, pad=4, labels=labels)))
            for role, t in zip(("old", "new"), tiles, strict=True))))
    ctx.summary["filter_patterns"] = {"compared": compared}
    sections = []
    for layer, blocks in by_layer.items():
        rows = rows_by_layer[layer]
        overview_rows.append((layer, str(len(rows)), str(sum(1 for r in rows if r[4])),
                              str(sum(1 for r in rows if r[5]))))
        blocks.append(Table(columns=("Filter", "Direction", "Old activation", "New activation", "Old", "New"),
                            rows=tuple(rows), caption="Mean activation each pattern reached; dead: no input "
                                                      "switched the filter on."))
        sections.append(Section(id=f"filter-patterns-diff-{ctx.layer_slug(layer)}", kind="filter_patterns_diff",
                                title=f"Filter patterns: {layer}", blocks=tuple(blocks), layer=layer))
    overview = Table(columns=("Layer", "Patterns compared", "Dead in old", "Dead in new"),
                     rows=tuple(overview_rows), caption="Patterns matched by layer, filter and direction.",
                     row_links=tuple((("patterns", f"#filter-patterns-diff-{ctx.layer_slug(r[0])}"),)
                                     for r in overview_rows))
    return [Section(id="filter-patterns-diff", kind="filter_patterns_diff", title=title, blocks=(overview,)),
            *sections]


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """Patterns of two versions may differ in size; both are shown at the larger one."""
    if image.shape[:2] == (size, size):
        return image
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST)


# ---------------------------------------------------------------------------------------- overview, unmatched


def _model_row(label: str, old: Any, new: Any) -> tuple[str, str, str]:
    return label, "" if old is None else str(old), "" if new is None else str(new)


def _overview(ctx: DiffContext, sections: list[Section]) -> Section:
    old_m, new_m = ctx.old.report, ctx.new.report
    om, nm = old_m.model, new_m.model
    old_acc, new_acc = facts.accuracy(old_m), facts.accuracy(new_m)
    models = Table(
        columns=("", "OLD", "NEW"),
        rows=(
            _model_row("Report", ctx.old.path, ctx.new.path),
            _model_row("Model", om.name, nm.name),
            _model_row("Version", om.version, nm.version),
            _model_row("Created", old_m.created, new_m.created),
            _model_row("SHA-256", om.sha256, nm.sha256),
            _model_row("Parameters", _count(om.params), _count(nm.params)),
            _model_row("Images", len(ctx.old_names), len(ctx.new_names)),
            _model_row("Accuracy on its images", old_acc.text() if old_acc else "n/a",
                       new_acc.text() if new_acc else "n/a"),
        ),
        caption="The two reports compared.",
    )
    old_layers, new_layers = facts.summary_layers(old_m), facts.summary_layers(new_m)
    layer_match = match_keys(old_layers, new_layers)
    ctx.record_unmatched("layers", list(layer_match.only_old), list(layer_match.only_new))
    links: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for section in sections:
        if section.layer is not None:
            links[section.layer].append((section.kind.removesuffix("_diff").replace("_", " "), "#" + section.id))
    ordered = list(dict.fromkeys([*new_layers, *old_layers, *links]))
    old_set, new_set = set(old_layers), set(new_layers)
    layers = Table(
        columns=("Layer", "In OLD", "In NEW"),
        rows=tuple((path, "yes" if path in old_set else "no", "yes" if path in new_set else "no") for path in ordered),
        caption="Every layer of either model; the links go to the comparisons of that layer.",
        row_ids=tuple(f"layer-{ctx.layer_slug(path)}" for path in ordered),
        row_links=tuple(tuple(links.get(path, ())) for path in ordered),
    )
    matched_images = match_keys(ctx.old_names.values(), ctx.new_names.values())
    listed = [("Images in both", f"{len(matched_images.both)} (matched by name)")]
    for what, (only_old, only_new) in ctx.unmatched.items():
        listed.append((f"Not compared: {what}", f"{len(only_old)} only in OLD, {len(only_new)} only in NEW"))
    return Section(id="summary", kind="summary", title="Diff overview",
                   blocks=(models, Facts(tuple(listed)), layers),
                   data={"layers": [{"path": p, "old": p in old_set, "new": p in new_set} for p in ordered]})


def _count(value: Any) -> str | None:
    return f"{value:,}" if isinstance(value, int) else None


def _unmatched(ctx: DiffContext) -> list[Section]:
    if not ctx.unmatched:
        return []
    table = Table(columns=("What", "Only in OLD", "Only in NEW"),
                  rows=tuple((what, _listed(a), _listed(b)) for what, (a, b) in ctx.unmatched.items()),
                  caption="Present in one report only, so not compared.")
    return [Section(id="not-compared", kind="not_compared", title="Not compared", blocks=(table,),
                    data={what: {"only_old": a, "only_new": b} for what, (a, b) in ctx.unmatched.items()})]


# ------------------------------------------------------------------------------------------------------ entry


def build_diff(old: read.ReportFolder, new: read.ReportFolder, title: str | None = None,
               progress: Callable[[str, str], None] | None = None, images_dir: Path | None = None) -> Report:
    """The diff of two opened report folders as a Report (nothing written). Image pixels come only from
    `images_dir` (the user's --images), never from paths the reports name."""
    from reportgen.api import creation_time, versions

    ctx = DiffContext(old, new, progress or (lambda stage, message: None), images_dir)
    unrelated = facts.unrelated_models(old.report, new.report)
    if unrelated:
        ctx.warnings.append(unrelated)  # the first warning: shown at the top of the diff
    for role, folder in (("OLD", old), ("NEW", new)):
        if (ambiguous := facts.ambiguity_warning(folder.report, role)) is not None:
            ctx.warnings.append(ambiguous)
    images = match_keys(ctx.old_names.values(), ctx.new_names.values())
    ctx.record_unmatched("images", list(images.only_old), list(images.only_new))
    body: list[Section] = []
    for kind, builder in (("weights", _weights), ("predictions", _predictions), ("cam", _cams),
                          ("filter_patterns", _filter_patterns)):
        ctx.progress("diff", kind)
        body.extend(builder(ctx))
    overview = _overview(ctx, body)
    new_model, old_model = new.report.model, old.report.model
    ctx.summary.update({
        "old": {"name": old_model.name, "version": old_model.version, "created": old.report.created,
                "report": str(old.path)},
        "new": {"name": new_model.name, "version": new_model.version, "created": new.report.created,
                "report": str(new.path)},
        "images_compared": len(images.both),
        "not_compared": {what: {"only_old": len(a), "only_new": len(b)} for what, (a, b) in ctx.unmatched.items()},
    })
    by_name = {i.name: i for i in new.report.images}
    image_entries = tuple(
        ImageEntry(id=i.id, name=i.name, path=i.path or "", label=i.label,
                   original_size=i.original_size or (0, 0))  # type: ignore[arg-type]
        for name in images.both if (i := by_name.get(name)) is not None
    )
    options = new.report.options
    return Report(
        title=title or f"{old.label} → {new.label}: what changed",
        created=creation_time(),
        model={**new_model.raw, "compared_with": old_model.raw},
        options={"seed": options.get("seed", 0), "old": str(old.path), "new": str(new.path)},
        images=image_entries,
        class_names=new.report.class_names,
        sections=(overview, *body, *_unmatched(ctx)),
        warnings=tuple(dict.fromkeys(ctx.warnings)),
        seconds={},
        versions=versions(),
        extra={"diff": ctx.summary},
    )


def diff_reports(old: str | Path, new: str | Path, out: str | Path, *, title: str | None = None,
                 force: bool = False, progress: Callable[[str, str], None] | None = None,
                 images: str | Path | None = None) -> Any:
    """Compare the report folders OLD and NEW (both made with --save-arrays) and write the diff report to OUT."""
    from reportgen.api import ReportResult
    from reportgen.render import check_output_dir, sweep_leftovers, write_report

    out = Path(out)
    old_folder = read.read_report(old, "OLD", need_arrays=True)
    new_folder = read.read_report(new, "NEW", need_arrays=True)
    for role, folder in (("OLD", old_folder), ("NEW", new_folder)):
        if out.resolve() == folder.path.resolve():
            raise InputError(f"-o/--output-dir: {out} is the {role} report; write the diff to another folder")
    if images is not None and not Path(images).is_dir():
        raise InputError(f"--images: {images} is not a folder; give the folder of images both reports were made on")
    sweep_leftovers(check_output_dir(out, force))
    try:
        report = build_diff(old_folder, new_folder, title, progress, Path(images) if images is not None else None)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:  # a field the schema does not check
        raise InputError(f"OLD {old_folder.path} or NEW {new_folder.path}: a report.json field has an unexpected "
                         f"layout ({type(exc).__name__}: {exc}); regenerate the reports") from None
    write_report(report, out, force=force)
    return ReportResult(out, report.sections, report.warnings)
