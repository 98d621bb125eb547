"""Arrays -> figure pixels: tile grids and colormaps with numpy and OpenCV; matplotlib only for real plots.

Everything returns (H, W, 3) uint8 RGB arrays; encoding to PNG happens in `render`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np

MAX_FIGURE_WIDTH = 1600
BACKGROUND = 255
LABEL_SCALE = 0.35  # Hershey font scale of the text under grid tiles


def _diverging_lut() -> np.ndarray:
    """Blue - white - red, 256 entries: negative weights blue, zero white, positive red."""
    t = np.linspace(-1.0, 1.0, 256)[:, None]
    blue, white, red = np.array([33, 102, 172.0]), np.array([247, 247, 247.0]), np.array([178, 24, 43.0])
    lut = np.where(t < 0, white + (blue - white) * -t, white + (red - white) * t)
    return lut.round().astype(np.uint8)


DIVERGING = _diverging_lut()
_OPENCV_MAPS = {"viridis": cv2.COLORMAP_VIRIDIS, "inferno": cv2.COLORMAP_INFERNO, "jet": cv2.COLORMAP_JET,
                "turbo": cv2.COLORMAP_TURBO, "magma": cv2.COLORMAP_MAGMA}


def diverging(values: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] -> RGB through the blue-white-red map."""
    index = np.clip((np.asarray(values) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return DIVERGING[index]


def colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """Values in [0, 1] (any shape) -> RGB through an OpenCV colormap."""
    values = np.asarray(values, dtype=np.float32)
    index = np.clip(values * 255.0, 0, 255).round().astype(np.uint8)
    return _colormap_lut(name)[index]


@functools.cache
def _colormap_lut(name: str) -> np.ndarray:
    """The 256 RGB entries of an OpenCV colormap: indexing them maps any array at once, where `applyColorMap`
    wants an image and pays per row for a flattened one."""
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(16, 16), _OPENCV_MAPS[name])
    return np.ascontiguousarray(lut.reshape(256, 3)[:, ::-1])


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so each weight or activation stays a crisp square."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def tile_grid(
    tiles: np.ndarray | Sequence[np.ndarray],
    columns: int,
    pad: int = 2,
    labels: Sequence[str] | None = None,
    label_height: int = 14,
) -> np.ndarray:
    """Lay equally sized RGB tiles out in rows of `columns`, with optional text under each tile."""
    tiles = np.asarray(tiles)
    n, h, w = tiles.shape[:3]
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    cell_h = h + pad + (label_height if labels is not None else 0)
    grid = np.full((rows * cell_h + pad, columns * (w + pad) + pad, 3), BACKGROUND, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        y, x = pad + r * cell_h, pad + c * (w + pad)
        grid[y:y + h, x:x + w] = tiles[i]
        if labels is not None:
            text, (tw, th) = _fit_label(labels[i], w)
            cv2.putText(grid, text, (x + max(0, (w - tw) // 2), y + h + th + 2), cv2.FONT_HERSHEY_SIMPLEX,
                        LABEL_SCALE, (40, 40, 40), 1, cv2.LINE_AA)
    return grid


def _fit_label(text: str, width: int) -> tuple[str, tuple[int, int]]:
    """`text` shortened in the middle ("a_long..name.png") until it fits under a tile `width` px wide, so labels
    never run into the next tile; returns the text and its (width, height) in px."""
    size, _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, 1)
    keep = len(text)
    shown = text
    while size[0] > width and keep > 2:
        keep -= 1
        shown = text[:(keep + 1) // 2] + ".." + text[len(text) - keep // 2:]
        size, _ = cv2.getTextSize(shown, cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, 1)
    return shown, size


def fit_width(image: np.ndarray, max_width: int = MAX_FIGURE_WIDTH) -> np.ndarray:
    """Downscale (never enlarge) so the figure is at most `max_width` pixels wide."""
    h, w = image.shape[:2]
    if w <= max_width:
        return image
    new_h = max(1, round(h * max_width / w))
    return cv2.resize(image, (max_width, new_h), interpolation=cv2.INTER_AREA)


def hstack(images: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Images side by side, top aligned, on the background colour."""
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    x = 0
    for image in images:
        out[: image.shape[0], x: x + image.shape[1]] = image
        x += image.shape[1] + gap
    return out


def kernel_grid(kernel: np.ndarray, max_tiles: int = 1024, channel_order: str = "RGB") -> tuple[np.ndarray, str]:
    """Every filter of a conv kernel (kh, kw, in, out) as tiles; returns pixels and how to read them.

    A 3-channel first layer is shown in colour; otherwise each input channel of each filter gets a tile when
    that fits in `max_tiles`, else the mean over input channels. 1x1 kernels are shown as an in x out matrix.
    `channel_order` is the order in which the layer takes the colours (`BGR` for caffe-preprocessed models such
    as VGG16 and ResNet50): colour tiles are drawn with each weight on the colour it really sees.
    """
    kh, kw, n_in, n_out = kernel.shape
    finite = np.nan_to_num(kernel.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.abs(finite).max()) or 1.0
    normalised = finite / scale  # in [-1, 1], one scale for the layer so filters compare
    if kh == 1 and kw == 1:
        matrix = diverging(normalised[0, 0].T)  # (out, in, 3)
        zoom = max(1, min(8, 800 // max(n_in, n_out)))
        return upscale(matrix, zoom), (
            f"1x1 kernel as a matrix: one row per filter ({n_out}), one column per input channel ({n_in}); "
            f"blue negative, red positive, scaled by the largest |w| = {scale:.3g}"
        )
    zoom = max(1, 24 // max(kh, kw))
    if n_in == 3:
        zoom = max(1, 40 // max(kh, kw))  # few, colourful tiles: draw them large enough to read
        as_rgb = normalised[:, :, [channel_order.upper().index(c) for c in "RGB"]]  # input channel of R, G, B
        tiles = ((as_rgb.transpose(3, 0, 1, 2) + 1.0) * 127.5).round().astype(np.uint8)
        order = ("the 3 input channels as RGB" if channel_order.upper() == "RGB" else
                 f"the model takes the channels as {', '.join(channel_order.upper())}; drawn as R, G, B")
        caption = (f"{n_out} filters in colour ({order}, grey = 0), scaled by the layer's "
                   f"largest |w| = {scale:.3g}")
        columns = 16
    elif n_in * n_out <= max_tiles:
        tiles = diverging(normalised.transpose(3, 2, 0, 1).reshape(n_out * n_in, kh, kw))
        # A filter with few input channels (a grouped conv, e.g. ConvNeXt's depthwise Conv2D with one channel per
        # group) would make one narrow row per filter: a column of 768 tiles, taller than any screen (and than
        # WebP's 16383 px). Several such filters share a row instead, 16 tiles wide.
        per_row = 16 // n_in if n_in < 8 else 1
        columns = n_in * per_row
        rows = (f"one row per filter ({n_out})" if per_row == 1 else
                f"{n_out} filters, {per_row} to a row")
        caption = (f"{rows}, one tile per input channel ({n_in}); blue negative, red positive, scaled by the "
                   f"largest |w| = {scale:.3g}")
    else:
        mean = normalised.mean(axis=2)
        mean = mean / (np.abs(mean).max() or 1.0)
        tiles = diverging(mean.transpose(2, 0, 1))
        caption = (f"{n_out} filters, each the mean over its {n_in} input channels; blue negative, red positive, "
                   "each grid scaled to its largest |mean|")
        columns = 16
    tiles = np.stack([upscale(t, zoom) for t in tiles])
    return fit_width(tile_grid(tiles, columns=columns, pad=2)), caption


def plot_histogram(
    edges: np.ndarray,
    series: Sequence[tuple[str, np.ndarray, str]],
    title: str,
    xlabel: str = "weight value",
    size: tuple[float, float] = (6.4, 3.2),
) -> np.ndarray:
    """Overlaid step histograms over shared bin edges; returns RGB pixels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=size, dpi=100)
    axes = figure.add_subplot()
    for label, counts, color in series:
        axes.stairs(counts, edges, label=label, color=color, fill=True, alpha=0.35)
        axes.stairs(counts, edges, color=color, linewidth=1.2)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel, fontsize=9)
    axes.set_ylabel("count", fontsize=9)
    axes.tick_params(labelsize=8)
    axes.legend(fontsize=8, frameon=False)
    figure.tight_layout()
    return figure_pixels(figure)


def warm_up_plots() -> None:
    """Import matplotlib and load its fonts: the first plot otherwise waits about a second for them. The plotting
    worker (`reportgen.plot_worker`) does this first, while the report's process loads the model."""
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(1, 1), dpi=20)
    figure.add_subplot().set_title("warm", fontsize=8)
    figure_pixels(figure)


def figure_pixels(figure: object) -> np.ndarray:
    """Rasterise a matplotlib Figure to RGB uint8 without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def _box_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix averaging the source cells each target cell covers (area resampling, any ratio)."""
    edges = np.arange(target + 1, dtype=np.float64) * (source / target)
    starts, ends = edges[:-1, None], edges[1:, None]
    cells = np.arange(source, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(ends, cells + 1) - np.maximum(starts, cells), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_stack(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a stack of 2-D maps (n, h, w) to (n, height, width): whole multiples repeat pixels (crisp squares),
    anything else averages the covered area. Any n (OpenCV's resize takes at most 4 channels for area mode)."""
    stack = np.asarray(stack, dtype=np.float32)
    height, width = size
    _, h, w = stack.shape
    if (h, w) == (height, width):
        return stack
    if height % h == 0 and width % w == 0:
        return np.repeat(np.repeat(stack, height // h, axis=1), width // w, axis=2)
    if h % height == 0 and w % width == 0:  # whole-number shrink: the mean of each block, no matrix products
        n = stack.shape[0]
        return stack.reshape(n, height, h // height, width, w // width).mean(axis=(2, 4), dtype=np.float32)
    rows, columns = _box_weights(h, height), _box_weights(w, width)
    return np.matmul(np.matmul(rows, stack), columns.T)


def colormap_stack(stack: np.ndarray, size: tuple[int, int], name: str = "viridis") -> np.ndarray:
    """`colormap(resize_stack(stack, size))`: maps (n, h, w) in [0, 1] -> (n, height, width, 3) RGB. A whole-number
    enlargement colours the cells first and repeats the colours (the same pixels, for a fraction of the work)."""
    stack = np.asarray(stack, dtype=np.float32)
    height, width = size
    _, h, w = stack.shape
    if (h, w) != (height, width) and height % h == 0 and width % w == 0:
        coloured = colormap(stack, name)
        return np.repeat(np.repeat(coloured, height // h, axis=1), width // w, axis=2)
    return colormap(resize_stack(stack, size), name)


def tile_mosaic(tiles: np.ndarray, columns: int, pad: int = 2, background: int = BACKGROUND) -> np.ndarray:
    """Vectorised `tile_grid` without labels: (n, h, w, 3) uint8 tiles in rows of `columns`, same layout."""
    n, h, w = tiles.shape[:3]
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    cells = np.full((rows * columns, h + pad, w + pad, 3), background, dtype=np.uint8)
    cells[:n, pad:, pad:] = tiles
    grid = cells.reshape(rows, columns, h + pad, w + pad, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * (h + pad), columns * (w + pad), 3)
    out = np.full((grid.shape[0] + pad, grid.shape[1] + pad, 3), background, dtype=np.uint8)
    out[: grid.shape[0], : grid.shape[1]] = grid
    return out


@functools.lru_cache(maxsize=16)
def hatched(height: int, width: int, spacing: int = 6, fill: int = 215, line: int = 150) -> np.ndarray:
    """A flat grey tile with diagonal hatching: 'nothing to show here' (e.g. a constant map). One read-only array
    per size: a report draws the same tile for every dead channel of every image."""
    y, x = np.mgrid[:height, :width]
    tile = np.where((x + y) % spacing == 0, line, fill).astype(np.uint8)
    tile = np.repeat(tile[:, :, None], 3, axis=2)
    tile.setflags(write=False)
    return tile


def fit_box(image: np.ndarray, side: int) -> np.ndarray:
    """Scale an RGB image so its longer side is about `side`: area-averaged when shrinking, whole-number
    nearest-neighbour enlargement when small (never blurred)."""
    h, w = image.shape[:2]
    longest = max(h, w)
    if longest > side:
        size = (max(1, round(w * side / longest)), max(1, round(h * side / longest)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return upscale(image, side // longest)


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, name: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """A [0, 1] heatmap of any resolution, upsampled smoothly (cv2.resize, bilinear) and blended over an RGB image."""
    height, width = image.shape[:2]
    smooth = cv2.resize(np.asarray(heat, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colormap(smooth, name).astype(np.float32)
    return np.clip(blend, 0, 255).round().astype(np.uint8)


def heatmap_tile(heat: np.ndarray, size: tuple[int, int], name: str = "jet") -> np.ndarray:
    """A [0, 1] heatmap at its own resolution, enlarged without smoothing (each cell a crisp block) to (H, W)."""
    height, width = size
    cells = cv2.resize(np.asarray(heat, np.float32), (width, height), interpolation=cv2.INTER_NEAREST)
    return colormap(cells, name)


def plot_matrix(matrix: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str], title: str,
                xlabel: str, ylabel: str) -> np.ndarray:
    """A count matrix (e.g. a confusion matrix) as an annotated heat plot; returns RGB pixels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    rows, columns = matrix.shape
    side = min(9.0, 2.0 + 0.45 * max(rows, columns))
    figure = MplFigure(figsize=(side + 1.0, side), dpi=100)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0)
    peak = float(matrix.max()) if matrix.size else 0.0
    if rows * columns <= 900:
        for (r, c), value in np.ndenumerate(matrix):
            axes.text(c, r, str(value), ha="center", va="center", fontsize=7,
                      color="white" if peak and value > 0.6 * peak else "black")
    axes.set_xticks(range(columns), [str(label)[:18] for label in column_labels], rotation=60, ha="right",
                    fontsize=7)
    axes.set_yticks(range(rows), [str(label)[:18] for label in row_labels], fontsize=7)
    axes.set_xlabel(xlabel, fontsize=9)
    axes.set_ylabel(ylabel, fontsize=9)
    axes.set_title(title, fontsize=10)
    from matplotlib.ticker import MaxNLocator

    bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return figure_pixels(figure)


def plot_reliability(confidence: np.ndarray, accuracy: np.ndarray, counts: np.ndarray, edges: np.ndarray,
                     title: str) -> np.ndarray:
    """A reliability diagram: accuracy against confidence per bin, the diagonal of perfect calibration, and the
    share of images per bin below; returns RGB pixels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(4.8, 4.8), dpi=100)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    centres = (edges[:-1] + edges[1:]) / 2
    width = float(edges[1] - edges[0])
    filled = counts > 0
    top.bar(centres[filled], np.nan_to_num(accuracy[filled]), width=width * 0.95, color="#2c7fb8", label="accuracy")
    top.bar(centres[filled], np.nan_to_num(confidence[filled] - accuracy[filled]), bottom=np.nan_to_num(
        accuracy[filled]), width=width * 0.95, color="#c0392b", alpha=0.35, label="gap to confidence")
    top.plot([0, 1], [0, 1], color="#555555", linewidth=1, linestyle="--")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy", fontsize=9)
    top.set_title(title, fontsize=10)
    top.legend(fontsize=8, frameon=False, loc="upper left")
    share = counts / max(1, counts.sum())
    bottom.bar(centres, share, width=width * 0.95, color="#888888")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-1 probability)", fontsize=9)
    bottom.set_ylabel("images", fontsize=9)
    for axes in (top, bottom):
        axes.tick_params(labelsize=8)
    figure.tight_layout()
    return figure_pixels(figure)
