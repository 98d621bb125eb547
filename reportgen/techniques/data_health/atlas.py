"""A map of the whole set: a 2-D PCA layout of the embeddings and an atlas grid over it (as in Activation Atlas,
Carter et al. 2019): the layout's extent cut into G x G cells, each non-empty cell shown by the image nearest its
centre.

PCA rather than UMAP or t-SNE: no dependency, linear (the same projection for every image, so a new run's images
can be placed on an old map), deterministic, and on 1M images a seeded 20,000-image sample fixes the axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen import seeds

ATLAS_SAMPLE = 20_000  # images the axes are fitted on, when there are more
ATLAS_GRID = 12  # cells per side
SAMPLE = "data_health/atlas"  # seeds purpose of the fitting sample


@dataclass(frozen=True)
class Layout:
    indices: np.ndarray  # (n,) int64 global image indices, ascending
    coordinates: np.ndarray  # (n, 2) float32
    components: np.ndarray  # (2, d) float32: the axes (each with its largest-magnitude entry positive)
    mean: np.ndarray  # (d,) float32: subtracted before projecting
    explained: np.ndarray  # (2,) float32: share of the fitted sample's variance along each axis


@dataclass(frozen=True)
class AtlasCell:
    row: int  # 0: the lowest y
    column: int  # 0: the lowest x
    index: int  # global index of the image nearest the cell's centre, among the images in the cell
    count: int  # images in the cell


@dataclass(frozen=True)
class AtlasGrid:
    size: int  # G: cells per side
    extent: tuple[float, float, float, float]  # x min, x max, y min, y max of the layout
    cells: tuple[AtlasCell, ...]  # non-empty cells, by row then column


def pca_layout(embeddings: np.ndarray, indices: np.ndarray | None = None, seed: int = 0,
               sample: int = ATLAS_SAMPLE) -> Layout:
    """Project every embedding (n, d) onto the first two principal axes of a seeded sample of at most `sample`."""
    vectors = np.asarray(embeddings, np.float32)
    n, d = vectors.shape
    indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    order = np.argsort(indices, kind="stable")
    vectors, indices = vectors[order], indices[order]
    fit = vectors
    if n > sample:
        fit = vectors[np.sort(seeds.rng(seed, SAMPLE, n).choice(n, sample, replace=False))]
    mean = fit.mean(axis=0) if n else np.zeros(d, np.float32)
    components = np.zeros((2, d), np.float32)
    explained = np.zeros(2, np.float32)
    if n > 1:
        _, singular, axes = np.linalg.svd((fit - mean).astype(np.float64), full_matrices=False)
        take = min(2, len(singular))
        components[:take] = axes[:take]
        # Sign convention: each axis's largest-magnitude entry positive (sklearn's svd_flip on the axes).
        signs = np.sign(components[np.arange(2), np.argmax(np.abs(components), axis=1)])
        components *= np.where(signs == 0, 1, signs)[:, None]
        variance = singular ** 2
        if variance.sum() > 0:
            explained[:take] = variance[:take] / variance.sum()
    coordinates = ((vectors - mean) @ components.T).astype(np.float32)
    return Layout(indices, coordinates, components, mean.astype(np.float32), explained)


def atlas_grid(layout: Layout, size: int = ATLAS_GRID) -> AtlasGrid:
    """Each non-empty cell of a `size` x `size` grid over the layout's extent, with the image nearest its centre
    (ties by index). A point on the upper edge belongs to the last cell."""
    xy = layout.coordinates.astype(np.float64)
    if not len(xy):
        return AtlasGrid(size, (0.0, 0.0, 0.0, 0.0), ())
    low, high = xy.min(axis=0), xy.max(axis=0)
    width = np.where(high > low, (high - low) / size, 1.0)
    cell = np.clip(np.floor((xy - low) / width).astype(np.int64), 0, size - 1)
    centre = low + (cell + 0.5) * width
    distance = ((xy - centre) ** 2).sum(axis=1)
    key = cell[:, 1] * size + cell[:, 0]
    order = np.lexsort((layout.indices, distance, key))
    ranked = key[order]
    first = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    counts = np.diff(np.r_[first, len(ranked)])
    cells = tuple(AtlasCell(int(ranked[f] // size), int(ranked[f] % size), int(layout.indices[order[f]]), int(c))
                  for f, c in zip(first, counts, strict=True))
    return AtlasGrid(size, (float(low[0]), float(high[0]), float(low[1]), float(high[1])), cells)
