"""Bounded, mergeable top-k: the building block of every per-image ranking over a whole image set.

Like a Keras metric or Beam's CombineFn, each accumulator has `update` (a batch), `merge` (another accumulator's
state) and `result`. Ties are broken by the image name, so any split of the images into batches, on any number of
workers, merged in any order, keeps the same k entries in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Ranked:
    """One kept entry: its score, the image's name and index, and what the caller attached."""

    score: float
    name: str
    index: int
    extra: tuple[Any, ...] = ()


class TopK:
    """The k entries with the highest scores (`largest=False`: the lowest), ties by name, then index."""

    def __init__(self, k: int, largest: bool = True) -> None:
        self.k = max(0, int(k))
        self.largest = largest
        self.entries: list[Ranked] = []

    def _key(self, entry: Ranked) -> tuple[float, str, int]:
        return (-entry.score if self.largest else entry.score, entry.name, entry.index)

    def update(self, scores: np.ndarray, names: list[str], indices: np.ndarray,
               extras: list[tuple[Any, ...]] | None = None) -> None:
        """Offer a batch of candidates; NaN scores are never kept."""
        scores = np.asarray(scores, np.float64)
        finite = np.flatnonzero(np.isfinite(scores))
        if not finite.size or not self.k:
            return
        # Only the batch's own best k can enter: a partial sort before building entries keeps this O(B).
        ordered = finite[np.argsort(-scores[finite] if self.largest else scores[finite], kind="stable")]
        if ordered.size > self.k:
            # Keep every candidate tied with the k-th score too, so names decide among them.
            edge = scores[ordered[self.k - 1]]
            ordered = ordered[(scores[ordered] >= edge) if self.largest else (scores[ordered] <= edge)]
        fresh = [Ranked(float(scores[i]), names[i], int(indices[i]), extras[i] if extras else ()) for i in ordered]
        self.entries = sorted([*self.entries, *fresh], key=self._key)[:self.k]

    def merge(self, other: TopK) -> None:
        self.entries = sorted([*self.entries, *other.entries], key=self._key)[:self.k]

    def result(self) -> tuple[Ranked, ...]:
        return tuple(self.entries)
