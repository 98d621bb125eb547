"""How far to trust a heatmap: deletion / insertion AUC and the model-randomisation sanity check.

- Deletion and insertion (Petsiuk et al., RISE, BMVC 2018): remove the pixels the map ranks highest, step by step,
  and follow the class probability; a map that found what the model uses makes it fall fast (low deletion AUC).
  Insertion starts from a blurred image and puts the pixels back in the same order (high AUC is good). Each
  image's curves for all its classes go through the model in one batch.
- Model randomisation (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018): the maps of the trained
  model against those of the same architecture freshly initialised. A method whose maps barely change (Spearman
  rank correlation above 0.5) shows the image more than the model and is flagged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

DELETION_STEPS = 16
# Memory: the variants go through the model in chunks of at most this many bytes (float32) and variants; a chunk
# of VGG16 at 224 px (106 variants) takes a few seconds on 2 cores. Small images fit every map of an image in one
# chunk (8 maps' curves): on a small CNN each call costs more in dispatch than in arithmetic.
CURVE_CHUNK_BYTES = 64 << 20
CURVE_CHUNK_VARIANTS = 16 * (DELETION_STEPS + 1)
# Pixels are ranked on at most this many cells per side: a 4096 px image is deleted in 8x8 blocks, whose ranks
# take 2 MB rather than the 128 MB of one rank per pixel (and its sort).
MAX_RANK_SIDE = 512
PROGRESS_SECONDS = 5.0  # at most this long between progress lines while curves run
SANITY_THRESHOLD = 0.5
# Insertion starts from the image blurred with a Gaussian of this share of its longer side: shapes and textures
# are gone, the overall colours stay (so the start is "no evidence", not an out-of-distribution black image).
BLUR_SHARE = 0.1
# A map whose range is below this share of its peak has one value: float32 rounding, not a ranking.
EMPTY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Curves:
    """Class probability while pixels are deleted / inserted in map order, for T maps of one image."""

    deletion: np.ndarray  # (T, steps + 1); [:, 0] is the probability of the intact image
    insertion: np.ndarray  # (T, steps + 1); [:, -1] is the probability of the intact image

    @property
    def deletion_auc(self) -> np.ndarray:
        return area_under(self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray:
        return area_under(self.insertion)


def area_under(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area of curves sampled at evenly spaced fractions 0..1 (last axis)."""
    steps = curves.shape[-1] - 1
    return (curves[..., 1:] + curves[..., :-1]).sum(axis=-1) / (2.0 * steps)


def pixel_order(heatmap: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Rank of every pixel (H, W) when sorted by the map upsampled to `size` (H, W), highest first.

    Ties (e.g. the zeros a ReLU leaves) are broken at random, so a flat region is removed in no particular order.
    """
    height, width = size
    values = cv2.resize(np.asarray(heatmap, np.float32), (width, height), interpolation=cv2.INTER_LINEAR).ravel()
    order = np.lexsort((rng.random(values.size), -values))
    ranks = np.empty(values.size, np.int64)
    ranks[order] = np.arange(values.size)
    return ranks.reshape(height, width)


def blurred(image: np.ndarray) -> np.ndarray:
    """The insertion start: the image blurred with a Gaussian of BLUR_SHARE of its longer side. Above
    MAX_RANK_SIDE the blur runs on the image scaled down to it and is scaled back up (a kernel of 10% of a 4096 px
    side is 2,400 px wide; the blurred image has nothing finer to lose)."""
    pixels = np.asarray(image, np.float32)
    height, width = pixels.shape[:2]
    rows, columns = _rank_grid(height, width)
    small = pixels if (rows, columns) == (height, width) else cv2.resize(pixels, (columns, rows),
                                                                         interpolation=cv2.INTER_AREA)
    sigma = BLUR_SHARE * max(rows, columns)
    out = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    if (rows, columns) != (height, width):
        out = cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(image.shape)


def deletion_insertion(
    probabilities: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    heatmaps: Sequence[np.ndarray],
    classes: Sequence[int],
    steps: int = DELETION_STEPS,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Curves:
    """Deletion and insertion curves of one image (H, W, C model input) for T heatmaps and their classes.

    Deleted pixels take the image's mean colour; insertion starts from the blurred image. Both curves' ends are
    the same for every map (the intact image, the image all mean colour, the blurred image), so they go through
    the model once; the T x 2 x (steps - 1) variants between are built in float32 and go through
    `probabilities` in chunks (at most CURVE_CHUNK_BYTES and CURVE_CHUNK_VARIANTS), so memory does not grow with
    the number of maps and steps, only with one chunk of the image's size. Pixels are ranked on a grid of at most
    MAX_RANK_SIDE cells per side (the whole image below that size, so the curves are exactly those of ranking
    every pixel); larger images delete the grid's cells, each a small block of pixels. `progress(done, total)`
    is called after each chunk.
    """
    height, width, channels = image.shape
    grid = _rank_grid(height, width)
    rng = np.random.default_rng(seed)
    cells = grid[0] * grid[1]
    counts = np.round(np.linspace(0.0, 1.0, steps + 1) * cells).astype(np.int64)
    image32 = np.asarray(image, np.float32)
    mean_colour = image.reshape(-1, channels).mean(axis=0).astype(np.float32)
    start = blurred(image32)
    if not heatmaps:
        empty = np.zeros((0, steps + 1))
        return Curves(empty, empty)
    interior = counts[1:-1]
    total = 3 + 2 * len(heatmaps) * len(interior)
    per_chunk = max(1, min(CURVE_CHUNK_VARIANTS, CURVE_CHUNK_BYTES // max(1, image32.nbytes), total))
    chunk = np.empty((per_chunk, height, width, channels), np.float32)
    outputs: list[np.ndarray] = []
    filled = 0

    def flush() -> None:
        nonlocal filled
        outputs.append(np.asarray(probabilities(chunk[:filled])).reshape(filled, -1))
        filled = 0
        if progress is not None:
            progress(sum(len(o) for o in outputs), total)

    def add(variant: np.ndarray, where: np.ndarray | None = None, fill: np.ndarray | None = None) -> None:
        nonlocal filled
        np.copyto(chunk[filled], variant)
        if where is not None:
            np.copyto(chunk[filled], fill, where=where[..., None])
        filled += 1
        if filled == per_chunk:
            flush()

    add(image32)  # deletion's start and insertion's end
    add(np.broadcast_to(mean_colour, image32.shape))  # deletion's end: every pixel deleted
    add(start)  # insertion's start
    for heatmap in heatmaps:
        ranks = pixel_order(heatmap, grid, rng)
        for deletion in (True, False):
            for count in interior:
                taken = ranks < count  # cells in map order so far
                if grid != (height, width):
                    taken = cv2.resize(taken.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
                if deletion:
                    add(image32, taken, mean_colour)
                else:
                    add(start, taken, image32)
    if filled:
        flush()
    probs = np.concatenate(outputs)
    classes = np.asarray(classes)
    ends = probs[:3][:, classes].T  # (T, 3): intact, all deleted, blurred
    middle = probs[3:].reshape(len(heatmaps), 2, len(interior), -1)
    picked = np.take_along_axis(middle, classes[:, None, None, None], axis=3)[..., 0]  # (T, 2, steps - 1)
    deletion = np.concatenate([ends[:, :1], picked[:, 0], ends[:, 1:2]], axis=1)
    insertion = np.concatenate([ends[:, 2:3], picked[:, 1], ends[:, :1]], axis=1)
    return Curves(deletion=deletion, insertion=insertion)


def _rank_grid(height: int, width: int) -> tuple[int, int]:
    """(rows, columns) pixels are ranked on: the image itself up to MAX_RANK_SIDE, else scaled down to it."""
    scale = min(1.0, MAX_RANK_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class CurvesProgress:
    """Progress lines for the curves of many images: a line after a chunk when `every` seconds have passed since
    the last one, so no stretch of curves runs silently for long (VGG16's took minutes)."""

    def __init__(self, report: Callable[[str], None] | None, images: int, clock: Callable[[], float] = time.monotonic,
                 every: float = PROGRESS_SECONDS) -> None:
        self.report, self.images, self.clock, self.every = report, images, clock, every
        self.last = clock()

    def image(self, index: int) -> Callable[[int, int], None] | None:
        """The `progress` callback for the curves of image `index` (all its maps and the random baseline)."""
        if self.report is None:
            return None

        def update(done: int, total: int) -> None:
            now = self.clock()
            if now - self.last >= self.every:
                self.last = now
                self.report(f"deletion and insertion curves: image {index + 1} of {self.images}, "
                            f"{done}/{total} variants of its maps")

        return update


def random_maps(shape: tuple[int, int], count: int, seed: int) -> list[np.ndarray]:
    """Uniform noise maps at a heatmap's resolution: the baseline a method's AUCs should beat."""
    rng = np.random.default_rng(seed)
    return [rng.random(shape).astype(np.float32) for _ in range(count)]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's correlation needs)."""
    flat = np.asarray(values, np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    ranks = np.empty(flat.size, np.float64)
    ranks[order] = np.arange(1, flat.size + 1)
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    sums = np.zeros(counts.size)
    np.add.at(sums, inverse, ranks)
    return sums[inverse] / counts[inverse]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape; NaN when either map is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def is_empty(heatmap: np.ndarray) -> bool:
    """A map with no positive evidence or a single value: it ranks nothing, so it explains nothing."""
    values = np.asarray(heatmap, np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return True
    peak, low = float(values.max()), float(values.min())
    return peak <= 0 or peak - low <= EMPTY_TOLERANCE * abs(peak)


@dataclass(frozen=True)
class SanityCheck:
    """Model randomisation for one method: trained maps against the freshly initialised model's maps.

    A pair is compared only when both maps rank something. An empty map of the trained model is a failure to
    explain, never a pass; when no pair can be compared the check is undetermined, not passed.
    """

    method: str
    correlations: tuple[float, ...]  # per compared pair; NaN where either map is empty
    trained_empty: int  # trained maps that are empty or constant
    fresh_empty: int
    threshold: float = SANITY_THRESHOLD

    @property
    def compared(self) -> int:
        return int(np.count_nonzero(np.isfinite(np.asarray(self.correlations, np.float64))))

    @property
    def correlation(self) -> float:
        """Mean rank correlation over the pairs where both maps rank something; NaN when there is none."""
        values = np.asarray(self.correlations, np.float64)
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else float("nan")

    @property
    def status(self) -> str:
        """`passes`, `flagged` (maps survive re-initialisation), `empty maps` or `undetermined`."""
        if self.trained_empty:
            return "empty maps"
        if not self.compared:
            return "undetermined"
        return "flagged" if self.correlation > self.threshold else "passes"

    @property
    def flagged(self) -> bool:
        """Anything but a pass."""
        return self.status != "passes"

    def describe(self) -> str:
        """One sentence for the page, the warnings and summary.md."""
        total = len(self.correlations)
        if self.status == "empty maps":
            return (f"fails: {self.trained_empty} of {total} maps of the trained model are empty (no positive "
                    "evidence anywhere), so the method explains nothing there")
        if self.status == "undetermined":
            return f"undetermined: every map of the freshly initialised model is empty ({self.fresh_empty} of {total})"
        empty = f"; {self.fresh_empty} fresh maps were empty and not compared" if self.fresh_empty else ""
        verdict = ("flagged: the maps barely depend on the trained weights" if self.status == "flagged" else
                   "passes: the maps change when the weights are re-initialised")
        return (f"rank correlation {self.correlation:.2f} with the freshly initialised model over {self.compared} "
                f"maps ({verdict}){empty}")


def sanity_check(method: str, trained: Sequence[np.ndarray], fresh: Sequence[np.ndarray],
                 threshold: float = SANITY_THRESHOLD) -> SanityCheck:
    """Compare each trained map with the fresh model's map for the same image and class."""
    correlations = []
    trained_empty = fresh_empty = 0
    for a, b in zip(trained, fresh, strict=True):
        empty_a, empty_b = is_empty(a), is_empty(b)
        trained_empty += empty_a
        fresh_empty += empty_b
        correlations.append(float("nan") if empty_a or empty_b else rank_correlation(a, b))
    return SanityCheck(method, tuple(correlations), trained_empty, fresh_empty, threshold)


def trustworthy(beats_random: bool, sanity_status: str | None) -> bool:
    """Whether a method's maps may be shown as evidence of what the model uses: they beat a random map on
    deletion and insertion, and the sanity check passed (or could not run: no fresh copy of the model)."""
    return bool(beats_random) and sanity_status in ("passes", None)
