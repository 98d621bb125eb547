"""Walk a model's layers (nested models included) and run it while capturing any layer's output.

Why not `keras.Model(model.inputs, [layer.output, ...])`? On models loaded from files that fails in two common
ways: a loaded Sequential may never have been called (`layer.output` raises), and a layer inside a nested base
model has an output in the *base's* graph, not in the outer model's, so the sub-model is disconnected or gives
`None` gradients. Running the layers ourselves avoids both: `run_layers` executes the model layer by layer
(Sequential in order, Functional through its own node graph), descends into nested models, and records the
tensors we ask for. The recorded tensors are the ones the rest of the forward pass consumes, so gradients of the
output with respect to them are exact, eagerly and inside `tf.function`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras

# TensorFlow's rule for a name scope (ops.py, _VALID_OP_NAME_REGEX). Tracing a tf.function opens one scope per
# model and layer, so names Keras allows but TensorFlow does not (`conv 1`, `<b>`) can only run eagerly.
_SCOPE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")


@dataclass(frozen=True)
class LayerNode:
    """One layer of a model, nested layers included; `path` is unique, e.g. `conv_base/block1_conv1`."""

    path: str
    layer: Any  # keras.layers.Layer
    depth: int
    parent: str | None

    @property
    def type_name(self) -> str:
        return type(self.layer).__name__

    @property
    def is_model(self) -> bool:
        return is_container(self.layer)


def is_container(layer: Any) -> bool:
    """True for a nested Sequential or Functional model whose layers we can walk and run one by one."""
    return isinstance(layer, keras.Sequential) or _is_functional(layer)


def _is_functional(layer: Any) -> bool:
    return isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph") and hasattr(layer, "_nodes_by_depth")


def walk_layers(model: Any) -> list[LayerNode]:
    """Every layer in execution order, depth first, with nested models before their own layers."""
    nodes: list[LayerNode] = []

    def visit(container: Any, prefix: str, depth: int, parent: str | None) -> None:
        for layer in container.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            path = f"{prefix}{layer.name}"
            nodes.append(LayerNode(path=path, layer=layer, depth=depth, parent=parent))
            if is_container(layer):
                visit(layer, f"{path}/", depth + 1, path)

    visit(model, "", 0, None)
    return nodes


@dataclass(frozen=True)
class LayerCall:
    """One layer call of a run: which tensors (by identity) it read and wrote. `output` keeps them alive, so the
    identities stay unique for the whole run."""

    path: str
    reads: tuple[int, ...]
    writes: tuple[int, ...]
    output: Any


def _tensor_ids(structure: Any) -> tuple[int, ...]:
    return tuple(id(t) for t in keras.tree.flatten(structure) if hasattr(t, "shape") and hasattr(t, "dtype"))


class _AllCaptured(Exception):
    """Raised inside a run to stop once every requested layer output has been recorded."""


@dataclass(frozen=True)
class LayerRun:
    """What `run_layers` returns: the model output (None when stopped early) and the captured layer outputs."""

    output: Any
    captured: dict[str, Any]
    pre_activations: dict[str, Any] = field(default_factory=dict)


def run_layers(model: Any, inputs: Any, capture: Iterable[str] = (), stop_early: bool = False,
               calls: list[LayerCall] | None = None, pre_activation: Iterable[str] = ()) -> LayerRun:
    """Run `model` on `inputs` in inference mode, recording the outputs of the layers at the `capture` paths, and
    for those at the `pre_activation` paths their output before their own activation (a layer without one: its
    output); the run itself goes on with the activated output.

    With `stop_early`, the run ends as soon as every requested output exists (for truncated models such as the
    input-to-layer model of a filter-pattern search); the model output is then None. `calls`, when given, receives
    every (non-container) layer call in execution order with the tensors it read and wrote.
    """
    wanted, wanted_pre = set(capture), set(pre_activation)
    captured: dict[str, Any] = {}
    pre: dict[str, Any] = {}

    def done() -> bool:
        return stop_early and len(captured) == len(wanted) and len(pre) == len(wanted_pre)

    def call_layer(layer: Any, args: tuple, kwargs: dict, prefix: str) -> Any:
        path = f"{prefix}{layer.name}"
        # A functional graph passes a nested model `mask=None` (ConvNeXt's stem and downsampling Sequentials): a
        # keyword without a value changes nothing, so such a model is walked like one called on its input alone.
        nested = is_container(layer) and len(args) == 1 and all(value is None for value in kwargs.values())
        if nested:
            output = run_container(layer, args[0], f"{path}/")
        elif path in wanted_pre and getattr(layer, "activation", None) is not None:
            activation = layer.activation
            layer.activation = keras.activations.linear  # for this call only: the layers after it see the real one
            try:
                pre[path] = layer(*args, **kwargs)
            finally:
                layer.activation = activation
            if done():
                raise _AllCaptured  # nothing needs the activated output
            output = activation(pre[path])
        else:
            output = layer(*args, **kwargs)
            if path in wanted_pre:
                pre[path] = output
        if calls is not None and not nested:
            calls.append(LayerCall(path, _tensor_ids((args, kwargs)), _tensor_ids(output), output))
        if path in wanted:
            captured[path] = output
        if (path in wanted or path in wanted_pre) and done():
            raise _AllCaptured
        return output

    def run_container(container: Any, x: Any, prefix: str) -> Any:
        if isinstance(container, keras.Sequential):
            for layer in container.layers:
                if not isinstance(layer, keras.layers.InputLayer):
                    x = call_layer(layer, (x,), {}, prefix)
            return x

        def operation_fn(operation: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                return call_layer(operation, args, kwargs, prefix)

            return call

        return container._run_through_graph(x, operation_fn=operation_fn)

    try:
        output = run_container(model, inputs, "")
    except _AllCaptured:
        output = None
    missing = (wanted - captured.keys()) | (wanted_pre - pre.keys())
    if missing and not stop_early:
        raise KeyError(f"layers never ran: {sorted(missing)}")
    return LayerRun(output=output, captured=captured, pre_activations=pre)


def layer_output_shapes(model: Any, input_shape: tuple[int, int, int]) -> dict[str, tuple]:
    """Each layer's output shape (batch dimension None), from one forward pass on a single zero image.

    Loaded Sequential models may not know `layer.output` at all, so we measure instead of asking.
    """
    import numpy as np

    nodes = walk_layers(model)
    probe = np.zeros((1, *input_shape), dtype="float32")
    run = run_layers(model, probe, [node.path for node in nodes])
    shapes: dict[str, tuple] = {}
    for path, value in run.captured.items():
        if isinstance(value, (list, tuple)):
            shapes[path] = tuple((None, *tuple(v.shape)[1:]) for v in value)
        else:
            shapes[path] = (None, *tuple(value.shape)[1:])
    return shapes


def block_outputs(model: Any, input_shape: tuple[int, int, int]) -> set[str]:
    """Paths of the layers through whose output the whole computation passes: once such a layer has run, nothing
    computed before it is read again. In a chain every layer is one; in a residual network only the block outputs
    (the add, or the activation after it) are, not the layers inside a block that a shortcut bypasses. A nested
    model's own path counts as its last layer's.
    """
    import numpy as np

    calls: list[LayerCall] = []
    run_layers(model, np.zeros((1, *input_shape), dtype="float32"), calls=calls)
    written_at: dict[int, int] = {}
    last_read: dict[int, int] = {}
    for position, call in enumerate(calls):
        for tensor in call.reads:
            written_at.setdefault(tensor, -1)  # read before any call wrote it: an input
            last_read[tensor] = position
        for tensor in call.writes:
            written_at.setdefault(tensor, position)
    # A tensor written at w and last read at r is still pending at every position strictly between them.
    pending = np.zeros(len(calls) + 1, dtype=np.int64)
    for tensor, read in last_read.items():
        written = written_at[tensor]
        if read > written + 1:
            pending[written + 1] += 1
            pending[read] -= 1
    open_tensors = np.cumsum(pending)
    outputs = {call.path for position, call in enumerate(calls) if open_tensors[position] == 0}
    nodes = walk_layers(model)
    for node in reversed(nodes):  # innermost containers first
        if node.is_model:
            inner = [n.path for n in nodes if n.parent == node.path]
            if inner and inner[-1] in outputs:
                outputs.add(node.path)
    return outputs


def traceable(model: Any) -> bool:
    """True when the model's and every layer's name is a valid TensorFlow name scope, so `run_layers` can run
    inside a `tf.function`; otherwise callers run it eagerly (slower, same numbers)."""
    return bool(_SCOPE_NAME.match(model.name)) and all(_SCOPE_NAME.match(n.layer.name) for n in walk_layers(model))


def pick_channel(values: Any, index: Any) -> Any:
    """(B, ..., C) values and (B,) channel indices -> (B, ...): each row's own channel, e.g. each image's class score
    or each pattern's filter map.

    A one-hot contraction, not a gather: for finite values the same values (one term of each sum is not zero; an
    infinite value in another channel makes it nan) and the same gradient,
    where a batched gather's gradient builds about a hundred ops, traced or eager. As an einsum (a batched matmul
    each way) it takes half the time of a product and a channel sum, whose gradient tiles the map."""
    import tensorflow as tf

    depth = values.shape[-1] if values.shape[-1] is not None else tf.shape(values)[-1]
    return tf.einsum("b...c,bc->b...", values, tf.one_hot(index, depth, dtype=values.dtype))


@contextlib.contextmanager
def input_tape(*tensors: Any, persistent: bool = False) -> Iterator[Any]:
    """A `tf.GradientTape` that watches `tensors` and nothing else: never the model's weights.

    A report differentiates with respect to inputs and activations only. The default tape also watches every
    weight the forward pass reads, so each backward pass computes filter gradients (`Conv2DBackpropFilter`) that
    nothing uses, and TensorFlow 2.21's eager oneDNN kernel for that op aborts the process (`double free or
    corruption`) on real models such as fer's mini-Xception. Gradients of the returned tape never reach it.
    """
    import tensorflow as tf

    with tf.GradientTape(persistent=persistent, watch_accessed_variables=False) as tape:
        for tensor in tensors:
            tape.watch(tensor)
        yield tape


@contextlib.contextmanager
def without_graph_rewrites() -> Iterator[None]:
    """TensorFlow's graph optimiser (grappler) off for the functions first called inside, as it was afterwards.

    A report traces about twenty functions and calls most a few times. Grappler rewrites each graph on its first
    call: on a CNN of a few MFLOP per image that costs more than all its runs (40 instead of 70 ms a pattern step's
    first call, 0.2-0.4 s a report). On VGG16 it pays: its bfloat16 forward passes take 7% longer without it, so
    reports turn it off only for small models (`precision.SMALL_MODEL_FLOPS`)."""
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False, **before})


MODEL_INPUT = "<input>"  # `layer_sources`' name for the model's input
UNKNOWN_SOURCE = "<unknown>"  # a tensor no recorded call wrote (a constant, or state the run does not show)


def layer_sources(model: Any, input_shape: tuple[int, int, int]) -> dict[str, tuple[str, ...]]:
    """Path -> the paths of the calls whose outputs it reads, as one run on a zero image shows them (`MODEL_INPUT`
    for the model's input, `UNKNOWN_SOURCE` for a tensor no call wrote). Read from the run, not from Keras' node
    bookkeeping, so nested models and Sequential models are crossed like any other layer; a layer called several
    times reads the union. Besides walked layers, the paths include operations a functional graph calls directly."""
    import tensorflow as tf

    calls: list[LayerCall] = []
    image = tf.zeros((1, *input_shape), dtype="float32")
    run_layers(model, image, calls=calls)
    writer: dict[int, str] = {}
    sources: dict[str, tuple[str, ...]] = {}
    for call in calls:
        found = [writer.get(t, MODEL_INPUT if t == id(image) else UNKNOWN_SOURCE) for t in call.reads]
        sources[call.path] = tuple(dict.fromkeys((*sources.get(call.path, ()), *found)))
        for tensor in call.writes:
            writer.setdefault(tensor, call.path)
    return sources
