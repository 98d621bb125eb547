"""Outliers: images far from every class, ranked by the cosine distance to the nearest class centre.

Outliers come in groups (a batch of blank or corrupt frames): ten near-identical noise images are each other's
nearest neighbours, so a k-nearest-neighbour distance (k < 10) and a low top probability miss them all, while
their distance to every class centre stays large. Centres are the mean embedding of each label (of each predicted
class when no image is labelled), after removing the set's mean embedding: pooled ReLU features share a large
common direction (median cosine 0.98 between distinct images) that would otherwise make every image close to
every centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen.techniques.data_health.embedding import normalise

OUTLIER_LIMIT = 100  # images kept, the most distant first
# An image is flagged as an outlier when its distance is this many robust standard deviations (1.4826 MAD) above
# the set's median distance: a ranked list always has a first entry, a flag says it stands apart.
OUTLIER_MADS = 4.0


@dataclass(frozen=True)
class Outlier:
    index: int  # global image index
    score: float  # 1 - cosine to the nearest class centre (0..2; higher: odder)
    nearest_class: int


@dataclass(frozen=True)
class Outliers:
    entries: tuple[Outlier, ...]  # most distant first, ties by index
    grouped_by: str  # "label" or "predicted": what the centres are the means of
    centres: np.ndarray  # (classes, d) float32 unit rows in the centred space; NaN for a class without images
    mean: np.ndarray  # (d,) float32: the set's mean embedding, removed before everything
    cutoff: float = float("inf")  # distances above it are flagged (median + OUTLIER_MADS robust deviations)
    flagged: int = 0  # images of the whole set above the cutoff (listed or not)


def centre_distances(embeddings: np.ndarray, groups: np.ndarray, classes: int, centred: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image, 1 - cosine to the nearest class centre and that class; the centres and the mean removed (a zero
    mean when not `centred`).

    `groups` (n,): each image's class for the centres (-1: takes no part in them, still scored)."""
    vectors = np.asarray(embeddings, np.float32)
    mean = vectors.mean(axis=0) if len(vectors) and centred else np.zeros(vectors.shape[1], np.float32)
    shifted = normalise(vectors - mean)
    member = groups >= 0
    counts = np.bincount(groups[member], minlength=classes)
    sums = np.zeros((classes, vectors.shape[1]), np.float64)
    np.add.at(sums, groups[member], shifted[member])
    centres = normalise(sums.astype(np.float32))
    centres[counts == 0] = np.nan
    present = np.flatnonzero(counts > 0)
    if not len(present) or not len(vectors):
        return np.full(len(vectors), np.nan), np.full(len(vectors), -1), centres, mean
    similarity = shifted @ centres[present].T
    best = np.argmax(similarity, axis=1)
    distance = 1.0 - similarity[np.arange(len(vectors)), best]
    return distance.astype(np.float64), present[best], centres, mean


def find_outliers(embeddings: np.ndarray, labels: np.ndarray | None, predicted: np.ndarray, classes: int,
                  indices: np.ndarray | None = None, limit: int = OUTLIER_LIMIT, centred: bool = True) -> Outliers:
    """The `limit` images farthest from every class centre. Centres by label when any image is labelled, else by
    predicted class; `labels` (n,) with -1 for unlabelled, `predicted` (n,) the model's top class."""
    n = len(embeddings)
    indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    by_label = bool((labels >= 0).any())
    groups = labels if by_label else np.asarray(predicted, np.int64)
    distance, nearest, centres, mean = centre_distances(embeddings, groups, classes, centred)
    order = np.lexsort((indices, -distance))[:max(0, int(limit))]
    entries = tuple(Outlier(int(indices[i]), float(distance[i]), int(nearest[i])) for i in order
                    if np.isfinite(distance[i]))
    finite = distance[np.isfinite(distance)]
    cutoff = float("inf")
    if finite.size:
        median = float(np.median(finite))
        cutoff = median + OUTLIER_MADS * 1.4826 * float(np.median(np.abs(finite - median)))
    return Outliers(entries, "label" if by_label else "predicted", centres, mean, cutoff,
                    int(np.count_nonzero(finite > cutoff)))


def energy_scores(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy E(x) = -T logsumexp(logits / T) (Liu et al. 2020); higher: more out of distribution. Needs logits,
    not softmax outputs (a softmax output's logsumexp is constant)."""
    scaled = np.asarray(logits, np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    return -temperature * (top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1)))
