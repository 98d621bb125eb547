"""Does a model look trained? Its weights against a freshly initialised copy of the same architecture.

Two kinds of evidence, both exact enough to test:

- A variable the initialiser sets to a constant (biases, batch-norm scale and shift and moving statistics,
  ConvNeXt's layer scale) moves with the first optimisation step. A model whose every such variable still holds
  its initial constant has not been trained (or its weights were never loaded).
- A randomly initialised tensor's values keep their initialiser's distribution until training reshapes it. A
  two-sample Kolmogorov-Smirnov test of the tensor against the fresh copy's says whether the two could be draws of
  one distribution. Norms cannot: two independent draws of one initialiser are sqrt(2) apart relative to either,
  whatever the architecture, so "relative change" reads 1.41 on a model that never saw an image.

A few optimisation steps leave the distribution of a large kernel statistically unchanged, so the test on kernels
alone would call a briefly trained model untrained: the constants decide when the model has any.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from reportgen import seeds

# Two independent draws of one distribution exceed the critical distance with this probability.
KS_SIGNIFICANCE = 1e-3
# The test compares at most this many values of each tensor (a seeded sample): VGG16's 103M-weight kernel needs
# no more to tell a trained distribution from a fresh one, and sorting stays fast.
KS_SAMPLE = 50_000
# A model "looks untrained" when at least this share of its random tensors cannot be told from fresh draws.
INDISTINGUISHABLE_SHARE = 0.9
UNTRAINED_SAMPLE = "weights/untrained-sample"  # seed stream of the values sampled for the test


@dataclass(frozen=True)
class InitialiserDistance:
    """A tensor's two-sample Kolmogorov-Smirnov distance to a fresh draw of its initialiser."""

    statistic: float  # the largest gap between the two empirical distribution functions, in [0, 1]
    critical: float  # the distance two independent draws exceed with probability KS_SIGNIFICANCE
    sampled: int  # values compared from each side

    @property
    def indistinguishable(self) -> bool:
        return self.statistic <= self.critical


@dataclass(frozen=True)
class VariablePair:
    """One weight variable of the model and the same variable of the fresh copy."""

    layer: str
    name: str  # "kernel", "bias", "gamma", "moving_mean", ...
    trained: np.ndarray
    fresh: np.ndarray


@dataclass(frozen=True)
class TrainingEvidence:
    """What the weights say about training."""

    constant_variables: int  # variables the initialiser sets to a constant
    unchanged_constants: int  # of those, the ones still exactly at it
    changed_constants: tuple[str, ...]  # "layer/name" of a few that moved (evidence of training)
    random_tensors: int  # randomly initialised tensors tested
    indistinguishable: int  # of those, the ones the test cannot tell from fresh draws
    largest_distance: float  # the largest statistic / critical ratio among the random tensors (0 if none)

    @property
    def looks_untrained(self) -> bool:
        """Every constant still at its initial value (when the model has any), and nearly every random tensor
        indistinguishable from its initialiser."""
        if self.constant_variables and self.unchanged_constants < self.constant_variables:
            return False
        if not self.random_tensors:
            return bool(self.constant_variables)
        share = self.indistinguishable / self.random_tensors
        return share >= (INDISTINGUISHABLE_SHARE if self.constant_variables else 1.0)


def _finite_sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = np.asarray(values, np.float32).ravel()
    if flat.size > KS_SAMPLE:
        flat = flat[rng.choice(flat.size, KS_SAMPLE, replace=False)]
    return np.sort(flat[np.isfinite(flat)])


def initialiser_distance(trained: np.ndarray, fresh: np.ndarray, seed: int = 0, key: str = "") -> InitialiserDistance:
    """The two-sample Kolmogorov-Smirnov statistic between `trained` and `fresh` (each sampled to at most KS_SAMPLE
    values, from the seed stream UNTRAINED_SAMPLE keyed by `key`) and the critical distance at KS_SIGNIFICANCE."""
    rng = seeds.rng(seed, UNTRAINED_SAMPLE, key)
    a, b = _finite_sample(trained, rng), _finite_sample(fresh, rng)
    if a.size == 0 or b.size == 0:
        return InitialiserDistance(float("nan"), float("nan"), 0)
    points = np.concatenate([a, b])
    gap = np.abs(np.searchsorted(a, points, side="right") / a.size - np.searchsorted(b, points, side="right") / b.size)
    # The asymptotic critical value: c(alpha) * sqrt((n + m) / (n m)), c(alpha) = sqrt(-ln(alpha / 2) / 2).
    c_alpha = math.sqrt(-math.log(KS_SIGNIFICANCE / 2) / 2)
    critical = c_alpha * math.sqrt((a.size + b.size) / (a.size * b.size))
    return InitialiserDistance(float(gap.max()), critical, int(min(a.size, b.size)))


def _constant(values: np.ndarray) -> bool:
    flat = np.asarray(values).ravel()
    return flat.size > 0 and bool(np.all(flat == flat[0]))


def training_evidence(pairs: Iterable[VariablePair], seed: int = 0,
                      known: Mapping[str, InitialiserDistance] | None = None) -> TrainingEvidence:
    """Sort each variable by how its fresh copy was initialised (a constant, or random values) and weigh it.
    `known`: distances already measured (by the weights section, same seed), by "layer/name"."""
    constants = unchanged = random_tensors = indistinguishable = 0
    changed: list[str] = []
    largest = 0.0
    for pair in pairs:
        if pair.trained.shape != pair.fresh.shape or pair.fresh.size == 0:
            continue
        if _constant(pair.fresh):
            constants += 1
            if np.array_equal(pair.trained, pair.fresh):
                unchanged += 1
            elif len(changed) < 5:
                changed.append(f"{pair.layer}/{pair.name}")
            continue
        if pair.fresh.size < 2:
            continue
        key = f"{pair.layer}/{pair.name}"
        distance = (known or {}).get(key) or initialiser_distance(pair.trained, pair.fresh, seed, key)
        if distance.statistic != distance.statistic:  # NaN: nothing finite to compare
            continue
        random_tensors += 1
        indistinguishable += distance.indistinguishable
        largest = max(largest, distance.statistic / distance.critical)
    return TrainingEvidence(constants, unchanged, tuple(changed), random_tensors, indistinguishable, largest)


def variable_pairs(trained_nodes: Iterable, fresh_nodes: Iterable) -> list[VariablePair]:
    """Every weight variable of every layer (matched by layer path and variable position) of the model and of its
    fresh copy: `graph.LayerNode`s of each."""
    from reportgen.techniques.weights import variable_values

    fresh_by_path = {node.path: node for node in fresh_nodes}
    pairs = []
    for node in trained_nodes:
        fresh = fresh_by_path.get(node.path)
        if fresh is None:
            continue
        own = list(getattr(node.layer, "weights", []))
        others = list(getattr(fresh.layer, "weights", []))
        if len(own) != len(others) or _has_sublayers(node.layer):
            continue  # a nested model's variables come with its own layers
        for mine, theirs in zip(own, others, strict=True):
            name = getattr(mine, "name", "") or getattr(mine, "path", "")
            pairs.append(VariablePair(node.path, name.rsplit("/", 1)[-1], variable_values(mine),
                                      variable_values(theirs)))
    return pairs


def _has_sublayers(layer: object) -> bool:
    return bool(getattr(layer, "layers", None))
