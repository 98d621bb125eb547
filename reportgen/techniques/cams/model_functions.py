"""The model as the CAM methods use it: one differentiable score per class (`ScoreHead`: logits even when the
model ends in a softmax or sigmoid, without changing the model) and `ModelFunctions`, the compiled passes (the
layer pass with every (image, class) gradient at once, input gradients, probabilities)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.graph import input_tape, pick_channel, run_layers
from reportgen.precision import computing_in
from reportgen.techniques.predictions import PROBABILITY_ACTIVATIONS, FinalLayer, compiled, traceable

# Images of one forward pass of the deletion and insertion curves at most: past it a pass gains nothing on
# dispatch, only memory.
CURVE_BATCH_LIMIT = 256
CURVE_BATCH_BUDGET = 1 << 30  # bytes of layer outputs (float32) one such pass may hold


def curve_batch_size(shapes: Mapping[str, Any], batch_size: int) -> int:
    """Images per forward pass of the deletion and insertion curves: an inference pass holds a few layer outputs
    at once (a layer's input and output, and a residual branch's), so as many images as three times the largest
    fit in CURVE_BATCH_BUDGET, at least the 4 x `batch_size` of the other passes, at most CURVE_BATCH_LIMIT."""
    largest = max((4 * math.prod(shape[1:]) for shape in shapes.values()
                   if all(isinstance(d, int) for d in shape[1:])), default=0)
    fitting = CURVE_BATCH_BUDGET // (3 * largest) if largest else CURVE_BATCH_LIMIT
    return max(4 * batch_size, min(CURVE_BATCH_LIMIT, fitting))


@dataclass(frozen=True)
class ScoreHead:
    """How to get one differentiable score per class from a model run."""

    feeder: str | None  # record this layer's output and apply `linear` to it (None: use the model output)
    linear: Any  # the final layer without its activation (None: identity)
    single_unit: bool  # one output unit: class 1 scores z, class 0 scores -z
    logits: bool  # False when only probabilities could be had
    description: str


def score_head(model: Any, final: FinalLayer, units: int) -> ScoreHead:
    """Logits for the gradients: the model's own outputs when they are logits, else recomputed without the
    final softmax / sigmoid; probabilities (said so) when the layer feeding the last one cannot be found."""
    single = units == 1
    if final.activation not in PROBABILITY_ACTIVATIONS:
        how = "the model's outputs" + (" (logits)" if final.activation == "linear" else "")
        return ScoreHead(None, None, single, final.activation == "linear", f"Gradients are taken of {how}.")
    feeder = feeder_path(model, final.path)
    linear = _without_activation(final.layer) if feeder else None
    if feeder and linear is not False:
        return ScoreHead(feeder, linear, single, True,
                         f"Gradients are taken of the logits: {final.path} without its {final.activation}, "
                         f"applied to the output of {feeder} (the model itself is not changed).")
    return ScoreHead(None, None, single, False,
                     f"Gradients are taken of the {final.activation} probabilities: the logits before "
                     f"{final.path} could not be recovered, so maps of very confident predictions can be faint.")


def _without_activation(layer: Any) -> Any:
    """A copy of `layer` with a linear activation and the same weights; None for a pure activation layer;
    False when the layer cannot be copied."""
    import keras

    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        return None
    try:
        config = dict(layer.get_config())
        config["activation"] = "linear"
        config["name"] = f"{layer.name}_logits"
        copy = type(layer).from_config(config)
        copy.build_from_config(layer.get_build_config())
        copy.set_weights(layer.get_weights())
        return copy
    except Exception:  # any custom layer we cannot rebuild: fall back to probabilities, and say so
        return False


def feeder_path(model: Any, path: str) -> str | None:
    """The path of the layer whose output feeds the layer at `path` (its single input), or None."""
    parts = path.split("/")
    containers = [model]
    for name in parts[:-1]:
        containers.append(containers[-1].get_layer(name))
    depth = len(parts) - 1
    while depth >= 0:
        container = containers[depth]
        source = _inbound(container, container.get_layer(parts[depth]))
        if source is None:
            return None
        if source != "input":
            return "/".join([*parts[:depth], source.name])
        depth -= 1  # fed by its container's input: look at what feeds the container
    return None  # fed by the model's input itself


def _inbound(container: Any, layer: Any) -> Any:
    import keras

    if isinstance(container, keras.Sequential):
        layers = [item for item in container.layers if not isinstance(item, keras.layers.InputLayer)]
        index = next(i for i, item in enumerate(layers) if item is layer)
        return layers[index - 1] if index > 0 else "input"
    for nodes in getattr(container, "_nodes_by_depth", {}).values():
        for node in nodes:
            if node.operation is layer:
                tensors = list(node.input_tensors)
                if len(tensors) != 1:
                    return None
                source = tensors[0]._keras_history.operation
                return "input" if isinstance(source, keras.layers.InputLayer) else source
    return None


class ModelFunctions:
    """The model as the methods use it; each function is one `tf.function`, traced once per batch shape."""

    def __init__(self, model: Any, head: ScoreHead, layer: str | None,
                 to_probabilities: Callable[[np.ndarray], np.ndarray], batch_size: int = 16,
                 curves_dtype: str = "float32", curve_batch_size: int | None = None) -> None:
        """`curve_batch_size`: images per forward pass of `curve_probabilities` (default 4 x `batch_size`)."""
        import tensorflow as tf

        self.model, self.head, self.layer = model, head, layer
        self.to_probabilities = to_probabilities
        self.batch_size = batch_size
        self.traced = traceable(model)
        self.curves_dtype = curves_dtype
        self.curve_batch_size = curve_batch_size or 4 * batch_size
        self._layer_pass = compiled(self._layer_pass_graph, model, gradients=True)
        self._input_gradients = compiled(self._input_gradients_graph, model, gradients=True)
        self._raw = compiled(lambda x: model(x, training=False), model)
        self._raw_curves = self._raw if curves_dtype == "float32" else compiled(
            lambda x: tf.cast(model(x, training=False), tf.float32), model)

    def scores(self, x: Any, capture: Sequence[str]) -> tuple[Any, Any]:
        """Class scores (B, classes) and the run, with `capture` recorded."""
        import tensorflow as tf

        wanted = [*capture, *([self.head.feeder] if self.head.feeder else [])]
        run = run_layers(self.model, x, capture=wanted)
        z = run.captured[self.head.feeder] if self.head.feeder else run.output
        if self.head.linear is not None:
            z = self.head.linear(z)
        z = tf.reshape(z, (tf.shape(z)[0], -1))
        if self.head.single_unit:
            z = tf.concat([-z, z] if self.head.logits else [1.0 - z, z], axis=1)
        return z, run

    @staticmethod
    def _slot_copies(x: Any, slots: Any) -> Any:
        """Each image of x (B, ...) once per class slot of `slots` (B, T), slot-major: (T * B, ...).

        Image b's scores depend on image b alone (inference mode), so the gradient of the sum of every copy's own
        slot score with respect to a copy is that slot's gradient: one backward pass gives every (image, class)
        pair. When T is 1, the usual case, that is one forward and one backward pass, as before. Else it costs
        T - 1 more forward passes of the batch (few beside the deletion curves' hundreds), where a vectorised
        Jacobian would cost its tracing: the conversion of the backward graph was 0.17 s of the 0.21 s it took
        to trace the layer pass of a 3-conv CNN."""
        import tensorflow as tf

        return tf.tile(x, tf.concat([[tf.shape(slots)[1]], tf.ones([tf.rank(x) - 1], tf.int32)], 0))

    def _selected_sum(self, copies: Any, slots: Any, capture: Sequence[str]) -> tuple[Any, Any]:
        """The run of the copies (`capture` recorded) and the sum of each copy's own slot score."""
        import tensorflow as tf

        scores, run = self.scores(copies, capture)
        copy_slots = tf.reshape(tf.transpose(slots), [-1])  # slot-major, as the copies
        return run, tf.reduce_sum(pick_channel(scores, copy_slots))

    @staticmethod
    def _per_image(gradients: Any, slots: Any) -> Any:
        """(T * B, *shape) slot-major gradients -> (B, T, *shape)."""
        import tensorflow as tf

        split = tf.reshape(gradients, tf.concat([[tf.shape(slots)[1], tf.shape(slots)[0]],
                                                 tf.shape(gradients)[1:]], 0))
        return tf.transpose(split, [1, 0, *range(2, len(gradients.shape) + 1)])

    def _layer_pass_graph(self, x: Any, slots: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        copies = self._slot_copies(x, slots)
        with input_tape(copies) as tape:  # recorded from the input on; differentiated back to the layer only
            run, total = self._selected_sum(copies, slots, [self.layer])
            activations = run.captured[self.layer]
        gradients = tape.gradient(total, activations)
        return activations[:tf.shape(x)[0]], self._per_image(gradients, slots)  # (B, h, w, K), (B, T, h, w, K)

    def _input_gradients_graph(self, x: Any, slots: Any) -> Any:
        copies = self._slot_copies(x, slots)
        with input_tape(copies) as tape:
            _, total = self._selected_sum(copies, slots, [])
        return self._per_image(tape.gradient(total, copies), slots)  # (B, T, H, W, C)

    def layer_pass(self, inputs: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target-layer activations (B, h, w, K) and d score / d activations (B, T, h, w, K)."""
        import tensorflow as tf

        activations, gradients = self._layer_pass(tf.constant(inputs, tf.float32), tf.constant(slots, tf.int32))
        return np.asarray(activations, np.float32), np.asarray(gradients, np.float32)

    def input_gradients(self, inputs: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """d score / d input (B, T, H, W, C) for every image and class slot."""
        import tensorflow as tf

        grads = self._input_gradients(tf.constant(inputs, tf.float32), tf.constant(slots, tf.int32))
        return np.asarray(grads, np.float32)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes), in chunks of a few batches."""
        return self._probabilities(self._raw, inputs, 4 * self.batch_size)

    def curve_probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """`probabilities` in the arithmetic of the deletion and insertion curves (`curves_dtype`): hundreds of
        variants per image whose probabilities are only averaged into areas."""
        with computing_in(self.model, self.curves_dtype):
            return self._probabilities(self._raw_curves, inputs, self.curve_batch_size)

    def _probabilities(self, function: Callable[[Any], Any], inputs: np.ndarray, chunk: int) -> np.ndarray:
        import tensorflow as tf

        outs = [np.asarray(function(tf.constant(inputs[i:i + chunk], tf.float32)), np.float64)
                for i in range(0, len(inputs), chunk)]
        raw = np.concatenate(outs).reshape(len(inputs), -1)
        return self.to_probabilities(raw)
