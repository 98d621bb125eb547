"""Which layers get patterns, and whose output each layer's patterns drive (a conv's block output after its
normalisation and activation, where those follow)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reportgen.graph import LayerNode, walk_layers
from reportgen.layer_kinds import PATTERN_TYPES

# Layers between a conv and its block's output that keep each channel's index: normalisation, identity at inference,
# residual adds (the shortcut joins channel by channel) and activations. A chain ends at its first non-linearity.
_CHANNEL_KEEPING = ("BatchNormalization", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                    "ActivityRegularization", "Add")
_NONLINEAR = ("ReLU", "LeakyReLU", "PReLU", "ELU")


@dataclass(frozen=True)
class PatternTarget:
    """Whose output a filter's pattern drives: for a conv with a non-linear activation of its own, the conv; for a
    linear conv followed by normalisation and an activation (conv -> batch norm -> ReLU blocks), the block's
    output after them, the quantity the filter really responds to. `pre` is the input of the non-linearity,
    followed where the filter is off everywhere (None: the conv's own pre-activation). Whether the output is linear
    in the image is a question about every layer before it: `layer_kinds.image_linearity`."""

    layer: str  # the layer whose filters these are (a section's layer)
    output: str  # the layer whose channel mean is maximised
    pre: str | None = None
    chain: tuple[str, ...] = ()  # the layers from `layer` (excluded) to `output` (included)

    @property
    def linear(self) -> bool:
        """True when no non-linearity follows the layer up to the optimised output (`output` is `pre`): the output is
        affine in the layer's input, not necessarily in the image (`layer_kinds.image_linearity`)."""
        return self.pre == self.output


def _nonlinear(layer: Any) -> bool:
    import keras

    if type(layer).__name__ in _NONLINEAR:
        return True
    activation = getattr(layer, "activation", None)
    return activation is not None and activation is not keras.activations.linear and type(layer).__name__ in (
        "Activation", *[t.__name__ for t in PATTERN_TYPES])


def layer_consumers(model: Any) -> dict[str, list[str]]:
    """Path -> paths of the layers that take its output, within the same (nested) model."""
    import keras

    from reportgen.graph import is_container

    consumers: dict[str, list[str]] = {}

    def visit(container: Any, prefix: str) -> None:
        layers = [layer for layer in container.layers if not isinstance(layer, keras.layers.InputLayer)]
        if isinstance(container, keras.Sequential):
            for a, b in itertools.pairwise(layers):
                consumers.setdefault(prefix + a.name, []).append(prefix + b.name)
        else:
            own = {id(layer) for layer in layers}
            for layer in layers:
                for node in getattr(layer, "_inbound_nodes", []):
                    for parent in node.parent_nodes:
                        if id(parent.operation) in own:
                            found = consumers.setdefault(prefix + parent.operation.name, [])
                            if prefix + layer.name not in found:
                                found.append(prefix + layer.name)
        for layer in layers:
            if is_container(layer):
                visit(layer, f"{prefix}{layer.name}/")

    visit(model, "")
    return consumers


def pattern_target(nodes: Sequence[LayerNode], consumers: dict[str, list[str]], path: str) -> PatternTarget:
    """The output a pattern of the layer at `path` should drive (see `PatternTarget`)."""
    by_path = {node.path: node.layer for node in nodes}
    layer = by_path[path]
    if _nonlinear(layer) or not isinstance(layer, PATTERN_TYPES):
        return PatternTarget(path, path)
    chain: list[str] = []
    current = pre = path
    while len(consumers.get(current, [])) == 1:
        following = consumers[current][0]
        kind = type(by_path[following]).__name__
        if kind in (*_NONLINEAR, "Activation") and _nonlinear(by_path[following]):  # not a conv's own
            return PatternTarget(path, following, current, (*chain, following))
        if kind not in _CHANNEL_KEEPING:
            break
        chain.append(following)
        current = following
        if kind != "Add":
            pre = current
    # No non-linearity follows: the last normalised (not merged) output, linear in the input.
    chain = chain[:chain.index(pre) + 1] if pre != path else []
    return PatternTarget(path, pre, pre, tuple(chain))


def first_conv(nodes: Sequence[LayerNode]) -> str | None:
    """The path of the first conv layer (the walk's order), None without one."""
    return next((node.path for node in nodes if isinstance(node.layer, PATTERN_TYPES)), None)


def pattern_targets(model: Any, paths: Sequence[str], nodes: Sequence[LayerNode] | None = None) -> list[PatternTarget]:
    nodes = walk_layers(model) if nodes is None else nodes
    consumers = layer_consumers(model)
    return [pattern_target(nodes, consumers, path) for path in paths]


# Up to this many conv layers a model gets patterns of every one; deeper ones one per stage (see `pattern_layers`).
ALL_LAYERS_UP_TO = 8


def one_per_stage(targets: list[PatternTarget], shapes: dict) -> list[PatternTarget]:
    """The deepest of `targets` (in order) at each map size of their outputs: the last conv of each stage, before
    the network downsamples (VGG16: block1_conv2, block2_conv2, block3_conv3, block4_conv3, block5_conv3)."""
    last = {tuple(shapes[t.output][1:3]): t for t in targets}
    keep = {id(t) for t in last.values()}
    return [t for t in targets if id(t) in keep]


def choose_targets(model: Any, nodes: Sequence[LayerNode], shapes: dict[str, Any],
                   layer_patterns: Sequence[str] | None = None) -> list[PatternTarget]:
    """The layers whose filters get patterns, each with the output its patterns drive: the layers
    `layer_patterns` (--layers) choose (any layer with a 4-D output; a conv's patterns drive its block's output,
    another layer's its own), else every conv layer of a model with at most `ALL_LAYERS_UP_TO` of them, else one
    per stage (`one_per_stage`): a stage's convs refine one texture scale, and its last shows the most of it for
    the same search. Layers driving the same output are shown once."""
    from reportgen.techniques.feature_maps import select_layers

    consumers = layer_consumers(model)
    if layer_patterns:
        chosen = select_layers(nodes, shapes, layer_patterns)
        chosen = [n for n in chosen if not n.is_model]
    else:
        chosen = [n for n in nodes if isinstance(n.layer, PATTERN_TYPES)]
    producers: dict[str, list[str]] = {}
    for source, takers in consumers.items():
        for taker in takers:
            producers.setdefault(taker, []).append(source)
    targets, seen = [], set()
    for node in chosen:
        if isinstance(node.layer, PATTERN_TYPES):
            target = pattern_target(nodes, consumers, node.path)
        else:  # an activation's input is followed while the filter is off everywhere
            sources = producers.get(node.path, [])
            nonlinear = type(node.layer).__name__ in ("ReLU", "LeakyReLU", "PReLU", "ELU", "Activation")
            pre = sources[0] if nonlinear and len(sources) == 1 else node.path
            target = PatternTarget(node.path, node.path, pre)
        if target.output not in seen:
            seen.add(target.output)
            targets.append(target)
    if not layer_patterns and len(targets) > ALL_LAYERS_UP_TO:
        return one_per_stage(targets, shapes)
    return targets


def layer_consumers_from(sources: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """`graph.layer_sources` turned around: path -> the paths that read its output, in run order."""
    consumers: dict[str, list[str]] = {}
    for path, read in sources.items():
        for source in read:
            found = consumers.setdefault(source, [])
            if path not in found:
                found.append(path)
    return consumers


def feeds_class_scores(sources: Mapping[str, tuple[str, ...]], layers: Mapping[str, Any],
                       shapes: Mapping[str, Any], path: str, classes: int) -> bool:
    """True when channel i of the layer at `path` becomes the score of class i: it has `classes` output channels,
    and only global pooling, channel-wise layers (batch normalisation, dropout, activations, softmax) and reshaping
    of the pooled (batch, classes) vector follow it, one after another, to the end of the model (the class-score
    conv of all-convolutional nets such as the mini-Xception). `sources` is `graph.layer_sources`."""
    import keras

    layers_ = keras.layers
    pooling = (layers_.GlobalAveragePooling2D, layers_.GlobalMaxPooling2D)
    channel_wise = (layers_.BatchNormalization, layers_.Dropout, layers_.Activation, layers_.Softmax, layers_.ReLU,
                    layers_.LeakyReLU, layers_.ELU, layers_.Identity)
    shape = shapes.get(path)
    if not classes or not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] != classes:
        return False
    consumers = layer_consumers_from(sources)
    current = path
    while consumers.get(current):
        following = consumers[current]
        if len(following) != 1:
            return False
        before, current = shapes.get(current), following[0]
        layer, shape = layers.get(current), shapes.get(current)
        if layer is None or not isinstance(shape, tuple) or shape[-1] != classes:
            return False
        vector = len(shape) == 2 and isinstance(before, tuple) and len(before) == 2  # (batch, classes) in and out
        if not (isinstance(layer, (*pooling, *channel_wise)) or (vector and isinstance(layer, (layers_.Reshape,
                                                                                                 layers_.Flatten)))):
            return False
    return current != path and len(shapes.get(current, ())) == 2
