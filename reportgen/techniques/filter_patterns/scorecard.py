"""How far each pattern can be trusted: robust (kept under small changes of view), specific (drives its own filter
more than the others' patterns do), saturated (pixels at the range's ends)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.graph import walk_layers
from reportgen.techniques.filter_patterns.search import LayerPatterns, channel_means
from reportgen.techniques.filter_patterns.targets import first_conv

# The fixed views of the scorecard's robust activation: (rotation in degrees, scale, shift x and y as shares of the
# width and height), each applied about the image centre with bilinear sampling and mirrored borders.
ROBUST_VIEWS = ((5.0, 1.0, 0.0, 0.0), (-5.0, 1.0, 0.0, 0.0), (0.0, 1.1, 0.0, 0.0), (0.0, 0.9, 0.0, 0.0),
                (0.0, 1.0, 0.0625, 0.0), (0.0, 1.0, 0.0, -0.0625), (3.0, 1.05, 0.03, 0.03), (-3.0, 0.95, -0.03, 0.03))
SATURATION_MARGIN = 0.01  # a pixel within this share of the range's ends is saturated
# Scores the page flags: a pattern that does not survive a small change of view, that drives other filters as
# much as its own, or that is mostly clipping.
FLAG_ROBUST = 0.5
FLAG_SPECIFICITY = 0.5
FLAG_SATURATION = 0.10


def view_transform(view: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """(2, 3) map from each output pixel (x, y, 1) to the input point it samples, for one of `ROBUST_VIEWS`."""
    degrees, scale, shift_x, shift_y = view
    angle = np.deg2rad(degrees)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    tx, ty = shift_x * width, shift_y * height
    return np.array([[cos, -sin, cx - cos * cx + sin * cy + tx], [sin, cos, cy - sin * cx - cos * cy + ty]])


def robust_views(inputs: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (V, N, H, W, C): every image in each of `ROBUST_VIEWS` (the affine per-pixel preprocessing
    commutes with resampling, so model inputs can be transformed directly)."""
    import tensorflow as tf

    height, width = inputs.shape[1:3]
    out = []
    for view in ROBUST_VIEWS:
        row = np.concatenate([view_transform(view, height, width).ravel(), [0.0, 0.0]]).astype(np.float32)
        out.append(tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.constant(inputs, tf.float32), transforms=tf.constant(np.tile(row, (len(inputs), 1))),
            output_shape=tf.constant([height, width], tf.int32), fill_value=tf.constant(0.0),
            interpolation="BILINEAR", fill_mode="REFLECT").numpy())
    return np.stack(out)


@dataclass(frozen=True)
class Scorecard:
    """How far each pattern of one direction can be trusted, in the order of `DirectionPatterns.inputs`."""

    activation: np.ndarray  # (P,) the filter's mean output on its pattern (float32)
    robust: np.ndarray  # (P,) share of the pattern's gain over its start kept by `ROBUST_VIEWS` (`robust_share`)
    specificity: np.ndarray  # (P,) share of the other filters' patterns on which the filter responds less
    saturation: np.ndarray  # (P,) share of pixel values within `SATURATION_MARGIN` of the range's ends
    two_level: bool = False  # the first conv layer: its best image is two-level, so saturation is not flagged

    def flags(self, index: int, direction: str) -> tuple[str, ...]:
        out = []
        if direction == "ascent" and self.robust[index] < FLAG_ROBUST:
            out.append("fragile")
        # Descent is scored but not flagged for these: behind a ReLU many patterns tie at zero.
        if direction == "ascent" and self.specificity[index] < FLAG_SPECIFICITY:
            out.append("unspecific")
        if self.saturation[index] > FLAG_SATURATION and not self.two_level:
            out.append("saturated")
        return tuple(out)


# A search that moved its filter by less than this share of the larger of its start and final activation has no
# gain to keep: its robust share would be a ratio of rounding errors, so it is left unmeasured (None).
MIN_ROBUST_GAIN = 0.01


def robust_share(viewed: np.ndarray, activation: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The share of a pattern's gain over its start (`activation - start`, up for ascent, down for descent) that
    the views keep on average (`viewed - start`), clipped to [0, 1]; nan where the gain is below `MIN_ROBUST_GAIN`
    of the activations' scale.

    Not `viewed / activation`: that ratio explodes where the activation is near zero (790% on a test model, -192%
    on a real layer of fer's mini-Xception) and flips with the last bits of the arithmetic. Measured from the
    start and bounded, 1 means every view drives the filter as far as the pattern does, 0 that the views undo
    the whole search."""
    gain = activation - start
    scale = np.maximum(np.abs(activation), np.abs(start))
    measurable = np.abs(gain) > MIN_ROBUST_GAIN * scale
    share = (viewed - start) / np.where(measurable, gain, 1.0)
    return np.where(measurable, np.clip(share, 0.0, 1.0), np.nan)


def score_patterns(model: Any, result: LayerPatterns, direction: str, display: np.ndarray,
                   compute_dtype: str = "float32") -> Scorecard:
    """The scorecard of `result`'s patterns in `direction`; `display` holds the same patterns as pixels in [0, 1]
    (the preprocessing inverted)."""
    return score_layer(model, result, {direction: display}, compute_dtype)[direction]


def score_layer(model: Any, result: LayerPatterns, displays: dict[str, np.ndarray],
                compute_dtype: str = "float32") -> dict[str, Scorecard]:
    """The scorecards of `result`'s patterns in each direction of `displays` (direction -> the patterns as pixels
    in [0, 1]); see `score_layers`."""
    return score_layers(model, [result], [displays], compute_dtype)[0]


def score_layers(model: Any, results: Sequence[LayerPatterns], displays: Sequence[dict[str, np.ndarray]],
                 compute_dtype: str = "float32") -> list[dict[str, Scorecard]]:
    """The scorecards of each result's patterns in each direction of its `displays` (direction -> the patterns as
    pixels in [0, 1]). Responses are the model's own outputs of the target layer: every filter's float32 response
    to every pattern (`DirectionPatterns.responses`, from the search's own re-evaluation), for specificity, and one
    pass over all the patterns' views in `compute_dtype` (robustness is a share of the activation, which bfloat16
    keeps to about 1%). Results on one canvas (one search's) share that pass."""
    stacks = [np.concatenate([r.direction(d).inputs for d in shown]) for r, shown in zip(results, displays,
                                                                                          strict=True)]
    sizes = {stack.shape[1:] for stack in stacks}
    if len(sizes) > 1:  # canvases differ: one pass per result
        return [card for r, shown in zip(results, displays, strict=True)
                for card in score_layers(model, [r], [shown], compute_dtype)]
    outputs = [r.target.output if r.target is not None else r.layer for r in results]
    # Rows view by view, then result by result, then each result's own rows.
    views = robust_views(np.concatenate(stacks))  # (V, N, H, W, C)
    means = channel_means(model, outputs, views.reshape(-1, *views.shape[2:]), compute_dtype=compute_dtype)
    two_level_layer = first_conv(walk_layers(model))
    cards_of, first = [], 0
    for result, shown, stack, output in zip(results, displays, stacks, outputs, strict=True):
        rows = slice(first, first + len(stack))
        first += len(stack)
        viewed_all = means[output].reshape(len(ROBUST_VIEWS), -1, means[output].shape[-1])[:, rows][
            :, :, list(result.filters)]
        cards_of.append(_scorecards(result, shown, viewed_all, two_level_layer == result.layer))
    return cards_of


def _scorecards(result: LayerPatterns, displays: dict[str, np.ndarray], viewed_all: np.ndarray,
                two_level: bool) -> dict[str, Scorecard]:
    """One result's scorecards from `viewed_all` (V, its patterns of every direction of `displays`, its filters):
    the filters' responses to each view of each pattern."""
    k = result.diversity
    cards, start = {}, 0
    own = np.concatenate([result.direction(d).responses for d in displays])
    for direction in displays:
        count = len(result.direction(direction).inputs)
        responses = own[start:start + count]  # (pattern, filter)
        viewed = viewed_all[:, start:start + count]
        start += count
        filters = np.repeat(result.filters, k)
        column = np.arange(count) // k  # pattern i is of filter result.filters[i // k]
        own_view = viewed[:, np.arange(count), column].mean(axis=0)
        activation = result.direction(direction).activation
        robust = robust_share(own_view, activation, np.repeat(result.start_activation, k))
        specificity = np.full(count, np.nan)
        for i, (f, j) in enumerate(zip(filters, column, strict=True)):
            others = responses[filters != f, j]
            if others.size:
                below = others < responses[i, j] if direction == "ascent" else others > responses[i, j]
                specificity[i] = float(np.mean(below))
        display = displays[direction]
        saturated = (display <= SATURATION_MARGIN) | (display >= 1.0 - SATURATION_MARGIN)
        cards[direction] = Scorecard(activation=activation, robust=robust, specificity=specificity,
                                     saturation=saturated.reshape(count, -1).mean(axis=1), two_level=two_level)
    return cards
