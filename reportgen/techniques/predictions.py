"""Predictions: class probabilities from any classifier head, top-k with names, accuracy and a confusion matrix.

Models end in a softmax, a sigmoid or plain logits; the reader wants probabilities either way. We look at the
final layer's activation first and at the numbers second (outputs that do not sum to 1 are logits), and say
which we did. A single sigmoid unit is a two-class model: class 1 has probability p, class 0 has 1 - p.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.config import flag
from reportgen.errors import InputError
from reportgen.graph import is_container, traceable

CLASSES_FLAG = flag("classes")  # the option this module checks, named as the command line spells it
# Rows of a probability output sum to 1 up to float32 rounding of a few thousand terms.
SUM_TOLERANCE = 1e-3
PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")
def compiled(function: Callable, model: Any, calls: int | None = None, flops: float | None = None,
             gradients: bool = False) -> Callable:
    """`function` as a tf.function (one trace per input shape family) when the model's names allow tracing and it
    takes gradients, runs more than once, or runs once with a lot of arithmetic.

    A forward-only function that runs once (`calls` 1) on at most `precision.SMALL_MODEL_FLOPS` of forward
    arithmetic (`flops`: the call's images times the model's forward FLOPs per image; None when unknown) runs
    eagerly: tracing and optimising a graph for one call costs more than the call, and the kernels, and so the
    numbers, are the same. A function that takes `gradients` is always traced: an eager convolution gradient
    computes the filter gradient too (TensorFlow's `_Conv2DGrad` returns both; a graph prunes the unused one), and
    TensorFlow 2.21's eager oneDNN kernel for it aborts the process on real models (fer's mini-Xception)."""
    import tensorflow as tf

    from reportgen.precision import one_small_call

    if not traceable(model) or (not gradients and one_small_call(calls, flops)):
        return function
    return tf.function(function, reduce_retracing=True, autograph=False)


def output_units(model: Any) -> int:
    """Units of the model's (first) output; 0 when its shape is unknown (treated as a multi-unit output)."""
    try:
        return int(model.outputs[0].shape[-1] or 1)
    except (AttributeError, IndexError, TypeError, ValueError):
        return 0


def output_classes(model: Any) -> int:
    """Classes the model predicts: its output units, a single (sigmoid) unit meaning two classes."""
    units = output_units(model) or 1
    return 2 if units == 1 else units


@dataclass(frozen=True)
class FinalLayer:
    """The layer producing the model's output (inside nested models when the last layer is one)."""

    path: str
    layer: Any
    activation: str  # "softmax", "sigmoid", "linear" or "other"


def final_layer(model: Any) -> FinalLayer:
    """The layer whose output is the model's output; nested Sequential / Functional models are entered."""
    import keras

    container, prefix = model, ""
    while True:
        layer = _output_operation(container, keras)
        path = f"{prefix}{layer.name}"
        if is_container(layer):
            container, prefix = layer, f"{path}/"
            continue
        return FinalLayer(path, layer, layer_activation(layer))


def _output_operation(container: Any, keras: Any) -> Any:
    if not isinstance(container, keras.Sequential):
        try:
            return container.outputs[0]._keras_history.operation
        except (AttributeError, IndexError, TypeError, ValueError):
            pass
    layers = [layer for layer in container.layers if not isinstance(layer, keras.layers.InputLayer)]
    return layers[-1]


def layer_activation(layer: Any) -> str:
    """`softmax`, `sigmoid` or `linear` when the layer says so (its `activation`, or a Softmax layer), else `other`."""
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        # Pooling, Flatten, Reshape...: no activation of their own; the numbers decide.
        return "other"
    name = getattr(activation, "__name__", str(activation)).lower()
    for known in ("softmax", "sigmoid", "linear"):
        if known in name:
            return known
    return "other"


@dataclass(frozen=True)
class Probabilities:
    """Class probabilities (N, classes) and how they were obtained from the raw outputs."""

    values: np.ndarray
    method: str  # "model softmax", "softmax applied", "model sigmoid", "sigmoid applied", "outputs sum to 1"
    description: str  # one sentence for the report


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # tanh form: no overflow warning for large |logits|


def probability_method(raw: np.ndarray, activation: str) -> tuple[str, str]:
    """How to turn these raw outputs (N, units) into probabilities: (method, one sentence for the report)."""
    raw = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
    in_unit_range = bool(np.all((raw >= -1e-6) & (raw <= 1 + 1e-6)))
    if raw.shape[1] == 1:
        if activation == "sigmoid" or (activation == "other" and in_unit_range):
            return "model sigmoid", "The model ends in one sigmoid unit: p(class 1) = output, p(class 0) = 1 - output."
        return "sigmoid applied", ("The model's single output is a logit (no sigmoid): reportgen applied a sigmoid; "
                                   "p(class 0) = 1 - p(class 1).")
    if activation == "softmax":
        return "model softmax", "The model ends in a softmax: its outputs are the probabilities."
    if activation == "sigmoid":
        return "model sigmoid", ("The model ends in independent sigmoids (multi-label): each output is a probability "
                                 "and they need not sum to 1.")
    if in_unit_range and bool(np.all(np.abs(raw.sum(axis=1) - 1.0) < SUM_TOLERANCE)):
        return "outputs sum to 1", ("The model's outputs already lie in [0, 1] and sum to 1 for every image: they are "
                                    "used as probabilities.")
    return "softmax applied", ("The model outputs logits (no softmax; outputs do not sum to 1): reportgen applied a "
                               "softmax.")


def convert(raw: np.ndarray, method: str) -> np.ndarray:
    """Apply a `probability_method` to raw outputs (N, units): probabilities (N, classes)."""
    raw = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
    if raw.shape[1] == 1:
        p = sigmoid(raw[:, 0]) if method == "sigmoid applied" else np.clip(raw[:, 0], 0.0, 1.0)
        return np.stack([1.0 - p, p], axis=1)
    return softmax(raw) if method == "softmax applied" else raw


def to_probabilities(raw: np.ndarray, activation: str) -> Probabilities:
    """Probabilities from raw model outputs (N, units), given the final layer's activation."""
    method, description = probability_method(raw, activation)
    return Probabilities(convert(raw, method), method, description)


def predict_raw(model: Any, inputs: np.ndarray, batch_size: int = 32, image_flops: float | None = None) -> np.ndarray:
    """The model's raw outputs (N, units) in inference mode, batch by batch (`image_flops`: the model's forward
    FLOPs per image, when known: see `compiled`)."""
    import tensorflow as tf

    batch = min(batch_size, len(inputs))
    call = compiled(lambda x: model(x, training=False), model, calls=-(-len(inputs) // batch_size),
                    flops=None if image_flops is None else batch * image_flops)
    outputs = [np.asarray(call(tf.constant(inputs[start:start + batch_size], tf.float32)), dtype=np.float64)
               for start in range(0, len(inputs), batch_size)]
    raw = np.concatenate(outputs) if outputs else np.zeros((0, 1))
    return raw.reshape(len(raw), -1)


@dataclass(frozen=True)
class Predictions:
    """Top-k predictions per image and, when labels are known, accuracy and a confusion matrix."""

    probabilities: Probabilities
    top_indices: np.ndarray  # (N, k) class indices, most probable first
    top_probabilities: np.ndarray  # (N, k)
    labels: np.ndarray  # (N,) class index of each image's label, -1 when unknown
    accuracy: float | None  # top-1 over labelled images
    top_k_accuracy: float | None
    confusion: np.ndarray | None  # (classes, classes) counts: rows true class, columns predicted class

    @property
    def predicted(self) -> np.ndarray:
        return self.top_indices[:, 0]

    @property
    def uniform(self) -> np.ndarray:
        """(N,) bool: every class has (nearly) the same probability, so the 'top' class is an accident of order."""
        return uniform_rows(self.probabilities.values)

    @property
    def labelled(self) -> int:
        return int(np.count_nonzero(self.labels >= 0))


# An output whose probabilities differ by less than this share of the largest prefers no class (a random
# MobileNetV2 gives every ImageNet class 0.001).
UNIFORM_SPREAD = 0.01


def uniform_rows(values: np.ndarray) -> np.ndarray:
    """(N,) bool: rows of class probabilities (N, classes) whose spread is under UNIFORM_SPREAD of their maximum."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    if values.shape[1] < 2:
        return np.zeros(len(values), bool)
    high, low = values.max(axis=1), values.min(axis=1)
    return (high - low) <= UNIFORM_SPREAD * np.abs(high)


def compute_predictions(probabilities: Probabilities, labels: Sequence[int | None], top_k: int) -> Predictions:
    """Top-k per image; accuracy and confusion matrix over the images whose label is a known class."""
    values = probabilities.values
    classes = values.shape[1]
    k = max(1, min(top_k, classes))
    # Stable sort on -p: equal probabilities keep class order, so results do not depend on the platform.
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(values, order, axis=1)
    label_array = np.array([-1 if label is None else int(label) for label in labels], dtype=np.int64)
    known = label_array >= 0
    accuracy = top_k_accuracy = confusion = None
    if known.any():
        accuracy = float(np.mean(order[known, 0] == label_array[known]))
        top_k_accuracy = float(np.mean(np.any(order[known] == label_array[known, None], axis=1)))
        confusion = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(confusion, (label_array[known], order[known, 0]), 1)
    return Predictions(probabilities, order, top, label_array, accuracy, top_k_accuracy, confusion)


def resolve_classes(requested: Sequence[str], names: Sequence[str]) -> tuple[int, ...]:
    """Class indices for `--classes` items: exact names first, then indices, then names ignoring case."""
    indices: list[int] = []
    folded: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        folded.setdefault(name.casefold(), []).append(i)
    for item in requested:
        text = str(item).strip()
        if text in names:
            index = list(names).index(text)
        elif text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(names):
                raise InputError(f"{CLASSES_FLAG}: index {index} is out of range; the model has {len(names)} "
                                 f"classes (0 to {len(names) - 1})")
        elif len(folded.get(text.casefold(), [])) == 1:
            index = folded[text.casefold()][0]
        else:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise InputError(f"{CLASSES_FLAG}: {text!r} is neither a class name nor an index; classes are "
                             f"{shown} (or 0 to {len(names) - 1})")
        if index not in indices:
            indices.append(index)
    return tuple(indices)


@dataclass(frozen=True)
class Target:
    """One class to explain for one image, and why: the top prediction, the true label, or asked for."""

    class_index: int
    reasons: tuple[str, ...]  # "top prediction", "label", "requested"


def image_targets(predicted: np.ndarray, labels: np.ndarray, requested: Sequence[int]) -> list[tuple[Target, ...]]:
    """Per image: its top prediction, then its label when known and different, then the requested classes."""
    out = []
    for top, label in zip(predicted.tolist(), labels.tolist(), strict=True):
        reasons: dict[int, list[str]] = {int(top): ["top prediction"]}
        if label >= 0:
            reasons.setdefault(int(label), []).append("label")
        for index in requested:
            reasons.setdefault(int(index), []).append("requested")
        out.append(tuple(Target(index, tuple(why)) for index, why in reasons.items()))
    return out
