"""Dataset examples (OpenAI Microscope's idea): for each chosen filter, the images of the whole set that drive it
most and least, by the filter's mean activation over the map (the quantity its pattern maximises), each with the
patch of the image at the receptive field of the filter's strongest (weakest) position.

`FilterExtremes` streams: per filter it keeps only the k best and k worst images seen so far (ties by image name),
so memory does not grow with the number of images, and partial results from several workers merge exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen import seeds
from reportgen.graph import input_tape, run_layers
from reportgen.techniques.streaming import Ranked

DEFAULT_EXAMPLES = 6


@dataclass(frozen=True)
class FilterExamples:
    layer: str
    filter: int
    top: tuple[Ranked, ...]  # extra: ((row, col) of the strongest cell,)
    bottom: tuple[Ranked, ...]  # extra: ((row, col) of the weakest cell,)
    output: str = ""  # the layer whose channel means rank the images


class FilterExtremes:
    """Top-k and bottom-k images per filter of one layer, by the filter's spatial mean activation.

    Kept as arrays (filters x k) and merged with one sort per filter, so a batch costs a few vectorised
    operations however many filters there are. Ties go to the image whose name sorts first: `name_rank` maps an
    image index to its position in the sorted names (the same on every worker).
    """

    def __init__(self, layer: str, filters: Sequence[int], k: int = DEFAULT_EXAMPLES,
                 name_rank: np.ndarray | None = None, output: str | None = None) -> None:
        self.layer = layer
        self.output = output or layer  # whose channel means rank the images (the patterns' target)
        self.filters = tuple(int(f) for f in filters)
        self.channels = np.asarray(self.filters, np.int64)  # where each filter's map is in the layer's output
        self.k = k
        self.name_rank = name_rank
        f = len(self.filters)
        # Per side: score (F, n), image index (F, n), cell (F, n, 2); n <= k.
        self.sides = {side: (np.zeros((f, 0)), np.zeros((f, 0), np.int64), np.zeros((f, 0, 2), np.int64))
                      for side in ("top", "bottom")}
        self.names: dict[int, str] = {}

    def _keep(self, side: str, scores: np.ndarray, indices: np.ndarray, cells: np.ndarray | None,
              maps: np.ndarray | None = None) -> None:
        """Merge candidates (F, n) into one side. `cells` (F, n, 2), or None with `maps` (n, h, w, C): then the
        cells are found only for the candidates that make the list, so a batch costs one argmax per newcomer,
        not one per image and filter."""
        old_scores, old_indices, old_cells = self.sides[side]
        kept = old_scores.shape[1]
        scores = np.concatenate([old_scores, scores], axis=1)
        indices = np.concatenate([old_indices, indices], axis=1)
        ranks = self.name_rank[indices] if self.name_rank is not None else indices
        keyed = -scores if side == "top" else scores
        keyed = np.where(np.isfinite(keyed), keyed, np.inf)  # NaN never wins
        order = np.lexsort((ranks, keyed), axis=-1)[:, :self.k]  # every filter's row sorted at once
        take = np.take_along_axis
        if cells is None:
            filters, slots = np.nonzero(order >= kept)
            fresh = np.zeros((len(self.filters), order.shape[1], 2), np.int64)
            fresh[:, :, :] = take(old_cells, np.minimum(order, max(0, kept - 1))[..., None], axis=1) if kept \
                else 0
            if len(filters):
                images = order[filters, slots] - kept
                chosen = maps[images, :, :, self.channels[filters]]  # (M, h, w): one map per newcomer
                flat = chosen.reshape(len(images), -1)
                best = flat.argmax(axis=1) if side == "top" else flat.argmin(axis=1)
                fresh[filters, slots] = np.stack(np.unravel_index(best, chosen.shape[1:]), axis=1)
            self.sides[side] = (take(scores, order, axis=1), take(indices, order, axis=1), fresh)
            return
        cells = np.concatenate([old_cells, cells], axis=1)
        self.sides[side] = (take(scores, order, axis=1), take(indices, order, axis=1),
                            take(cells, order[..., None], axis=1))

    def update(self, indices: np.ndarray, names: list[str], means: np.ndarray, maps: np.ndarray) -> None:
        """means (B, F): each filter's mean over the map; maps (B, h, w, C): the layer's whole output (read only
        at the filters' channels), for the cells of the images that make a list (the strongest cell for the top
        images, the weakest for the bottom ones)."""
        indices = np.asarray(indices, np.int64)
        self.names.update(zip(indices.tolist(), names, strict=True))
        per_filter = np.broadcast_to(indices, (len(self.filters), len(indices)))
        means = np.asarray(means, np.float64).T
        self._keep("top", means, per_filter, None, maps)
        self._keep("bottom", means, per_filter, None, maps)
        if len(self.names) > 64 * (1 + len(self.filters) * self.k):  # forget names no list holds any more
            self.names = {i: self.names[i] for side in self.sides.values() for i in side[1].ravel().tolist()}

    def merge(self, other: FilterExtremes) -> None:
        self.names.update(other.names)
        for side in ("top", "bottom"):
            self._keep(side, *other.sides[side])
        self.names = {i: self.names[i] for side in self.sides.values() for i in side[1].ravel().tolist()}

    def result(self) -> list[FilterExamples]:
        out = []
        for f, filter_index in enumerate(self.filters):
            ranked = {}
            for side, (scores, indices, cells) in self.sides.items():
                ranked[side] = tuple(Ranked(float(scores[f, j]), self.names[int(indices[f, j])], int(indices[f, j]),
                                            (tuple(int(v) for v in cells[f, j]),))
                                     for j in range(scores.shape[1]) if np.isfinite(scores[f, j]))
            out.append(FilterExamples(self.layer, filter_index, ranked["top"], ranked["bottom"], self.output))
        return out


def filter_statistics(maps: Any, filters: Sequence[int]) -> tuple[Any, Any]:
    """For a batch of maps (B, h, w, C) (a tensor): the chosen filters' spatial means (B, F) and the maps as
    float32 (B, h, w, C), from which `FilterExtremes` finds the extreme cells of the few images it keeps.

    The means are taken over every channel and then picked: a gather on the channel axis copies the maps and
    costs more than the reduction of all of them."""
    import tensorflow as tf

    maps = tf.cast(maps, tf.float32)
    return tf.gather(tf.reduce_mean(maps, axis=(1, 2)), list(filters), axis=1), maps


@dataclass(frozen=True)
class ReceptiveField:
    """Where a layer's cell (row, col) looks in the input: a box of `size` pixels around the cell's centre."""

    stride: tuple[float, float]  # input pixels per map cell (rows, cols)
    size: tuple[int, int]  # (height, width) in input pixels
    input_size: tuple[int, int]

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """[x0, y0, x1, y1] in model-input pixels (x1, y1 exclusive), clipped to the image."""
        height, width = self.input_size
        cy, cx = (row + 0.5) * self.stride[0], (col + 0.5) * self.stride[1]
        y0, x0 = round(cy - self.size[0] / 2), round(cx - self.size[1] / 2)
        # A field that reaches past the border (padding) is moved inside the image, not cut, so every patch shows
        # the field's full size.
        y0, x0 = min(max(0, y0), max(0, height - self.size[0])), min(max(0, x0), max(0, width - self.size[1]))
        return x0, y0, min(width, x0 + self.size[1]), min(height, y0 + self.size[0])


def receptive_fields(model: Any, layers: Sequence[str], input_shape: tuple[int, int, int],
                     seed: int = 0) -> dict[str, ReceptiveField]:
    """The receptive field of the centre cell of each of `layers`, measured: the input pixels whose gradient is
    non-zero for that cell (summed over channels), over two random inputs. Works for any graph (residual,
    nested, dilated) where the convolution arithmetic would need every layer's kernel, stride and padding. One
    forward pass of both inputs serves every layer; each layer then takes one backward pass."""
    import tensorflow as tf

    from reportgen.techniques.predictions import compiled

    height, width, channels = input_shape
    rng = seeds.rng(seed, seeds.RECEPTIVE_FIELD_PROBE)
    x = tf.constant(rng.normal(size=(2, height, width, channels)).astype(np.float32))
    layers = list(dict.fromkeys(layers))
    map_sizes: dict[str, tuple[int, int]] = {}

    def centre_gradients(x: Any) -> list[Any]:
        with input_tape(x, persistent=True) as tape:
            captured = run_layers(model, x, capture=layers, stop_early=True).captured
            centres = []
            for layer in layers:
                out = captured[layer]
                h, w = int(out.shape[1]), int(out.shape[2])
                map_sizes[layer] = (h, w)
                centres.append(tf.reduce_sum(out[:, h // 2, w // 2, :]))
        gradients = [tape.gradient(centre, x) for centre in centres]
        return [tf.zeros_like(x) if g is None else g for g in gradients]  # None: nothing reaches the cell

    # Traced: an eager convolution gradient computes the filter gradient too (`predictions.compiled`).
    gradients = compiled(centre_gradients, model, gradients=True)(x)
    fields = {}
    for layer, gradient in zip(layers, gradients, strict=True):
        map_size = map_sizes[layer]
        support = (np.abs(np.asarray(gradient)).sum(axis=-1) > 0).any(axis=0)
        stride = (height / map_size[0], width / map_size[1])
        rows, cols = np.flatnonzero(support.any(axis=1)), np.flatnonzero(support.any(axis=0))
        if rows.size == 0:  # nothing reaches the cell (a dead path): fall back to one cell's own footprint
            size = (max(1, round(stride[0])), max(1, round(stride[1])))
        else:
            size = (int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
        fields[layer] = ReceptiveField(stride, size, (height, width))
    return fields
