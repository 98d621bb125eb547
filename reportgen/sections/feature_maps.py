"""The `feature_maps` sections: an overview (layer statistics, images), then one section per layer holding every
image's channel grid next to the input image.

Maps come from one multi-output forward pass (`techniques.feature_maps`), batch by batch; each batch is turned into
figure pixels and statistics right away, so only the figures (and, with --save-arrays, the raw maps) are kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from reportgen import figures
from reportgen.analysis import Analysis
from reportgen.report import Facts, Figure, Section, SectionResult, SlugRegistry, Table, Text
from reportgen.sections.anchors import section_id
from reportgen.techniques.feature_maps import (
    VANISHING,
    ImageMapStats,
    LayerMapStats,
    LayerStatsAccumulator,
    auto_batch_size,
    image_stats,
    iter_feature_maps,
    map_shape,
    normalise_channels,
    select_layers,
)

KIND = "feature_maps"
OVERVIEW_ID = "feature-maps"
COLUMNS = 16  # channels per row; doubled for layers with more than MAX_ROWS rows of 16
MAX_ROWS = 32
# Tile pixels per figure: about 250 x 250 of channel tiles whatever the channel count, so big layers get smaller
# tiles and a report of many layers and images stays a reasonable size (VGG16 on 8 images: 144 figures; a
# 21-layer model on 64 images: 1344 figures, so every pixel here is paid for a thousand times).
GRID_AREA = 60_000
MIN_TILE = 16  # ... but a tile is not shrunk below this (a 14 x 14 map keeps its own pixels)
MAX_UPSCALED_TILE = 96  # small maps are enlarged (by whole numbers) up to this size, not beyond
PANEL = 128  # the input image's longer side in each figure
GAP = 8
PAD = 2
LABEL_MARGIN = 34  # room for the first channel index left of each row
DEAD_WARNING_SHARE = 0.5
# Layers with more channels than this show, on the page, only their strongest channels for every detail image in
# one figure; each image's grid of all channels is still written to figures/ and linked. (MobileNetV2's 52 conv
# layers with up to 960 channels made a 186 MB page of full grids for 10 images.)
FULL_GRID_CHANNELS = 64
STRONGEST = 16
STRONG_TILE = 40
HOW_TO_READ = (
    "One figure per image: the input on the left, then every channel of the layer in order, {columns} per row (the "
    "number left of a row is its first channel index). Each channel is scaled by its own minimum (dark) and maximum "
    "(yellow, viridis colormap) over that image, so every filter's spatial pattern is visible whatever its scale; "
    "brightness therefore does not compare across tiles or images (the tables give magnitudes). Min-max rather than "
    "a percentile clip because ReLU maps are mostly zeros and a filter firing on a few pixels is what a clip would "
    "erase. Hatched grey tiles are channels with a single value over that image (no pattern; a dead ReLU is 0)."
)


@dataclass(frozen=True)
class GridLayout:
    """How one layer's channels are drawn: `columns` per row, each map resized to `tile` (height, width)."""

    columns: int
    tile: tuple[int, int]
    native: tuple[int, int]

    @property
    def zoom(self) -> float:
        return self.tile[0] / self.native[0]


def grid_layout(height: int, width: int, channels: int, max_width: int = figures.MAX_FIGURE_WIDTH) -> GridLayout:
    """Tile size for a layer: about GRID_AREA pixels of tiles in all, within the figure width. Maps are shrunk or
    enlarged by whole numbers only (crisp squares when enlarged, plain block means when shrunk), and enlarged only
    when they are smaller than that target."""
    columns = COLUMNS
    while -(-channels // columns) > MAX_ROWS:
        columns *= 2
    room = max_width - PANEL - GAP - LABEL_MARGIN
    fit = max(1, (room - PAD) // columns - PAD)
    target = max(1, min(fit, max(MIN_TILE, math.sqrt(GRID_AREA / max(1, channels)))))
    longest = max(height, width)
    if longest >= target:
        factor = max(1, round(longest / target))
        while factor > 1 and longest / factor < MIN_TILE:
            factor -= 1
        tile = (max(1, round(height / factor)), max(1, round(width / factor)))
    else:
        factor = max(1, min(round(target / longest), min(fit, MAX_UPSCALED_TILE) // longest))
        tile = (height * factor, width * factor)
    return GridLayout(columns=columns, tile=tile, native=(height, width))


def _with_row_labels(grid: np.ndarray, layout: GridLayout, channels: int) -> np.ndarray:
    """The grid with each row's first channel index written in a left margin."""
    out = np.full((grid.shape[0], LABEL_MARGIN + grid.shape[1], 3), figures.BACKGROUND, dtype=np.uint8)
    out[:, LABEL_MARGIN:] = grid
    pitch = layout.tile[0] + PAD
    every = max(1, math.ceil(12 / pitch))  # labels need ~12 px; on tiny tiles label every few rows
    rows = -(-channels // layout.columns)
    for row in range(0, rows, every):
        text = str(row * layout.columns)
        (text_width, text_height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)
        y = PAD + row * pitch + (min(layout.tile[0], 24) + text_height) // 2
        cv2.putText(out, text, (LABEL_MARGIN - 4 - text_width, y), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (70, 70, 70), 1,
                    cv2.LINE_AA)
    return out


def feature_map_figure(unit: np.ndarray, constant: np.ndarray, panel: np.ndarray, layout: GridLayout) -> np.ndarray:
    """One image at one layer: the input `panel` beside the grid of all channels of `unit` (H, W, C) in [0, 1];
    channels flagged in `constant` (C,) are drawn hatched."""
    channels = unit.shape[2]
    tiles = figures.colormap_stack(np.moveaxis(unit, -1, 0), layout.tile, "viridis")
    if constant.any():
        tiles[constant] = figures.hatched(*layout.tile)
    grid = figures.tile_mosaic(tiles, layout.columns, pad=PAD)
    return figures.fit_width(figures.hstack([panel, _with_row_labels(grid, layout, channels)], gap=GAP))


def strongest_figure(rows: list[np.ndarray], panels: list[np.ndarray], channels: tuple[int, ...],
                     names: list[str]) -> np.ndarray:
    """Every detail image (a row: the image, then the chosen channels' maps, viridis) in one grid."""
    tiles, labels = [], []
    for row, panel, name in zip(rows, panels, names, strict=True):
        tiles.append(figures.fit_box(panel, STRONG_TILE))
        labels.append(name.rsplit("/", 1)[-1][:8])
        tiles.extend(row)
        labels.extend(f"ch {c}" for c in channels)
    return figures.fit_width(figures.tile_grid(tiles, columns=1 + len(channels), pad=2, labels=labels))


def _strong_tiles(unit: np.ndarray, constant: np.ndarray, channels: tuple[int, ...]) -> list[np.ndarray]:
    tiles = list(figures.colormap_stack(np.moveaxis(unit[:, :, list(channels)], -1, 0), (STRONG_TILE, STRONG_TILE),
                                        "viridis"))
    for k, c in enumerate(channels):
        if constant[c]:
            tiles[k] = figures.hatched(STRONG_TILE, STRONG_TILE)
    return tiles


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def _sparsity_text(stats: LayerMapStats) -> str:
    if math.isfinite(stats.sparsity):
        return f"{stats.sparsity:.1%}"
    return "n/a (signed output: no ReLU, zeros do not mean off)" if stats.images else "n/a"


def _dead_text(stats: LayerMapStats, limit: int = 24) -> str:
    dead = stats.dead_channels
    text = f"{len(dead)} of {stats.channels} ({stats.dead_share:.1%})"
    if dead:
        shown = ", ".join(str(c) for c in dead[:limit])
        text += f": {shown}{', …' if len(dead) > limit else ''}"
    return text


def _layer_data(stats: LayerMapStats, layout: GridLayout, array_key: str | None, image_ids: list[str],
                keys: list[str], per_image: list[ImageMapStats]) -> dict:
    return {
        "type": stats.type_name,
        "shape": list(stats.shape),
        "channels": stats.channels,
        "dead_channels": len(stats.dead_channels),
        "dead_share": stats.dead_share,
        "dead_channel_indices": list(stats.dead_channels),
        "mean_activation": stats.mean_activation,
        "sparsity": stats.sparsity,
        "rectified": stats.rectified,
        "vanishing": stats.vanishing,
        "min": stats.min,
        "max": stats.max,
        "non_finite": stats.non_finite,
        "normalisation": "per channel min-max over each image; constant channels hatched",
        "tile": list(layout.tile),
        "columns": layout.columns,
        "array_key": array_key,
        "images": [
            {"image": image_id, "figure": key, "mean": s.mean, "min": s.min, "max": s.max,
             "sparsity": s.sparsity if stats.rectified else None, "constant_channels": s.constant_channels}
            for image_id, key, s in zip(image_ids, keys, per_image, strict=True)
        ],
    }


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    options = analysis.options
    nodes = select_layers(analysis.layers, analysis.layer_shapes, options.layers)
    if not nodes:
        return SectionResult((Section(id=OVERVIEW_ID, kind=KIND, title="Feature maps",
                                      blocks=(Text("This model has no convolutional or pooling layer with a 4-D "
                                                   "output; --layers can choose others (activations, "
                                                   "normalisation, merges)."),)),),
                             ("feature maps: the model has no conv or pooling layer with a 4-D output; choose layers "
                              "with --layers",))
    paths = [node.path for node in nodes]
    shapes = {path: map_shape(analysis.layer_shapes, path) for path in paths}
    images = len(analysis.inputs)
    batch_size = min(options.batch_size or auto_batch_size(analysis.layer_shapes, paths, images), images)
    layouts = {path: grid_layout(*shapes[path]) for path in paths}
    panels = [figures.fit_box(image, PANEL) for image in analysis.display_images]
    registry = SlugRegistry()
    keys = {path: [registry.take(f"fm-{analysis.layer_slugs[path]}-{image_id}", "figure")
                   for image_id in analysis.image_ids] for path in paths}
    accumulators = {node.path: LayerStatsAccumulator(node, shapes[node.path]) for node in nodes}
    # Statistics over every image of the set when the dataset pass ran, else over the detail images.
    whole = analysis.dataset.layer_stats if analysis.dataset is not None else {}
    strongest = {path: whole[path].strongest_channels(STRONGEST) for path in paths
                 if path in whole and shapes[path][2] > FULL_GRID_CHANNELS}
    strong_rows: dict[str, list[list[np.ndarray]]] = {path: [] for path in strongest}
    pixels: dict[str, list[np.ndarray]] = {path: [] for path in paths}
    per_image: dict[str, list[ImageMapStats]] = {path: [] for path in paths}
    kept: dict[str, list[np.ndarray]] = {path: [] for path in paths}

    batches = -(-images // batch_size)
    analysis.progress(KIND, f"{len(paths)} layers, {images} images, batches of {batch_size}")
    for number, batch in enumerate(iter_feature_maps(analysis.model, analysis.inputs, paths, batch_size,
                                                     analysis.image_flops), start=1):
        analysis.progress(KIND, f"batch {number}/{batches}: figures")
        for path in paths:
            maps = batch.maps[path]
            normalised = normalise_channels(maps)
            accumulators[path].update(maps, normalised)
            per_image[path].extend(image_stats(maps, normalised))
            for j in range(len(maps)):
                # Encoded at once: raw grids of every layer and image would dominate the report's memory.
                pixels[path].append(analysis.encode(feature_map_figure(normalised.unit[j], normalised.constant[j],
                                                                       panels[batch.start + j], layouts[path]),
                                                    page=not strongest.get(path)))  # else only linked
                if path in strongest:
                    strong_rows[path].append(_strong_tiles(normalised.unit[j], normalised.constant[j],
                                                           strongest[path]))
            if options.save_arrays:
                kept[path].append(maps)

    stats = {path: whole[path] if path in whole else accumulators[path].result() for path in paths}
    names = [source.name for source in analysis.images.sources]
    strong_figures = {path: analysis.encode(strongest_figure(strong_rows[path], panels, strongest[path], names))
                      for path in strongest if strongest[path]}
    sections: list[Section] = []
    manifest: list[dict] = []
    warnings: list[str] = []
    for path in paths:
        s, layout = stats[path], layouts[path]
        sid = section_id(KIND, analysis, path)
        array_key = f"feature_maps.{analysis.layer_slugs[path]}" if options.save_arrays else None
        data = _layer_data(s, layout, array_key, analysis.image_ids, keys[path], per_image[path])
        strong = None
        if path in strong_figures:
            strong = Figure(key=f"{sid}-strongest", title=f"{path}: the {len(strongest[path])} strongest channels",
                            caption=(f"Each detail image (a row) at the {len(strongest[path])} of {s.channels} "
                                     "channels with the widest range of values over the whole set; each tile min-max "
                                     "scaled over its image. Every channel of every image is in the linked grids."),
                            pixels=strong_figures[path])
            data["strongest_channels"] = list(strongest[path])
        sections.append(_layer_section(analysis, path, sid, s, layout, keys[path], pixels[path], per_image[path],
                                       data, {array_key: np.concatenate(kept[path])} if array_key else {}, strong))
        manifest.append({"layer": path, "section": sid, "type": s.type_name, "shape": list(s.shape),
                         "channels": s.channels, "dead_channels": len(s.dead_channels), "dead_share": s.dead_share,
                         "mean_activation": s.mean_activation, "sparsity": s.sparsity, "rectified": s.rectified,
                         "vanishing": s.vanishing, "array_key": array_key,
                         "figures": dict(zip(analysis.image_ids, keys[path], strict=True))})
        if s.vanishing:
            continue  # one warning for all of them, below
        if s.dead_channels and s.dead_share >= DEAD_WARNING_SHARE:
            warnings.append(f"feature maps: {path} has {len(s.dead_channels)} of {s.channels} channels that are "
                            f"{'zero' if s.rectified else 'constant'} on every image (dead units?)")
        if s.non_finite:
            warnings.append(f"feature maps: {path} has {s.non_finite} NaN or Inf values")
    vanishing = [path for path in paths if stats[path].vanishing]
    if vanishing:
        largest = max(max(abs(stats[p].min), abs(stats[p].max)) for p in vanishing)
        shown = ", ".join(vanishing[:4]) + (f" and {len(vanishing) - 4} more" if len(vanishing) > 4 else "")
        warnings.append(
            f"feature maps: the activations of {len(vanishing)} layers vanish ({shown}: every value within "
            f"{VANISHING:g} of 0, the largest |value| {largest:.1e}); their maps are drawn blank, not stretched to "
            "full contrast: the model computes nothing there (untrained or broken weights?)")
    return SectionResult((_overview(analysis, paths, stats, per_image, keys, batch_size), *sections),
                         tuple(warnings), manifest={KIND: manifest})


def _layer_section(analysis: Analysis, path: str, sid: str, stats: LayerMapStats, layout: GridLayout,
                   keys: list[str], pixels: list[np.ndarray], per_image: list[ImageMapStats], data: dict,
                   arrays: dict[str, np.ndarray], strong: Figure | None = None) -> Section:
    height, width, channels = stats.shape
    facts = Facts((
        ("Layer type", stats.type_name),
        ("Maps", f"{height} × {width}, {channels} channels; drawn as {layout.tile[0]} × {layout.tile[1]} px tiles, "
                 f"{layout.columns} per row"),
        ("Dead channels (one value on every image)", _dead_text(stats)),
        ("Mean activation", _fmt(stats.mean_activation)),
        ("Sparsity (share of exact zeros)", _sparsity_text(stats)),
        ("Value range", f"{_fmt(stats.min)} to {_fmt(stats.max)}"
                        + (" (vanishing: drawn blank)" if stats.vanishing else "")),
    ))
    sources = analysis.images.sources
    table = Table(
        columns=("Image", "Label", "Mean", "Max", "Zeros", "Constant channels"),
        rows=tuple((source.name, source.label or "", _fmt(s.mean), _fmt(s.max),
                    f"{s.sparsity:.1%}" if stats.rectified else "n/a",
                    f"{s.constant_channels} of {channels}") for source, s in zip(sources, per_image, strict=True)),
        caption="This layer on each image; constant channels are hatched in the image's figure.",
    )
    blocks: list = [facts, Text(HOW_TO_READ.format(columns=layout.columns)), table]
    if strong is not None:
        blocks.append(strong)
    for source, key, image_pixels, s in zip(sources, keys, pixels, per_image, strict=True):
        label = f" (label {source.label})" if source.label else ""
        hatched = f"; {s.constant_channels} constant, hatched" if s.constant_channels else ""
        blocks.append(Figure(
            key=key,
            title=f"{path} on {source.name}{label}",
            caption=(f"{channels} channels{hatched}. Values {_fmt(s.min)} to {_fmt(s.max)}, mean {_fmt(s.mean)}"
                     + (f", {s.sparsity:.0%} zeros" if stats.rectified else " (signed output)")
                     + "; each channel min-max scaled over this image."),
            pixels=image_pixels,
            embed=strong is None,  # with the strongest channels on the page, the full grids are linked files
        ))
    return Section(id=sid, kind=KIND, title=f"Feature maps: {path}", blocks=tuple(blocks), layer=path, data=data,
                   arrays=arrays)


def _overview(analysis: Analysis, paths: list[str], stats: dict[str, LayerMapStats],
              per_image: dict[str, list[ImageMapStats]], keys: dict[str, list[str]], batch_size: int) -> Section:
    links = tuple(("maps", "#" + section_id(KIND, analysis, path)) for path in paths)
    layers = Table(
        columns=("Layer", "Type", "Map size", "Channels", "Dead channels", "Mean activation", "Sparsity"),
        rows=tuple(
            (path, s.type_name, f"{s.shape[0]} × {s.shape[1]}", str(s.channels),
             f"{len(s.dead_channels)} ({s.dead_share:.0%})", _fmt(s.mean_activation),
             "vanishing" if s.vanishing else (f"{s.sparsity:.1%}" if math.isfinite(s.sparsity) else "n/a (signed)"))
            for path, s in stats.items()
        ),
        caption=("Dead: one value at every position on every image (for a ReLU output, zero). Sparsity: share of "
                 "exact zeros over all images, positions and channels, for rectified (ReLU-like) outputs only: a "
                 "signed output such as a conv before its batch norm has no 'off'. Mean activation over the same. "
                 f"Vanishing: every value within {VANISHING:g} of 0."),
        row_links=tuple((link,) for link in links),
    )
    total_channels = sum(s.channels for s in stats.values())
    rows = []
    for i, source in enumerate(analysis.images.sources):
        constant = sum(per_image[path][i].constant_channels for path in paths)
        rows.append((source.name, source.label or "", f"{constant} of {total_channels}"))
    images = Table(
        columns=("Image", "Label", "Constant channels, all layers"),
        rows=tuple(rows),
        caption=("Every layer section shows the images in this order; the links go to this image's maps at each "
                 "layer. The figure of an image at a layer is figures/fm-<layer>-<image>.png (keys in "
                 "report.json)."),
        row_links=tuple(tuple((path, "#" + keys[path][i]) for path in paths)
                        for i in range(len(analysis.images.sources))),
    )
    choice = "chosen with --layers" if analysis.options.layers else "every convolution and pooling layer"
    intro = Text(f"Activations of {len(paths)} layers ({choice}) on {len(analysis.images.sources)} images, from one "
                 f"forward pass in batches of {batch_size}.")
    if analysis.dataset is not None and analysis.dataset.images > len(analysis.images.sources):
        intro = Text(f"Activations of {len(paths)} layers ({choice}). The statistics (dead channels, mean, sparsity) "
                     f"are over all {analysis.dataset.images} images, from the dataset pass; the figures show the "
                     f"{len(analysis.images.sources)} images of the detail sample.")
    return Section(id=OVERVIEW_ID, kind=KIND, title="Feature maps", blocks=(intro, layers, images),
                   data={"layers": paths, "batch_size": batch_size})
