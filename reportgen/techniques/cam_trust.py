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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

DELETION_STEPS = 16
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
    sigma = BLUR_SHARE * max(image.shape[:2])
    out = cv2.GaussianBlur(np.asarray(image, np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma,
                           borderType=cv2.BORDER_REFLECT)
    return out.reshape(image.shape)


def deletion_insertion(
    probabilities: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    heatmaps: Sequence[np.ndarray],
    classes: Sequence[int],
    steps: int = DELETION_STEPS,
    seed: int = 0,
) -> Curves:
    """Deletion and insertion curves of one image (H, W, C model input) for T heatmaps and their classes.

    Deleted pixels take the image's mean colour; insertion starts from the blurred image. All 2 x T x (steps + 1)
    variants go through `probabilities` in one call.
    """
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    counts = np.round(np.linspace(0.0, 1.0, steps + 1) * height * width).astype(np.int64)
    mean_colour = image.reshape(-1, image.shape[-1]).mean(axis=0)
    start = blurred(image)
    variants = []
    for heatmap in heatmaps:
        ranks = pixel_order(heatmap, (height, width), rng)
        taken = (ranks[None] < counts[:, None, None])[..., None]  # (steps + 1, H, W, 1): pixels in map order so far
        variants.append(np.where(taken, mean_colour, image))
        variants.append(np.where(taken, image, start))
    if not variants:
        empty = np.zeros((0, steps + 1))
        return Curves(empty, empty)
    probs = probabilities(np.concatenate(variants).astype(np.float32))
    probs = probs.reshape(len(heatmaps), 2, steps + 1, -1)
    picked = probs[np.arange(len(heatmaps)), :, :, np.asarray(classes)]  # (T, 2, steps + 1)
    return Curves(deletion=picked[:, 0], insertion=picked[:, 1])


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
