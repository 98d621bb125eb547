"""Near-duplicates and leakage: pairs of images whose embeddings have a cosine similarity above a threshold.

Up to `EXACT_LIMIT` images every pair is compared, in blocks of `BLOCK` rows (a float32 product of two blocks,
never an n x n matrix: 4096 x 4096 x 4 B = 64 MB at most). Beyond, random-hyperplane LSH (Charikar 2002) puts
each image in one bucket per table by the signs of `bits` random projections of its centred embedding; pairs
sharing a bucket in any table are compared exactly, so every pair reported is a true pair (precision as exact)
and a pair at centred cosine s is found with probability `lsh_recall(s, bits, tables)` =
1 - (1 - (1 - arccos(s) / pi) ** bits) ** tables: 8 tables of 14 bits find a pair at centred cosine 0.99 with
probability 0.997 and at 0.999 with 0.9999996. Hashing centred vectors spreads the buckets: pooled ReLU features
share a large common direction (median cosine 0.98 between distinct images, see DUPLICATE_THRESHOLD) that would
put most images into a few buckets. Centring lowers a copy's cosine (0.86 at worst for the copies measured below),
so recall at the raw threshold is lower than the formula at that threshold: the formula at the centred cosine is
the figure to quote.

Pairs whose two images have different labels (both labelled) come first, then by similarity, highest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen import seeds
from reportgen.techniques.data_health.embedding import normalise

# Measured on the position-aware half of `embedding.SetEmbedding` (the bundled shapes model's last conv layer pooled
# to 4 x 4 cells, projected to 64 dimensions; 400 drawn shapes images, 6 copies resized to 62 px and back and saved
# as JPEG 85): copies 0.9937-0.9999, every distinct pair at most 0.9924-0.9940 over three projection seeds; before
# projection 0.9960 against 0.9914. Globally pooled features could not separate them at all: their distinct pairs
# reached 0.9997 while the copies' lowest was 0.9979 (benchmarks/data_health_threshold.py found the same on a random
# network: no threshold between 0.997 and 0.9995 separates copies from look-alikes there). A threshold measured on
# synthetic shapes: re-measure it on real photos before trusting a missing pair.
DUPLICATE_THRESHOLD = 0.995
EXACT_LIMIT = 100_000  # images compared pair by pair; beyond, LSH
BLOCK = 4096  # rows per block of the exact comparison
PAIR_LIMIT = 1000  # pairs kept (the best ranked); `Duplicates.total` counts them all
LSH_TABLES = 8
LSH_BUCKET = 64  # bits are chosen so that an average bucket holds about this many images
LSH = "data_health/lsh"  # seeds purpose of the hyperplanes; keys: table


@dataclass(frozen=True)
class DuplicatePair:
    first: int  # global image index, first < second
    second: int
    similarity: float  # cosine of the two embeddings
    labels: tuple[int, int]  # -1: unlabelled
    across_classes: bool  # both labelled, with different labels: leakage or a label error


@dataclass(frozen=True)
class Duplicates:
    pairs: tuple[DuplicatePair, ...]  # across classes first, then by similarity (highest first), then by index
    total: int  # pairs above the threshold found, before `limit`
    threshold: float
    method: str  # "exact" or "lsh"
    bits: int  # LSH bits per table (0 when exact)
    tables: int  # LSH tables (0 when exact)


def lsh_recall(similarity: float, bits: int, tables: int) -> float:
    """The probability that LSH with `tables` tables of `bits` hyperplanes compares a pair at this cosine."""
    collide = (1.0 - np.arccos(np.clip(similarity, -1.0, 1.0)) / np.pi) ** bits
    return float(1.0 - (1.0 - collide) ** tables)


def find_duplicates(embeddings: np.ndarray, indices: np.ndarray | None = None, labels: np.ndarray | None = None,
                    threshold: float = DUPLICATE_THRESHOLD, limit: int = PAIR_LIMIT, block: int = BLOCK,
                    exact_limit: int = EXACT_LIMIT, seed: int = 0, tables: int = LSH_TABLES) -> Duplicates:
    """Pairs of rows of `embeddings` (n, d) (unit rows, float16 as stored) with cosine >= `threshold`.

    `indices`: each row's global image index (default 0..n-1); `labels` (n,), -1 unlabelled."""
    vectors = np.asarray(embeddings, np.float32)
    n = len(vectors)
    indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    # Rows in index order, so which of two images is `first` and every tie do not depend on the input's order.
    order = np.argsort(indices, kind="stable")
    vectors, indices, labels = vectors[order], indices[order], labels[order]
    found = _Pairs(limit, labels)
    if n <= exact_limit:
        _compare_all(vectors, np.arange(n), threshold, block, found)
        return found.result(indices, labels, threshold, "exact", 0, 0)
    bits = int(np.clip(np.ceil(np.log2(n / LSH_BUCKET)), 1, 30))
    centred = normalise(vectors - vectors.mean(axis=0))
    seen = np.zeros(0, np.int64)
    for table in range(tables):
        planes = seeds.rng(seed, LSH, table).standard_normal((vectors.shape[1], bits)).astype(np.float32)
        codes = ((centred @ planes) > 0).astype(np.int64) @ (1 << np.arange(bits, dtype=np.int64))
        ranked = np.argsort(codes, kind="stable")
        edges = np.flatnonzero(np.diff(codes[ranked])) + 1
        for bucket in np.split(ranked, edges):
            if len(bucket) > 1:
                seen = _compare_all(vectors, np.sort(bucket), threshold, block, found, seen)
    return found.result(indices, labels, threshold, "lsh", bits, tables)


class _Pairs:
    """The best `limit` pairs so far by the listing order, and how many there were (each pair counted once)."""

    def __init__(self, limit: int, labels: np.ndarray) -> None:
        self.limit = max(0, int(limit))
        self.labels = labels
        self.first = np.zeros(0, np.int64)
        self.second = np.zeros(0, np.int64)
        self.similarity = np.zeros(0, np.float32)
        self.total = 0

    def add(self, first: np.ndarray, second: np.ndarray, similarity: np.ndarray) -> None:
        self.total += len(first)
        first = np.concatenate([self.first, first])
        second = np.concatenate([self.second, second])
        similarity = np.concatenate([self.similarity, similarity])
        a, b = self.labels[first], self.labels[second]
        within = ~((a >= 0) & (b >= 0) & (a != b))
        keep = np.lexsort((second, first, -similarity, within))[:self.limit]
        self.first, self.second, self.similarity = first[keep], second[keep], similarity[keep]

    def result(self, indices: np.ndarray, labels: np.ndarray, threshold: float, method: str, bits: int,
               tables: int) -> Duplicates:
        pairs = tuple(DuplicatePair(int(indices[f]), int(indices[s]), float(c), (int(labels[f]), int(labels[s])),
                                    bool(labels[f] >= 0 and labels[s] >= 0 and labels[f] != labels[s]))
                      for f, s, c in zip(self.first, self.second, self.similarity, strict=True))
        return Duplicates(pairs, self.total, float(threshold), method, bits, tables)


def _compare_all(vectors: np.ndarray, rows: np.ndarray, threshold: float, block: int, found: _Pairs,
                 seen: np.ndarray | None = None) -> np.ndarray:
    """Every pair among `rows` (ascending) above the threshold, block against block (upper triangle only).

    `seen`: sorted pair keys (first * n + second) already counted by an earlier LSH table; returned updated."""
    n = len(vectors)
    block = max(1, int(block))
    for start in range(0, len(rows), block):
        left = rows[start:start + block]
        for other in range(start, len(rows), block):
            right = rows[other:other + block]
            similarity = vectors[left] @ vectors[right].T
            hit = similarity >= threshold
            if other == start:
                hit &= np.triu(np.ones(hit.shape, bool), 1)
            a, b = np.nonzero(hit)
            first, second = left[a], right[b]
            values = similarity[a, b]
            if seen is not None:
                keys = first * n + second
                fresh = ~np.isin(keys, seen, assume_unique=False)
                first, second, values = first[fresh], second[fresh], values[fresh]
                seen = np.union1d(seen, keys)
            if len(first):
                found.add(first, second, values)
    return seen if seen is not None else np.zeros(0, np.int64)
