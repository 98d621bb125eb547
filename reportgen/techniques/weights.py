"""Weight statistics and histograms of conv and dense layers, trained against freshly initialised."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from reportgen.graph import LayerNode
from reportgen.layer_kinds import has_kernel

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
    """The same tensor in the trained model and in a freshly initialised copy, with shared histogram bins."""

    layer: str
    layer_type: str
    tensor: str
    trained: KernelWeights
    fresh: KernelWeights
    bin_edges: np.ndarray
    trained_counts: np.ndarray
    fresh_counts: np.ndarray

    @cached_property
    def change(self) -> float:
        """Relative change of the weights: ||trained - fresh|| / ||fresh|| (an overall 'how far training moved')."""
        if self.trained.values.shape != self.fresh.values.shape:
            return float("nan")
        fresh_norm = float(np.linalg.norm(self.fresh.values))
        diff = float(np.linalg.norm(self.trained.values - self.fresh.values))
        return diff / fresh_norm if fresh_norm > 0 else float("nan")


def weight_stats(values: np.ndarray) -> WeightStats:
    """Statistics of the finite values of `values`. Sums accumulate in float64, but no float64 copy of the tensor
    is made: VGG16's first dense kernel alone is 103M weights."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    finite_mask = np.isfinite(flat)
    finite = flat if finite_mask.all() else flat[finite_mask]
    if finite.size == 0:
        return WeightStats(int(flat.size), float("nan"), float("nan"), float("nan"), float("nan"), float("nan"),
                           int(flat.size))
    low, high = float(finite.min()), float(finite.max())
    largest = max(abs(low), abs(high))
    mean = float(finite.mean(dtype=np.float64))
    deviation = finite - np.float32(mean)  # the one temporary; squared in place, summed in float64 buffers
    std = float(np.sqrt(np.square(deviation, out=deviation).sum(dtype=np.float64) / finite.size))
    near_zero = float(np.count_nonzero(np.abs(finite) < NEAR_ZERO_SHARE * largest) / finite.size) if largest > 0 \
        else 1.0
    return WeightStats(
        count=int(flat.size),
        mean=mean,
        std=std,
        min=low,
        max=high,
        near_zero=near_zero,
        non_finite=int(flat.size - finite.size),
    )


def layer_kernels(layer: Any) -> list[KernelWeights]:
    """The kernels of a conv or dense layer, each with the layer's bias statistics."""
    bias = getattr(layer, "bias", None)
    bias_stats = weight_stats(np.asarray(bias)) if bias is not None else None
    kernels = []
    for name in KERNEL_NAMES:
        variable = getattr(layer, name, None)
        if variable is None:
            continue
        values = np.asarray(variable, dtype=np.float32)
        kernels.append(KernelWeights(name, values, weight_stats(values), bias_stats))
    return kernels


def histogram(trained: np.ndarray, fresh: np.ndarray, bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, ...]:
    """Counts of both tensors over shared bin edges spanning both."""
    finite = [a if np.isfinite(a).all() else a[np.isfinite(a)] for a in (trained.ravel(), fresh.ravel())]
    present = [a for a in finite if a.size]
    low = min(float(a.min()) for a in present) if present else -1.0
    high = max(float(a.max()) for a in present) if present else 1.0
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(a, bins=edges)[0] for a in finite]
    return edges, counts[0], counts[1]


def compare_weights(trained_nodes: list[LayerNode], fresh_nodes: list[LayerNode]) -> list[KernelComparison]:
    """Pair every kernel of the trained model with the same kernel of the fresh copy (matched by layer path)."""
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
            comparisons.append(
                KernelComparison(node.path, node.type_name, kernel.name, kernel, fresh, edges, trained_counts,
                                 fresh_counts)
            )
    return comparisons


# The fresh copy draws from its own stream of the report's seed: a model whose random weights were drawn from the
# seed itself (`--weights none`) must not be compared with an identical copy of itself.
FRESH_STREAM = 0x46524553  # "FRES"


def fresh_seed(seed: int) -> int:
    """The seed of the fresh copy: reproducible from `seed`, independent of draws made from `seed` itself."""
    return int(np.random.SeedSequence([seed, FRESH_STREAM]).generate_state(1)[0])


def fresh_copy(model: Any, seed: int) -> Any:
    """The same architecture with newly initialised weights, reproducible from `seed`."""
    import keras

    keras.utils.set_random_seed(fresh_seed(seed))
    return keras.models.clone_model(model)
