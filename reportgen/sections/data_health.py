"""The `data_health` sections: the images a reviewer must look at, from the one dataset pass.

An overview (what was found, the map of the whole set and its atlas), then folded: suspected label errors
(confident learning), near-duplicates (pairs across classes first), outliers (far from every class centre) and a
gallery per confusion-matrix cell. Every list is ranked most suspect first and bounded; report.json's
`data_health` holds the lists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reportgen import figures, sample_sizes
from reportgen.analysis import Analysis
from reportgen.report import Facts, Figure, Section, SectionResult, Table, Text
from reportgen.sections.anchors import CAM_IMAGES
from reportgen.techniques.data_health import (
    ATLAS_GRID,
    AtlasGrid,
    Duplicates,
    Embeddings,
    LabelIssues,
    Layout,
    Outliers,
    atlas_grid,
    embedding_parts,
    find_duplicates,
    find_label_issues_in,
    find_outliers,
    pca_layout,
)
from reportgen.techniques.data_health.outliers import OUTLIER_MADS

KIND = "data_health"
THUMB = 72  # px, a thumbnail's longer side
SHOWN = 24  # thumbnails per list on the page; report.json lists up to LISTED
LISTED = 100
PAIRS_SHOWN = 12
CELLS_SHOWN = 30  # confusion cells with a gallery, the fullest first
PER_CELL = 8  # images per confusion cell, the most confident first
LAYOUT_KEY = "data-health.layout"  # arrays.npz: (images, 2) float32, each image's place on the map
MAP_SAMPLE = "data_health/map"  # seed stream of the points drawn when the set has more than figures.MAP_POINTS


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    dataset = analysis.dataset
    table = dataset.embeddings if dataset is not None else None
    if table is None or len(table) == 0:
        why = ("the model has no convolutional layer with a spatial output to embed the images by"
               if dataset is not None else "no dataset pass ran")
        return SectionResult((Section(id="data-health", kind=KIND, title="Data health",
                                      blocks=(Text(f"No data health: {why}."),)),))
    seed = analysis.options.seed
    analysis.progress(KIND, f"{len(table)} embeddings")
    labelled = int(np.count_nonzero(table.labels >= 0))
    whole, where = embedding_parts(table.embeddings, dataset.embedding_split)
    issues = find_label_issues_in(table) if labelled else None
    duplicates = find_duplicates(where, table.indices, table.labels, seed=seed)
    # Uncentred: on the bundled shapes model the set's mean carries the class structure, and removing it ranked a
    # planted group of ten blank frames 24th-33rd; as they are, the ten rank first (the centring helps on random
    # networks, whose pooled features share one direction; a report's model is trained).
    outliers = find_outliers(whole, table.labels, table.predicted, table.classes, table.indices, limit=LISTED,
                             centred=False)
    if not sample_sizes.enough(sample_sizes.OUTLIER_FLAGS, len(table)):  # ranked, but none flagged
        outliers = dataclasses.replace(outliers, cutoff=float("inf"), flagged=0)
    layout = pca_layout(whole, table.indices, seed=seed)
    # About two images a cell, 3 to ATLAS_GRID cells a side: a dozen images would leave a 12 x 12 grid empty.
    atlas = atlas_grid(layout, min(ATLAS_GRID, max(3, math.ceil(math.sqrt(len(table) / 2)))))

    manifest = _manifest(analysis, table, issues, duplicates, outliers)
    sections = [
        _overview(analysis, table, issues, duplicates, outliers, layout, atlas),
        *([_label_issues(analysis, issues)] if issues is not None else []),
        _duplicates(analysis, duplicates),
        _outliers(analysis, outliers),
        *([_confusion_cells(analysis)] if labelled else []),
    ]
    return SectionResult(tuple(sections), manifest={"data_health": manifest})


def _name(analysis: Analysis, index: int) -> str:
    return analysis.all_sources[index].name


def _class(analysis: Analysis, index: int) -> str:
    names = analysis.class_names.names
    return names[index] if 0 <= index < len(names) else "unlabelled"


def _maps_link(analysis: Analysis, index: int) -> tuple[tuple[str, str], ...]:
    """A link to the image's row of maps, when it is in the detail sample (the page drops links to anything else)."""
    return (("maps", f"#{CAM_IMAGES}-{analysis.all_image_ids[index]}"),) if index in analysis.detail_indices else ()


def _thumbnails(analysis: Analysis, indices: Sequence[int], labels: Sequence[str], columns: int = 12) -> np.ndarray:
    tiles = [figures.fit_box(pixels, THUMB) for pixels in analysis.read_images(list(indices))]
    side = max(max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles))
    tiles = [_pad(t, side) for t in tiles]
    return figures.fit_width(figures.tile_grid(tiles, columns=min(columns, len(tiles)), labels=list(labels)))


def _pad(tile: np.ndarray, side: int) -> np.ndarray:
    out = np.full((side, side, 3), figures.BACKGROUND, np.uint8)
    h, w = tile.shape[:2]
    out[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = tile
    return out


# ------------------------------------------------------------------------------------------------ overview


def _overview(analysis: Analysis, table: Embeddings, issues: LabelIssues | None, duplicates: Duplicates,
              outliers: Outliers, layout: Layout, atlas: AtlasGrid) -> Section:
    plan_layer = analysis.cam_target.path if analysis.cam_target else "?"
    labelled = int(np.count_nonzero(table.labels >= 0))
    across = sum(p.across_classes for p in duplicates.pairs)
    facts = [
        ("Embedding", f"each image's {plan_layer} output averaged over the whole map (for the map and the "
                      f"outliers) and over a 4 x 4 grid of cells (for the duplicates), each projected by a seeded "
                      f"random projection: {table.embeddings.shape[1]} float16 dimensions, "
                      f"{table.embeddings.shape[1] * 2} bytes an image"),
        ("Images", f"{len(table)} ({labelled} labelled)"),
        ("Suspected label errors", "no labelled image" if issues is None else
         f"{len(issues.issues)} of {issues.labelled} labelled images ({issues.share:.1%}), by confident learning "
         "(Northcutt et al. 2021: per-class thresholds on the model's probabilities, pruned by noise rate, ranked "
         "by the probability of the given label)"),
        ("Near-duplicates", f"{duplicates.total} pairs with cosine similarity of at least {duplicates.threshold} "
                            f"({duplicates.method}), {across} of the listed across two classes"),
        ("Outliers", (f"none flagged: {sample_sizes.caveat(sample_sizes.OUTLIER_FLAGS, len(table))} The farthest "
                      "from every class centre are listed.") if not np.isfinite(outliers.cutoff) else
                     f"{outliers.flagged} images stand apart from every class centre (a distance more than "
                     f"{OUTLIER_MADS:g} robust standard deviations above the median, {outliers.cutoff:.3f}; centres "
                     f"of each {outliers.grouped_by} class); the farthest are listed"),
    ]
    blocks: list = [Facts(tuple(facts)), _map_figure(analysis, table, layout), _atlas_figure(analysis, atlas)]
    save = analysis.options.save_arrays
    return Section(id="data-health", kind=KIND, title="Data health", blocks=tuple(blocks),
                   data={"images": len(table), "labelled": labelled,
                         "explained_variance": [float(v) for v in layout.explained],
                         "layout_array_key": LAYOUT_KEY if save else None},
                   arrays={LAYOUT_KEY: _layout_by_entry(analysis, layout)} if save else {})


def _layout_by_entry(analysis: Analysis, layout: Layout) -> np.ndarray:
    """Each image's place on the map, in the order of report.json's `images` (every image read; NaN for one
    without an embedding): `diff` draws the images whose prediction changed on it."""
    dataset = analysis.dataset
    assert dataset is not None
    skipped = set(dataset.skipped)
    position = {i: k for k, i in enumerate(i for i in range(len(analysis.all_sources)) if i not in skipped)}
    placed = np.full((len(position), 2), np.nan, np.float32)
    for index, point in zip(layout.indices.tolist(), layout.coordinates, strict=True):
        placed[position[index]] = point
    return placed


def _map_figure(analysis: Analysis, table: Embeddings, layout: Layout) -> Figure:
    from reportgen import seeds

    rows = np.arange(len(layout.indices))
    if len(rows) > figures.MAP_POINTS:
        rows = np.sort(seeds.rng(analysis.options.seed, MAP_SAMPLE).choice(rows, figures.MAP_POINTS, replace=False))
    labels = table.labels[rows]
    groups = np.where(labels >= 0, labels, table.predicted[rows])
    wrong = (labels >= 0) & (labels != table.predicted[rows])
    explained = ", ".join(f"{v:.0%}" for v in layout.explained)
    sampled = f" ({len(rows)} of {len(layout.indices)} images drawn, a seeded sample)" if len(rows) < len(
        layout.indices) else ""
    caption = (f"Every image's embedding on the first two principal components (they explain {explained} of the "
               f"variance){sampled}. Left: coloured by label (by prediction where unlabelled; the ten largest "
               "classes, the rest grey). Right: the mistakes in red. Mistakes in a cluster of another class point "
               "at label errors or a confusable pair; a cluster of its own, at a group of odd images.")
    return Figure(key="data-health-map", title="Map of the set", caption=caption,
                  pixels=analysis.plot(figures.plot_embedding_map, layout.coordinates[rows], groups,
                                       list(analysis.class_names.names), wrong, "The image set, by its embeddings"))


def _atlas_figure(analysis: Analysis, atlas: AtlasGrid) -> Figure:
    """The atlas: the map cut into a grid, each non-empty cell drawn as the image nearest its centre."""
    cells = {(c.row, c.column): c for c in atlas.cells}
    images = dict(zip([c.index for c in atlas.cells],
                      analysis.read_images([c.index for c in atlas.cells]), strict=True))
    tiles, labels = [], []
    for row in reversed(range(atlas.size)):  # row 0 is the lowest y: draw the top row first, as on the map
        for column in range(atlas.size):
            cell = cells.get((row, column))
            if cell is None:
                tiles.append(np.full((THUMB, THUMB, 3), figures.BACKGROUND, np.uint8))
                labels.append("")
            else:
                tiles.append(_pad(figures.fit_box(images[cell.index], THUMB), THUMB))
                labels.append(f"{cell.count}")
    caption = (f"The map cut into {atlas.size} x {atlas.size} cells; each cell that holds images shows the one "
               "nearest its centre, with the number of images in the cell (Activation Atlas, Carter et al. 2019).")
    return Figure(key="data-health-atlas", title="Atlas of the set", caption=caption,
                  pixels=analysis.encode(figures.fit_width(figures.tile_grid(tiles, columns=atlas.size, pad=1,
                                                                             labels=labels))))


# ------------------------------------------------------------------------------------------------- lists


def _label_issues(analysis: Analysis, issues: LabelIssues) -> Section:
    listed = issues.issues[:LISTED]
    blocks: list = []
    if not listed:
        blocks.append(Text(f"No suspected label error among the {issues.labelled} labelled images."))
    else:
        shown = listed[:SHOWN]
        blocks.append(Figure(
            key="data-health-label-issues", title="Suspected label errors",
            caption=("The labelled images whose label the model's probabilities contradict most, most suspect "
                     "first: label -> the class the model suggests, and the probability of the given label."),
            pixels=analysis.encode(_thumbnails(
                analysis, [i.index for i in shown],
                [f"{_class(analysis, i.label)} -> {_class(analysis, i.suggested)}\n{i.score:.0%}" for i in shown]))))
        blocks.append(Table(
            columns=("Image", "Label", "Suggested", "p(label)"),
            rows=tuple((_name(analysis, i.index), _class(analysis, i.label), _class(analysis, i.suggested),
                        f"{i.score:.3f}") for i in listed),
            caption=(f"{len(issues.issues)} suspected label errors of {issues.labelled} labelled images"
                     + (f"; the first {LISTED} listed" if len(issues.issues) > LISTED else "") + "."),
            row_links=tuple(_maps_link(analysis, i.index) for i in listed)))
    return Section(id="data-health-label-issues", kind=KIND, title="Data health: suspected label errors",
                   blocks=tuple(blocks))


def _duplicates(analysis: Analysis, duplicates: Duplicates) -> Section:
    pairs = duplicates.pairs[:LISTED]
    blocks: list = []
    if not pairs:
        blocks.append(Text(f"No pair of images with cosine similarity of at least {duplicates.threshold}."))
    else:
        shown = pairs[:PAIRS_SHOWN]
        indices = [i for p in shown for i in (p.first, p.second)]
        labels = [f"{_class(analysis, label)}\n{p.similarity:.4f}" for p in shown for label in p.labels]
        blocks.append(Figure(
            key="data-health-duplicates", title="Near-duplicates",
            caption=("Pairs of images with nearly the same embedding, side by side (two pairs to a row): pairs "
                     "with different labels first (leakage between classes, or a label error), then by "
                     "similarity. Under each image its label and the pair's cosine similarity."),
            pixels=analysis.encode(_thumbnails(analysis, indices, labels, columns=4))))
        blocks.append(Table(
            columns=("Image", "Image", "Labels", "Similarity"),
            rows=tuple((_name(analysis, p.first), _name(analysis, p.second),
                        " / ".join(_class(analysis, label) for label in p.labels), f"{p.similarity:.4f}")
                       for p in pairs),
            caption=(f"{duplicates.total} pairs at cosine >= {duplicates.threshold} ({duplicates.method})"
                     + (f"; the first {len(pairs)} listed" if duplicates.total > len(pairs) else "") + ".")))
    return Section(id="data-health-duplicates", kind=KIND, title="Data health: near-duplicates",
                   blocks=tuple(blocks))


def _outliers(analysis: Analysis, outliers: Outliers) -> Section:
    entries = outliers.entries[:LISTED]
    shown = entries[:SHOWN]
    blocks: list = []
    if shown:
        blocks.append(Figure(
            key="data-health-outliers", title="Outliers",
            caption=("The images farthest from every class centre, farthest first; under each, the nearest class "
                     "and the distance (1 - cosine to that class's centre; ! when it stands "
                     "apart). A group of similar outliers (blank or corrupt frames) ranks together."),
            pixels=analysis.encode(_thumbnails(analysis, [o.index for o in shown],
                                               [f"{_class(analysis, o.nearest_class)}\n{o.score:.2f}"
                                                + (" !" if o.score > outliers.cutoff else "") for o in shown]))))
        blocks.append(Table(
            columns=("Image", "Nearest class", "Distance", "Stands apart"),
            rows=tuple((_name(analysis, o.index), _class(analysis, o.nearest_class), f"{o.score:.3f}",
                        "yes" if o.score > outliers.cutoff else "") for o in entries),
            caption=("Distance to the nearest class centre, the farthest first"
                     + (f"; above {outliers.cutoff:.3f} (! under a thumbnail) an image stands apart from the set."
                        if np.isfinite(outliers.cutoff) else "; too few images to flag any.")),
            row_links=tuple(_maps_link(analysis, o.index) for o in entries)))
    return Section(id="data-health-outliers", kind=KIND, title="Data health: outliers", blocks=tuple(blocks))


def _confusion_cells(analysis: Analysis) -> Section:
    """Every off-diagonal cell of the confusion matrix (the fullest CELLS_SHOWN) opens its images, the most
    confident mistakes first."""
    dataset = analysis.dataset
    assert dataset is not None
    labels, predicted, confidence = dataset.labels, dataset.predicted, dataset.confidence
    wrong = np.flatnonzero((labels >= 0) & (predicted >= 0) & (labels != predicted))
    cells: dict[tuple[int, int], list[int]] = {}
    for i in wrong[np.lexsort((wrong, -confidence[wrong]))]:  # most confident first, ties by index
        cells.setdefault((int(labels[i]), int(predicted[i])), []).append(int(i))
    ordered = sorted(cells.items(), key=lambda item: (-len(item[1]), item[0]))
    blocks: list = []
    if not ordered:
        blocks.append(Text("No labelled image is misclassified: the confusion matrix has no off-diagonal cell."))
    else:
        blocks.append(Text(f"{len(wrong)} mistakes in {len(ordered)} cells of the confusion matrix"
                           + (f"; the {CELLS_SHOWN} fullest cells shown" if len(ordered) > CELLS_SHOWN else "")
                           + ". Each cell: its images, the most confident mistake first."))
    for (label, guess), members in ordered[:CELLS_SHOWN]:
        shown = members[:PER_CELL]
        title = f"{_class(analysis, label)} predicted as {_class(analysis, guess)}"
        blocks.append(Figure(
            key=f"data-health-cell-{label}-{guess}", title=title,
            caption=(f"{len(members)} image{'s' if len(members) != 1 else ''} labelled {_class(analysis, label)} "
                     f"and predicted {_class(analysis, guess)}" + (f"; the {len(shown)} most confident shown" if
                                                                    len(members) > len(shown) else "")
                     + ": " + ", ".join(_name(analysis, i) for i in shown) + "."),
            pixels=analysis.encode(_thumbnails(analysis, shown, [f"{confidence[i]:.0%}" for i in shown],
                                               columns=PER_CELL))))
        detail = [i for i in shown if i in analysis.detail_indices]
        if detail:
            blocks.append(Table(columns=("Image", "p(prediction)"),
                                rows=tuple((_name(analysis, i), f"{confidence[i]:.3f}") for i in detail),
                                caption=f"{title}: the images of the detail sample, linked to their maps.",
                                row_links=tuple(_maps_link(analysis, i) for i in detail)))
    return Section(id="data-health-confusion", kind=KIND, title="Data health: confusion cells", blocks=tuple(blocks))


# ------------------------------------------------------------------------------------------------ report.json


def _manifest(analysis: Analysis, table: Embeddings, issues: LabelIssues | None, duplicates: Duplicates,
              outliers: Outliers) -> dict[str, Any]:
    """report.json's `data_health`: each list ranked most suspect first, images by name (as in `images`)."""
    return {
        "embedding": {"method": "random projections of the layer pooled whole and over a 4 x 4 grid", "dimensions":
                      int(table.embeddings.shape[1]), "layer": analysis.cam_target.path if analysis.cam_target
                      else None, "dtype": "float16"},
        "images": len(table),
        "labelled": int(np.count_nonzero(table.labels >= 0)),
        "label_issues": [] if issues is None else [
            {"image": _name(analysis, i.index), "label": _class(analysis, i.label),
             "suggested": _class(analysis, i.suggested), "score": i.score} for i in issues.issues[:LISTED]],
        "label_issue_count": 0 if issues is None else len(issues.issues),
        "label_issue_share": None if issues is None else issues.share,
        "duplicates": [{"images": [_name(analysis, p.first), _name(analysis, p.second)], "similarity": p.similarity,
                        "labels": [_class(analysis, label) if label >= 0 else None for label in p.labels],
                        "across_classes": p.across_classes} for p in duplicates.pairs[:LISTED]],
        "duplicate_count": duplicates.total,
        "duplicates_across_classes": sum(p.across_classes for p in duplicates.pairs),
        "duplicate_threshold": duplicates.threshold,
        "duplicate_method": duplicates.method,
        "outliers": [{"image": _name(analysis, o.index), "score": o.score,
                      "nearest_class": _class(analysis, o.nearest_class), "stands_apart": o.score > outliers.cutoff}
                     for o in outliers.entries[:LISTED]],
        "outlier_cutoff": outliers.cutoff if np.isfinite(outliers.cutoff) else None,
        "outliers_standing_apart": outliers.flagged,
    }
