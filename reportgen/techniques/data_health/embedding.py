"""Per-image embeddings for data health: a seeded random projection of pooled features, and the store that keeps
every image's embedding, prediction and label through the one streaming pass.

A Gaussian random projection keeps cosine similarities up to a small distortion (Johnson-Lindenstrauss: with 128
dimensions the cosine of two unit vectors moves by about 1/sqrt(128) ~ 0.09 at most typical, far less for
near-identical vectors, whose difference is what the projection scales), so near-duplicates stay near-duplicates
and class centres stay apart, at a fixed 256 bytes per image in float16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen import seeds

PROJECTION = "data_health/projection"  # seeds purpose of the projection matrix; keys: in_dim, out_dim
MAX_DIMENSIONS = 128  # 128 float16 = 256 bytes per image: 1M images ~ 256 MB of embeddings
DENSE_CLASS_LIMIT = 256  # up to this many classes the whole probability vector is kept
TOP_CLASSES = 16  # beyond it, the top 16 probabilities and their classes (plus the labelled class's probability)


class RandomProjection:
    """A seeded Gaussian projection from `in_dim` features to `out_dim` (<= 128) dimensions.

    The matrix depends only on (seed, in_dim, out_dim), so every worker of a distributed pass builds the same one.
    When `in_dim <= out_dim` there is nothing to reduce: the features are kept as they are (cosines exact) and
    `out_dim` becomes `in_dim`."""

    def __init__(self, in_dim: int, out_dim: int = MAX_DIMENSIONS, seed: int = 0) -> None:
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"dimensions must be >= 1, got in_dim={in_dim}, out_dim={out_dim}")
        if out_dim > MAX_DIMENSIONS:
            raise ValueError(f"out_dim must be <= {MAX_DIMENSIONS}, got {out_dim}")
        self.in_dim = int(in_dim)
        self.out_dim = min(int(out_dim), self.in_dim)
        self.seed = int(seed)
        if self.in_dim == self.out_dim:
            self.matrix: np.ndarray | None = None
        else:
            generator = seeds.rng(self.seed, PROJECTION, self.in_dim, self.out_dim)
            # The scale does not matter (rows are normalised after); 1/sqrt(out_dim) keeps float32 sums modest.
            self.matrix = (generator.standard_normal((self.in_dim, self.out_dim)) / np.sqrt(self.out_dim)) \
                .astype(np.float32)

    def project(self, features: np.ndarray) -> np.ndarray:
        """(n, in_dim) features -> (n, out_dim) float16, each row of unit L2 norm (cosine = dot product).

        Features with more axes (n, h, w, c) are averaged over the spatial axes first (global average pooling).
        An all-zero row stays all zero (it has no direction)."""
        features = np.asarray(features, np.float32)
        if features.ndim > 2:
            features = features.mean(axis=tuple(range(1, features.ndim - 1)))
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise ValueError(f"expected features (n, {self.in_dim}), got {features.shape}")
        projected = features if self.matrix is None else features @ self.matrix
        return normalise(projected).astype(np.float16)


LAYOUT_GRID = 4  # the position-aware half pools the layer's map to this many cells a side
PART_DIMENSIONS = MAX_DIMENSIONS // 2


class SetEmbedding:
    """An image's embedding in two halves, one per purpose, measured on the bundled shapes model (400 drawn
    images, 6 re-encoded copies: 62 px and back, JPEG 85):

    - `whole`: the layer's output averaged over every position (global average pooling): what the image shows,
      wherever it is. It places images by class on the map and measures outliers. Distinct circles at different
      places pool to nearly the same vector (563 distinct pairs above the copies' lowest cosine, 0.998), so it
      cannot tell a copy from a look-alike.
    - `layout`: the output averaged over a 4 x 4 grid of cells: what the image shows where. A copy keeps it, a
      look-alike does not: the copies' lowest cosine was 0.996, the highest of any distinct pair 0.991 (0.994 after
      the 64-dimension projection, over three seeds). Duplicates are judged on it.

    Each half is projected (seeded) to at most PART_DIMENSIONS dimensions and scaled by 1/sqrt(2), so the whole
    vector has unit norm and the store keeps one float16 array of at most 128 dimensions (256 bytes an image)."""

    def __init__(self, channels: int, seed: int = 0) -> None:
        self.whole = RandomProjection(channels, PART_DIMENSIONS, seed)
        self.layout = RandomProjection(channels * LAYOUT_GRID * LAYOUT_GRID, PART_DIMENSIONS, seed)
        self.split = self.whole.out_dim
        self.dimensions = self.whole.out_dim + self.layout.out_dim

    def project(self, pooled: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """(n, channels) globally pooled and (n, LAYOUT_GRID, LAYOUT_GRID, channels) grid-pooled outputs ->
        (n, dimensions) float16."""
        grid = np.asarray(grid, np.float32).reshape(len(grid), -1)
        halves = [self.whole.project(pooled).astype(np.float32), self.layout.project(grid).astype(np.float32)]
        return (np.concatenate(halves, axis=1) / np.sqrt(2.0)).astype(np.float16)


def embedding_parts(embeddings: np.ndarray, split: int) -> tuple[np.ndarray, np.ndarray]:
    """The `whole` and `layout` halves of SetEmbedding vectors, each back to unit norm (float32)."""
    vectors = np.asarray(embeddings, np.float32)
    return normalise(vectors[:, :split]), normalise(vectors[:, split:])


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float32; zero rows stay zero."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


@dataclass(frozen=True)
class Embeddings:
    """Every stored image, ordered by image index.

    Probabilities come in one of two forms: `probabilities` (n, classes) when classes <= DENSE_CLASS_LIMIT, else
    `top_probabilities` / `top_classes` (n, TOP_CLASSES), highest first; `label_probability` (the labelled class's
    probability, NaN when unlabelled) and `predicted` (argmax of the full vector) are always there."""

    indices: np.ndarray  # (n,) int64, ascending: the global index in the image list
    embeddings: np.ndarray  # (n, d) float16, unit rows
    labels: np.ndarray  # (n,) int32, -1: unlabelled
    predicted: np.ndarray  # (n,) int32
    label_probability: np.ndarray  # (n,) float16
    classes: int
    probabilities: np.ndarray | None  # (n, classes) float16, or None beyond DENSE_CLASS_LIMIT classes
    top_probabilities: np.ndarray | None  # (n, TOP_CLASSES) float16, or None when dense
    top_classes: np.ndarray | None  # (n, TOP_CLASSES) int32, or None when dense

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def dense(self) -> bool:
        return self.probabilities is not None


_FIELDS = ("indices", "embeddings", "labels", "predicted", "label_probability", "probabilities",
           "top_probabilities", "top_classes")


class EmbeddingStore:
    """Keeps, per image index, its float16 embedding, its predicted probabilities and its label.

    Memory per image: the embedding, 2 bytes a dimension (128: 256 B, so 1M images ~ 256 MB); probabilities 2 B a
    class up to 256 classes (10 classes: 20 B; 256: 512 B), beyond that only the top 16 probabilities and classes
    plus the labelled class's probability (16 x (2 + 4) + 2 = 98 B); index, label and prediction 16 B. At 1M
    images, 128 dimensions and 1,000 classes that is about 370 MB.

    Storage is by image index: `merge` of disjoint parts is exact, and an index seen twice with identical values
    (the same block merged twice, a retried task) is kept once; the same index with different values is an error.
    Blocks are only concatenated; they are sorted and de-duplicated on `result` (or `compact`)."""

    def __init__(self, classes: int, dimensions: int = MAX_DIMENSIONS) -> None:
        self.classes = int(classes)
        self.dimensions = int(dimensions)
        self.dense = self.classes <= DENSE_CLASS_LIMIT
        self.blocks: list[dict[str, np.ndarray]] = []

    def update(self, indices: np.ndarray, embeddings: np.ndarray, probabilities: np.ndarray,
               labels: np.ndarray | None = None) -> None:
        """A batch: global image indices (B,), embeddings (B, d) (e.g. `RandomProjection.project`), probabilities
        (B, classes) and labels (B,) (-1 or None: unlabelled)."""
        indices = np.asarray(indices, np.int64)
        count = len(indices)
        if not count:
            return
        embeddings = np.asarray(embeddings, np.float16)
        probabilities = np.asarray(probabilities, np.float32)
        labels = np.full(count, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
        if embeddings.shape != (count, self.dimensions) or probabilities.shape != (count, self.classes) \
                or labels.shape != (count,):
            raise ValueError(f"a batch of {count}: expected embeddings ({count}, {self.dimensions}), probabilities "
                             f"({count}, {self.classes}), labels ({count},); got {embeddings.shape}, "
                             f"{probabilities.shape}, {labels.shape}")
        rows = np.arange(count)
        known = labels >= 0
        label_probability = np.full(count, np.nan, np.float32)
        label_probability[known] = probabilities[rows[known], labels[known]]
        # The prediction from the full-precision vector: float16 rounding must not change an argmax.
        block = {"indices": indices, "embeddings": embeddings, "labels": labels,
                 "predicted": np.argmax(probabilities, axis=1).astype(np.int32),
                 "label_probability": label_probability.astype(np.float16)}
        if self.dense:
            block["probabilities"] = probabilities.astype(np.float16)
        else:
            # Highest first, ties by class index: the same order on every worker.
            top = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_CLASSES].astype(np.int32)
            block["top_classes"] = top
            block["top_probabilities"] = np.take_along_axis(probabilities, top, axis=1).astype(np.float16)
        self.blocks.append(block)

    def merge(self, other: EmbeddingStore) -> None:
        if (other.classes, other.dimensions) != (self.classes, self.dimensions):
            raise ValueError("cannot merge embedding stores of different classes or dimensions")
        self.blocks.extend(other.blocks)

    def compact(self) -> None:
        """Concatenate the blocks into one, sorted by index, each index once."""
        if len(self.blocks) <= 1 and all(_unique_sorted(block["indices"]) for block in self.blocks):
            return
        names = [name for name in _FIELDS if name in self.blocks[0]]
        joined = {name: np.concatenate([block[name] for block in self.blocks]) for name in names}
        order = np.argsort(joined["indices"], kind="stable")
        joined = {name: values[order] for name, values in joined.items()}
        keep = np.ones(len(order), bool)
        repeated = joined["indices"][1:] == joined["indices"][:-1]
        keep[1:] = ~repeated
        if repeated.any():
            at = np.flatnonzero(repeated)
            for name, values in joined.items():
                # Compared as bytes, so NaN (an unlabelled image's label probability) equals itself.
                first = np.ascontiguousarray(values[at]).view(np.uint8).reshape(len(at), -1)
                again = np.ascontiguousarray(values[at + 1]).view(np.uint8).reshape(len(at), -1)
                if not np.array_equal(first, again):
                    bad = int(joined["indices"][at[np.flatnonzero((first != again).any(axis=1))[0]]])
                    raise ValueError(f"image index {bad} was stored twice with different {name}")
        self.blocks = [{name: values[keep] for name, values in joined.items()}]

    def result(self) -> Embeddings:
        self.compact()
        if not self.blocks:
            empty = EmbeddingStore(self.classes, self.dimensions)
            empty.update(np.zeros(1, np.int64), np.zeros((1, self.dimensions)), np.zeros((1, self.classes)))
            block = {name: values[:0] for name, values in empty.blocks[0].items()}
        else:
            block = self.blocks[0]
        return Embeddings(indices=block["indices"], embeddings=block["embeddings"], labels=block["labels"],
                          predicted=block["predicted"], label_probability=block["label_probability"],
                          classes=self.classes, probabilities=block.get("probabilities"),
                          top_probabilities=block.get("top_probabilities"), top_classes=block.get("top_classes"))


def _unique_sorted(indices: np.ndarray) -> bool:
    return bool(np.all(indices[1:] > indices[:-1]))
