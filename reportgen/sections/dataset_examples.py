"""The `dataset_examples` sections: per conv layer, for each chosen filter, its ascent and descent patterns beside
the patches of the images of the whole set that drive it most and least (OpenAI Microscope's layout): the
synthetic answer to "what does this filter respond to" next to the natural one."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from reportgen import figures
from reportgen.analysis import Analysis
from reportgen.report import Figure, Section, SectionResult, Text
from reportgen.sections.anchors import section_id
from reportgen.sections.filter_patterns import class_labels, filter_name
from reportgen.techniques.dataset_examples import FilterExamples, ReceptiveField

KIND = "dataset_examples"
PATCH = 48  # px, the side of each patch tile
BLANK = 235


def _patch(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    crop = image[y0:y1, x0:x1]
    if crop.size == 0:
        return np.full((PATCH, PATCH, 3), BLANK, np.uint8)
    return figures.fit_box(cv2.resize(crop, (PATCH, PATCH), interpolation=cv2.INTER_AREA if crop.shape[0] > PATCH
                                      else cv2.INTER_NEAREST), PATCH)


def _pattern_tile(tiles: Mapping[tuple[str, str], Any], layer: str, direction: str,
                  filter_index: int) -> np.ndarray | None:
    """The filter's pattern tile from the filter_patterns section (`tiles`), None when it did not draw one."""
    shown = tiles.get((layer, direction))
    if shown is None or filter_index not in shown[0]:
        return None
    tile = shown[1][list(shown[0]).index(filter_index)]
    return cv2.resize(tile, (PATCH, PATCH), interpolation=cv2.INTER_AREA)


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    dataset = analysis.dataset
    if dataset is None or not dataset.examples:
        return SectionResult(())
    searched = earlier.get("filter_patterns")
    patterns = searched.shared.get("pattern_tiles", {}) if searched is not None else {}
    by_layer: dict[str, list[FilterExamples]] = defaultdict(list)
    for examples in dataset.examples:
        by_layer[examples.layer].append(examples)
    wanted = sorted({r.index for e in dataset.examples for r in (*e.top, *e.bottom)})
    analysis.progress(KIND, f"{len(by_layer)} layers, {len(wanted)} images read again for their patches")
    images = dict(zip(wanted, analysis.read_images(wanted), strict=True))
    manifest: list[dict[str, Any]] = []
    sections = [Section(id="dataset-examples", kind=KIND, title="Dataset examples", blocks=(Text(
        f"For each chosen filter of {len(by_layer)} conv layers: its patterns (the synthetic inputs that drive it "
        f"up and down, when the filter_patterns section ran), then the {analysis.options.examples} images of all "
        f"{dataset.images} that drive it most (its mean activation over the map, the quantity its ascent pattern "
        "maximises) and the ones that drive it least, each cut to the receptive field of the filter's strongest "
        "(weakest) position. Kept as a bounded top-k per filter while the images streamed through the model."),),
        data={"layers": list(by_layer), "examples": analysis.options.examples})]
    outputs = {path: rows[0].output or path for path, rows in by_layer.items()}
    fields = analysis.receptive_fields(list(outputs.values()))
    for path, rows in by_layer.items():
        sections.append(_layer_section(analysis, path, rows, fields[outputs[path]], images, manifest, patterns))
    return SectionResult(tuple(sections), manifest={"dataset_examples": manifest})


def _layer_section(analysis: Analysis, path: str, rows: list[FilterExamples], field: ReceptiveField,
                   images: dict[int, np.ndarray], manifest: list[dict[str, Any]],
                   patterns: Mapping[tuple[str, str], Any]) -> Section:
    k = analysis.options.examples
    classes = class_labels(analysis, path)  # a class-score conv's filters are named by their class
    tiles, labels = [], []
    for examples in rows:
        for direction in ("ascent", "descent"):
            tile = _pattern_tile(patterns, path, direction, examples.filter)
            tiles.append(np.full((PATCH, PATCH, 3), BLANK, np.uint8) if tile is None else tile)
            labels.append(f"{filter_name(examples.filter, classes)} {'up' if direction == 'ascent' else 'down'}")
        for kind, ranked in (("top", examples.top), ("bottom", examples.bottom)):
            entries = []
            for j in range(k):
                if j < len(ranked):
                    entry = ranked[j]
                    box = field.box(*entry.extra[0])
                    tiles.append(_patch(images[entry.index], box))
                    labels.append(f"{entry.score:.3g}")
                    entries.append({"image": entry.name, "activation": entry.score, "patch": list(box)})
                else:
                    tiles.append(np.full((PATCH, PATCH, 3), BLANK, np.uint8))
                    labels.append("")
            manifest.append({"layer": path, "output": examples.output or path, "filter": examples.filter,
                             "kind": kind, "images": entries})
    sid = section_id(KIND, analysis, path)
    grid = figures.fit_width(figures.tile_grid(tiles, columns=2 + 2 * k, pad=3, labels=labels))
    caption = (("One row per filter, labelled with the class whose score it is" if classes else "One row per filter")
               + f": its ascent and descent patterns, the {k} images that drive it most (mean "
               f"activation under each), then the {k} that drive it least. Patches: the receptive field of one "
               f"cell, {field.size[0]}x{field.size[1]} px of the model input, at the filter's strongest (weakest) "
               "cell.")
    figure = Figure(key=f"{sid}-grid", title=f"{path}: patterns and dataset examples", caption=caption,
                    pixels=analysis.encode(grid))
    output = rows[0].output or path
    note = Text(f"Ranked by each filter's mean at {output}, the output its patterns drive." if output != path else
                f"Ranked by each filter's mean at {path}.")
    return Section(id=sid, kind=KIND, title=f"Dataset examples: {path}", blocks=(note, figure), layer=path,
                   data={"filters": [e.filter for e in rows], "receptive_field": list(field.size), "output": output})
