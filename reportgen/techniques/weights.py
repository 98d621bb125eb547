"""Weight statistics and histograms of conv and dense layers, trained against freshly initialised."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from reportgen import seeds
from reportgen.graph import LayerNode
from reportgen.layer_kinds import has_kernel
from reportgen.techniques.untrained import InitialiserDistance, initialiser_distance

# A weight counts as "near zero" when |w| is below this share of the tensor's largest |w|: scale-free, so
# trained and fresh tensors of very different magnitudes compare fairly.
NEAR_ZERO_SHARE = 0.01
HISTOGRAM_BINS = 60
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


@dataclass(frozen=True)
class WeightStats:
    count: int
    mean: float
    std: float
    min: float
    max: float
    near_zero: float  # share of weights with |w| < NEAR_ZERO_SHARE * max|w|
    non_finite: int  # NaN or Inf values (excluded from the other statistics)


@dataclass(frozen=True)
class KernelWeights:
    """One weight tensor of a layer (a conv kernel, a depthwise kernel, a dense kernel) and its bias."""

    name: str
    values: np.ndarray
    stats: WeightStats
    bias_stats: WeightStats | None


@dataclass(frozen=True)
class KernelComparison:
    """The same tensor in the trained model and in a freshly initialised copy, with shared histogram bins and the
    two-sample Kolmogorov-Smirnov distance between their values (`untrained.initialiser_distance`)."""

    layer: str
    layer_type: str
    tensor: str
    trained: KernelWeights
    fresh: KernelWeights
    bin_edges: np.ndarray
    trained_counts: np.ndarray
    fresh_counts: np.ndarray
    distance: InitialiserDistance

    @property
    def depthwise(self) -> bool:
        """A depthwise kernel (kh, kw, in, multiplier): Keras 3's DepthwiseConv2D calls it `kernel`, SeparableConv2D
        `depthwise_kernel`."""
        return self.tensor == "depthwise_kernel" or self.layer_type == "DepthwiseConv2D"

    @cached_property
    def change(self) -> float:
        """||trained - fresh|| / ||fresh||. Not evidence of training: two independent draws of one initialiser are
        about sqrt(2) apart by it, so the report shows `distance` instead."""
        if self.trained.values.shape != self.fresh.values.shape:
            return float("nan")
        fresh_norm = float(np.linalg.norm(self.fresh.values))
        diff = float(np.linalg.norm(self.trained.values - self.fresh.values))
        return diff / fresh_norm if fresh_norm > 0 else float("nan")


# Statistics and histograms run over chunks of this many values: temporaries stay in cache, and no temporary the
# size of the tensor is ever allocated (VGG16's first dense kernel alone is 103M weights, 411 MB).
STATS_CHUNK = 1 << 18


def _chunks(flat: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, flat.size, STATS_CHUNK):
        chunk = flat[start:start + STATS_CHUNK]
        yield chunk if np.isfinite(chunk).all() else chunk[np.isfinite(chunk)]


def weight_stats(values: np.ndarray) -> WeightStats:
    """Statistics of the finite values of `values`, in two passes over cache-sized chunks: count, min, max and
    the float64 sum, then the squared deviations from the mean (exact two-pass variance, no cancellation) and the
    values near zero."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    count, low, high, total = 0, np.inf, -np.inf, 0.0
    for chunk in _chunks(flat):
        if chunk.size:
            count += chunk.size
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
            total += float(chunk.sum(dtype=np.float64))
    if count == 0:
        return WeightStats(int(flat.size), float("nan"), float("nan"), float("nan"), float("nan"), float("nan"),
                           int(flat.size))
    mean = total / count
    largest = max(abs(low), abs(high))
    squares, near = 0.0, 0
    for chunk in _chunks(flat):
        deviation = chunk.astype(np.float64) - mean
        squares += float(np.dot(deviation, deviation))
        near += int(np.count_nonzero(np.abs(chunk) < NEAR_ZERO_SHARE * largest))
    return WeightStats(
        count=int(flat.size),
        mean=mean,
        std=float(np.sqrt(squares / count)),
        min=low,
        max=high,
        near_zero=near / count if largest > 0 else 1.0,
        non_finite=int(flat.size - count),
    )


def variable_values(variable: Any) -> np.ndarray:
    """A weight variable's values as a float32 array, sharing TensorFlow's buffer where it can (a copy of
    VGG16's 103M-weight first dense kernel costs about a second); read only."""
    value = getattr(variable, "value", variable)  # a Keras variable wraps the backend's
    read = getattr(value, "read_value", None)
    array = np.asarray(read() if callable(read) else value)
    return array if array.dtype == np.float32 else array.astype(np.float32)


def layer_kernels(layer: Any) -> list[KernelWeights]:
    """The kernels of a conv or dense layer, each with the layer's bias statistics."""
    bias = getattr(layer, "bias", None)
    bias_stats = weight_stats(variable_values(bias)) if bias is not None else None
    kernels = []
    for name in KERNEL_NAMES:
        variable = getattr(layer, name, None)
        if variable is None:
            continue
        values = variable_values(variable)
        kernels.append(KernelWeights(name, values, weight_stats(values), bias_stats))
    return kernels


def histogram(trained: np.ndarray, fresh: np.ndarray, bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, ...]:
    """Counts of both tensors' finite values over shared, evenly spaced bin edges spanning both."""
    flats = [np.asarray(a, np.float32).ravel() for a in (trained, fresh)]
    ranges = [(float(c.min()), float(c.max())) for flat in flats for c in _chunks(flat) if c.size]
    low = min((r[0] for r in ranges), default=-1.0)
    high = max((r[1] for r in ranges), default=1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = [sum((np.histogram(chunk, bins=edges)[0] for chunk in _chunks(flat)), np.zeros(bins, np.int64))
              for flat in flats]
    return edges, counts[0], counts[1]


def compare_weights(trained_nodes: list[LayerNode], fresh_nodes: list[LayerNode],
                    seed: int = 0) -> list[KernelComparison]:
    """Pair every kernel of the trained model with the same kernel of the fresh copy (matched by layer path);
    `seed` draws the values the distance test samples from large tensors."""
    fresh_by_path = {node.path: node for node in fresh_nodes}
    comparisons = []
    for node in trained_nodes:
        if not has_kernel(node.layer) or node.path not in fresh_by_path:
            continue
        fresh_kernels = {k.name: k for k in layer_kernels(fresh_by_path[node.path].layer)}
        for kernel in layer_kernels(node.layer):
            fresh = fresh_kernels.get(kernel.name)
            if fresh is None:
                continue
            edges, trained_counts, fresh_counts = histogram(kernel.values, fresh.values)
            distance = initialiser_distance(kernel.values, fresh.values, seed, f"{node.path}/{kernel.name}")
            comparisons.append(
                KernelComparison(node.path, node.type_name, kernel.name, kernel, fresh, edges, trained_counts,
                                 fresh_counts, distance)
            )
    return comparisons


# Up to this many layers with weights a model gets every layer's figures; a deeper one those of `drawn_layers`.
ALL_FIGURES_UP_TO = 16


def drawn_layers(paths: list[str], shapes: dict[str, Any], requested: set[str] | None = None) -> set[str]:
    """The layers (of `paths`, in execution order) whose weights are drawn: `requested` (--layers) when given,
    else every one up to `ALL_FIGURES_UP_TO`, else the first and the last and, per map size of their outputs, the
    last (the last conv of each stage, as for the filter patterns). Every layer keeps its statistics either way:
    InceptionResNetV2's 245 layers drew 700 figures, 150 MB, for a page nobody reads to the end."""
    if requested is not None:
        return {path for path in paths if path in requested}
    if len(paths) <= ALL_FIGURES_UP_TO:
        return set(paths)
    last_of_size: dict[Any, str] = {}
    for path in paths:
        shape = shapes.get(path)
        if isinstance(shape, tuple) and len(shape) == 4:
            last_of_size[tuple(shape[1:3])] = path
    return {paths[0], paths[-1], *last_of_size.values()}


def fresh_copy(model: Any, seed: int) -> Any:
    """The same architecture with newly initialised weights, reproducible from `seed` (its own stream,
    `seeds.FRESH_WEIGHTS`: a model drawn from the seed itself, `--weights none`, is not compared with itself)."""
    import keras

    with seeds.keras_weights(seed, seeds.FRESH_WEIGHTS):
        return keras.models.clone_model(model)
