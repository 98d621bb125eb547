"""Arrays -> figure pixels: tile grids and colormaps with numpy and OpenCV; matplotlib only for real plots.

Everything returns (H, W, 3) uint8 RGB arrays; encoding to PNG happens in `render`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    """Lay equally sized RGB tiles out in rows of `columns`, with optional text under each tile: wrapped onto as
    many lines as the longest needs (at most LABEL_LINES), so a file or class name is shown whole."""
    tiles = np.asarray(tiles)
    n, h, w = tiles.shape[:3]
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    wrapped = [_wrap_label(text, w) for text in labels] if labels is not None else None
    lines = max((len(lines) for lines in wrapped), default=1) if wrapped is not None else 0
    cell_h = h + pad + label_height * lines
    grid = np.full((rows * cell_h + pad, columns * (w + pad) + pad, 3), BACKGROUND, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        y, x = pad + r * cell_h, pad + c * (w + pad)
        grid[y:y + h, x:x + w] = tiles[i]
        for k, (text, (tw, th)) in enumerate(wrapped[i] if wrapped is not None else ()):
            cv2.putText(grid, text, (x + max(0, (w - tw) // 2), y + h + th + 2 + k * label_height),
                        cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, (40, 40, 40), 1, cv2.LINE_AA)
    return grid


LABEL_LINES = 2  # a tile label wraps onto at most this many lines; past them it is shortened in the middle


def _text_width(text: str, scale: float = LABEL_SCALE) -> int:
    """Pixels `text` takes in the Hershey font at `scale` (tile labels by default)."""
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]


def _wrap_label(text: str, width: int) -> list[tuple[str, tuple[int, int]]]:
    """`text` broken onto lines that fit under a tile `width` px wide: at spaces, else after / _ - or anywhere;
    the last of LABEL_LINES lines shortened in the middle when the text is longer still."""
    if "\n" in text:  # the caller's own line breaks
        head, tail = text.split("\n", 1)
        return [_fit_label(head, width), *_wrap_label(tail, width)][:LABEL_LINES]
    lines: list[str] = []
    rest = text
    while rest and len(lines) < LABEL_LINES - 1 and _text_width(rest) > width:
        cut = len(rest)
        while cut > 1 and _text_width(rest[:cut]) > width:
            cut -= 1
        breaks = [i + 1 for i in range(cut) if rest[i] in " /_-"]
        cut = breaks[-1] if breaks and breaks[-1] > cut // 3 else cut
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        lines.append(rest)
    return [_fit_label(line, width) for line in lines]


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


def kernel_scale(kernel: np.ndarray, max_tiles: int = 1024, depthwise: bool = False) -> float:
    """The value `kernel_grid` draws at full colour by default: the largest finite |w|, or, where the grid shows each
    filter's mean over its input channels (more than `max_tiles` tiles otherwise), the largest |mean|."""
    finite = np.nan_to_num(np.asarray(kernel, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if _draws_means(finite.shape, max_tiles, depthwise):
        finite = finite.mean(axis=2)
    return float(np.abs(finite).max()) if finite.size else 0.0


def _draws_means(shape: tuple[int, ...], max_tiles: int, depthwise: bool = False) -> bool:
    kh, kw, n_in, n_out = shape
    return not depthwise and (kh, kw) != (1, 1) and n_in != 3 and n_in * n_out > max_tiles


def square_columns(count: int, tile_shape: tuple[int, int] = (1, 1)) -> int:
    """Columns that lay `count` tiles of (height, width) out in a near-square grid: ceil(sqrt(count)) for square
    tiles. A row or column of 64 depthwise tiles is 1,700 px long and 26 px across; 8 x 8 reads at a glance."""
    h, w = tile_shape
    return max(1, min(count, math.ceil(math.sqrt(count * h / w))))


def _aspect(rows: int, columns: int, tile_shape: tuple[int, int]) -> float:
    """How far from square a grid is: max(height / width, width / height), >= 1."""
    ratio = rows * tile_shape[0] / (columns * tile_shape[1])
    return max(ratio, 1.0 / ratio)


# A grid of one row per filter and one tile per input channel keeps that layout while it is at most this many
# times longer one way than the other; past it, filters share rows (many filters) or wrap over several (few).
MAX_GRID_ASPECT = 2.0


def _filter_layout(n_in: int, n_out: int, tile_shape: tuple[int, int]) -> tuple[int, int, str]:
    """(columns, rows per filter, how to read it) for one tile per input channel of every filter, filter by filter.

    One row per filter when that grid is near square; several filters to a row when there are many filters of few
    channels (ConvNeXt's grouped (7, 7, 1, 768)); each filter over a block of rows when a few filters have many
    channels (a (3, 3, 64, 1) head)."""
    if _aspect(n_out, n_in, tile_shape) <= MAX_GRID_ASPECT:
        return n_in, 1, f"one row per filter ({n_out}), one tile per input channel ({n_in})"
    if n_out * tile_shape[0] > n_in * tile_shape[1]:  # tall: several filters share a row
        ideal = math.sqrt(n_out * tile_shape[0] / (n_in * tile_shape[1]))
        per_row = min((max(1, math.floor(ideal)), math.ceil(ideal)),
                      key=lambda k: (_aspect(-(-n_out // k), n_in * k, tile_shape), -k))
        return n_in * per_row, 1, (f"{n_out} filters, {per_row} to a row, one tile per input channel ({n_in})"
                                   if n_in > 1 else f"{n_out} filters of one input channel, {per_row} to a row")

    def score(columns: int) -> tuple[bool, int, float]:  # near square first, then fewest blank cells
        block = -(-n_in // columns)
        aspect = _aspect(n_out * block, columns, tile_shape)
        return aspect > MAX_GRID_ASPECT, columns * block - n_in, aspect

    columns = min(range(1, n_in + 1), key=score)
    block = -(-n_in // columns)
    who = "the filter" if n_out == 1 else f"each filter ({n_out})"
    return columns, block, f"{who} over {block} rows, one tile per input channel ({n_in}), {columns} to a row"


def kernel_grid(kernel: np.ndarray, max_tiles: int = 1024, channel_order: str = "RGB", scale: float | None = None,
                depthwise: bool = False, colour_bar: bool = False) -> tuple[np.ndarray, str]:
    """Every filter of a conv kernel (kh, kw, in, out) as tiles; returns pixels and how to read them.

    A 3-channel first layer is shown in colour; otherwise each input channel of each filter gets a tile when
    that fits in `max_tiles`, else the mean over input channels. 1x1 kernels are shown as an in x out matrix.
    A depthwise kernel (kh, kw, in, multiplier) has one tile per output channel, in a near-square grid.
    `channel_order` is the order in which the layer takes the colours (`BGR` for caffe-preprocessed models such
    as VGG16 and ResNet50): colour tiles are drawn with each weight on the colour it really sees.
    `scale` is the value drawn at full colour (default `kernel_scale(kernel)`; `shared_kernel_grids` gives several
    kernels one); `colour_bar` draws it under the grid.
    """
    own = scale is None
    scale = kernel_scale(kernel, max_tiles, depthwise) if scale is None else scale
    pixels, how, rgb = _draw_kernel(kernel, max_tiles, channel_order, scale, depthwise)
    how += f", full colour at {_measure(kernel.shape, max_tiles, depthwise)} = {scale:.3g}"
    how += " (the largest)" if own else ""
    if colour_bar:
        pixels = below(pixels, _scale_bar(kernel.shape, max_tiles, depthwise, rgb, scale))
        how += " (the bar below)"
    return pixels, how


def _measure(shape: tuple[int, ...], max_tiles: int, depthwise: bool) -> str:
    return "|mean w|" if _draws_means(shape, max_tiles, depthwise) else "|w|"


def _scale_bar(shape: tuple[int, ...], max_tiles: int, depthwise: bool, rgb: bool, scale: float) -> np.ndarray:
    if rgb:
        return rgb_bar(scale)
    return diverging_bar(scale, "mean w" if _draws_means(shape, max_tiles, depthwise) else "w")


def _draw_kernel(kernel: np.ndarray, max_tiles: int, channel_order: str, scale: float,
                 depthwise: bool) -> tuple[np.ndarray, str, bool]:
    """The pixels of `kernel_grid` with `scale` at full colour, how the tiles are laid out, and whether they are
    colour (RGB) tiles."""
    kh, kw, n_in, n_out = kernel.shape
    finite = np.nan_to_num(kernel.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if _draws_means(kernel.shape, max_tiles, depthwise):
        finite = finite.mean(axis=2, keepdims=True)  # `scale` is then a largest |mean|
    normalised = np.clip(finite / (float(scale) or 1.0), -1.0, 1.0)  # one scale for the layer: filters compare
    if kh == 1 and kw == 1 and not depthwise:
        matrix = diverging(normalised[0, 0].T)  # (out, in, 3)
        zoom = max(1, min(8, 800 // max(n_in, n_out)))
        return upscale(matrix, zoom), (f"1x1 kernel as a matrix: one row per filter ({n_out}), one column per input "
                                       f"channel ({n_in}); blue negative, red positive"), False
    zoom = max(1, 24 // max(kh, kw))
    rgb = n_in == 3 and not depthwise
    if depthwise:
        count = n_in * n_out
        tiles = diverging(normalised.reshape(kh, kw, count).transpose(2, 0, 1))  # output channel c * m + j
        columns = square_columns(count, (kh, kw))
        split = f"{n_in} input channels x {n_out}" if n_out > 1 else f"{n_in} input channels"
        how = (f"depthwise kernel: one tile per output channel ({split}), in channel order, {columns} to a row "
               "(a near-square grid); blue negative, red positive")
    elif rgb:
        zoom = max(1, 40 // max(kh, kw))  # few, colourful tiles: draw them large enough to read
        as_rgb = normalised[:, :, [channel_order.upper().index(c) for c in "RGB"]]  # input channel of R, G, B
        tiles = ((as_rgb.transpose(3, 0, 1, 2) + 1.0) * 127.5).round().astype(np.uint8)
        order = ("the 3 input channels as RGB" if channel_order.upper() == "RGB" else
                 f"the model takes the channels as {', '.join(channel_order.upper())}; drawn as R, G, B")
        columns = square_columns(n_out, (kh, kw))
        how = f"{n_out} filters in colour ({order}, grey = 0), {columns} to a row"
    elif n_in * n_out <= max_tiles:
        columns, block, layout = _filter_layout(n_in, n_out, (kh, kw))
        # a filter over a block of rows ends it with blank cells; filters sharing a row need none
        cells = block * columns if block > 1 else n_in
        tiles = np.full((n_out, cells, kh, kw, 3), BACKGROUND, np.uint8)
        tiles[:, :n_in] = diverging(normalised.transpose(3, 2, 0, 1))  # (out, in, kh, kw, 3)
        tiles = tiles.reshape(-1, kh, kw, 3)
        how = f"{layout}; blue negative, red positive"
    else:
        tiles = diverging(normalised[:, :, 0].transpose(2, 0, 1))
        columns = square_columns(n_out, (kh, kw))
        how = (f"{n_out} filters, each the mean over its {n_in} input channels, {columns} to a row; "
               "blue negative, red positive")
    tiles = np.stack([upscale(t, zoom) for t in tiles])
    return fit_width(tile_grid(tiles, columns=columns, pad=2)), how, rgb


@dataclass(frozen=True)
class KernelGrids:
    """Kernels of one shape (a layer trained and freshly initialised) drawn on one colour scale."""

    pixels: tuple[np.ndarray, ...]  # each grid with its colour bar
    caption: str  # how to read every grid: layout, colours and the shared scale
    scale: float  # the value drawn at full colour in every grid
    measure: str  # what `scale` measures: "|w|", or "|mean w|" for the means over input channels


def shared_kernel_grids(kernels: Sequence[np.ndarray], names: Sequence[str], channel_order: str = "RGB",
                        depthwise: bool = False, max_tiles: int = 1024) -> KernelGrids:
    """Each kernel (all of one shape) drawn as `kernel_grid` draws it, on one colour scale, the largest of their
    `kernel_scale`s, each with its colour bar: equal weights are equal colours in every grid. Scaled each to its
    own maximum, a heavy-tailed trained kernel looked pale beside a uniform fresh one a third of its std. The
    maximum rather than a percentile: no weight is clipped, so no colour stands for a value the weights lack."""
    own = [kernel_scale(k, max_tiles, depthwise) for k in kernels]
    scale = max(own, default=0.0) or 1.0
    drawn = [kernel_grid(k, max_tiles, channel_order, scale=scale, depthwise=depthwise, colour_bar=True)
             for k in kernels]
    pixels = [grid for grid, _ in drawn]
    measure = _measure(kernels[0].shape, max_tiles, depthwise)
    largest = ", ".join(f"{name} {value:.3g}" for name, value in zip(names, own, strict=True))
    which = "larger" if len(kernels) == 2 else "largest"
    caption = (f"{drawn[0][1]}; one colour scale for the {' and '.join(names)} grids: {scale:.3g} is the {which} "
               f"of their largest {measure} ({largest}), so equal colours are equal values.")
    return KernelGrids(tuple(pixels), caption, scale, measure)


BAR_WIDTH = 160
TEXT_COLOUR = (40, 40, 40)
BAR_FONT_SCALE = 0.4


def _put(image: np.ndarray, text: str, x: int, baseline: int) -> None:
    cv2.putText(image, text, (x, baseline), cv2.FONT_HERSHEY_SIMPLEX, BAR_FONT_SCALE, TEXT_COLOUR, 1, cv2.LINE_AA)


def _bar(ramps: Sequence[tuple[str, np.ndarray]], scale: float, ramp_height: int, gap: int = 3) -> np.ndarray:
    """Labelled colour ramps (name, (BAR_WIDTH, 3) colours from -scale to +scale), one above the other, with the
    values of both ends and of the middle written under them."""
    left = 4 + max(_text_width(name, BAR_FONT_SCALE) for name, _ in ramps) + 6
    low, high = f"-{scale:.3g}", f"+{scale:.3g}"
    left = max(left, 4 + _text_width(low, BAR_FONT_SCALE) // 2)  # room for the value under the left end
    width = left + BAR_WIDTH + _text_width(high, BAR_FONT_SCALE) // 2 + 4
    ticks = 4 + len(ramps) * (ramp_height + gap) - gap
    strip = np.full((ticks + 3 + 16, width, 3), BACKGROUND, np.uint8)
    for i, (name, colours) in enumerate(ramps):
        top = 4 + i * (ramp_height + gap)
        strip[top:top + ramp_height, left:left + BAR_WIDTH] = colours[None]
        _put(strip, name, 4, top + (ramp_height + 9) // 2)  # the Hershey capitals are about 9 px tall
    for x, text in ((left, low), (left + BAR_WIDTH // 2, "0"), (left + BAR_WIDTH - 1, high)):
        strip[ticks:ticks + 3, x] = TEXT_COLOUR
        _put(strip, text, x - _text_width(text, BAR_FONT_SCALE) // 2, ticks + 15)
    return strip


def diverging_bar(scale: float, name: str = "w") -> np.ndarray:
    """The blue-white-red scale from -scale to +scale, as `kernel_grid` draws it."""
    return _bar([(name, diverging(np.linspace(-1.0, 1.0, BAR_WIDTH)))], scale, 10)


def rgb_bar(scale: float) -> np.ndarray:
    """The colour tiles' scale: a weight on one input channel from -scale to +scale, the others 0 (grey)."""
    level = ((np.linspace(-1.0, 1.0, BAR_WIDTH) + 1.0) * 127.5).round().astype(np.uint8)
    ramps = []
    for channel, name in enumerate("RGB"):
        colours = np.full((BAR_WIDTH, 3), 128, np.uint8)
        colours[:, channel] = level
        ramps.append((f"w on {name}", colours))
    return _bar(ramps, scale, 11)


def below(image: np.ndarray, strip: np.ndarray, gap: int = 4) -> np.ndarray:
    """`strip` under `image`, both left aligned, on the background colour."""
    width = max(image.shape[1], strip.shape[1])
    out = np.full((image.shape[0] + gap + strip.shape[0], width, 3), BACKGROUND, np.uint8)
    out[:image.shape[0], :image.shape[1]] = image
    out[image.shape[0] + gap:, :strip.shape[1]] = strip
    return out


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


MAP_POINTS = 20_000  # points drawn on the map of the set at most (a seeded sample beyond): a figure, not a database


def plot_embedding_map(coordinates: np.ndarray, groups: np.ndarray, group_names: Sequence[str], wrong: np.ndarray,
                       title: str) -> np.ndarray:
    """The 2-D layout of the set's embeddings twice, side by side: coloured by group (label, or prediction when
    unlabelled; at most 10 colours, the rest grey) and by correctness (mistakes red on grey); returns RGB pixels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(11.0, 5.0), dpi=100)
    left, right = figure.subplots(1, 2)
    palette = matplotlib.colormaps["tab10"].colors
    counts = np.bincount(groups[groups >= 0], minlength=len(group_names)) if len(groups) else np.zeros(0, int)
    shown = [int(g) for g in np.argsort(-counts, kind="stable")[:10] if counts[g] > 0]
    size = max(2.0, min(18.0, 4000.0 / max(len(coordinates), 1)))
    others = ~np.isin(groups, shown)
    left.scatter(coordinates[others, 0], coordinates[others, 1], s=size, c="#c8c8c8", linewidths=0)
    for k, group in enumerate(shown):
        mine = groups == group
        left.scatter(coordinates[mine, 0], coordinates[mine, 1], s=size, color=palette[k % 10], linewidths=0,
                     label=str(group_names[group])[:24])
    if shown:
        left.legend(fontsize=7, markerscale=max(1.0, 12 / size), loc="best", frameon=False)
    left.set_title("by class", fontsize=10)
    right.scatter(coordinates[~wrong, 0], coordinates[~wrong, 1], s=size, c="#c8c8c8", linewidths=0,
                  label="right or unlabelled")
    right.scatter(coordinates[wrong, 0], coordinates[wrong, 1], s=size * 1.6, c="#d62728", linewidths=0,
                  label="wrong")
    right.legend(fontsize=7, markerscale=max(1.0, 12 / size), loc="best", frameon=False)
    right.set_title("mistakes", fontsize=10)
    for axes in (left, right):
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_xlabel("first principal component", fontsize=8)
        axes.set_ylabel("second principal component", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure_pixels(figure)
