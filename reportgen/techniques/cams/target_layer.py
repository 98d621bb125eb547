"""The CAM layer: which layer's activations the layer methods weigh (a block output with a map fine enough to
localise), and the class-score convolution that must not be it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reportgen.config import flag
from reportgen.errors import InputError
from reportgen.graph import LayerNode
from reportgen.layer_kinds import has_kernel, is_conv, is_spatial

CAM_LAYER_FLAG = flag("cam_layer")  # the option this module checks, named as the command line spells it


@dataclass(frozen=True)
class TargetLayer:
    """The layer whose activations the CAM methods weigh, and why it was chosen."""

    path: str
    type_name: str
    shape: tuple  # (None, h, w, channels)
    reason: str


# Grad-CAM's maps are upsampled from the target layer: below this many cells a side they are too coarse to say
# where the evidence is, so a later but coarser layer loses to an earlier block output of at least this size.
MIN_MAP_SIDE = 7


def _carries_features(layer: Any) -> bool:
    """Convolutions and the layers that keep a conv's map and only transform its values (normalisation,
    activation, merges): their outputs are feature maps. Pooling only resamples one, and nested models are
    represented by their own layers."""
    import keras

    layers = keras.layers
    kinds = (layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization, layers.Activation,
             layers.ReLU, layers.LeakyReLU, layers.PReLU, layers.ELU, layers.Softmax, layers.Add, layers.Multiply,
             layers.Average, layers.Maximum, layers.Concatenate, layers.Dropout, layers.SpatialDropout2D)
    return is_conv(layer) or isinstance(layer, kinds)


def class_score_conv(nodes: Sequence[LayerNode], shapes: Mapping[str, Any], classes: int | None) -> int | None:
    """Index of a conv that computes the class scores itself (one channel per class, as in all-convolutional
    nets such as the mini-Xception): no weighted layer follows it, only pooling, normalisation and activations.
    Its channels are the answer, not features, so every CAM method gives it the same map."""
    if not classes:
        return None
    for i in range(len(nodes) - 1, -1, -1):
        node = nodes[i]
        if node.is_model:
            continue
        if is_conv(node.layer):
            shape = shapes.get(node.path)
            if is_spatial(shape) and shape[-1] in (classes, 1 if classes == 2 else classes):
                return i
            return None
        if has_kernel(node.layer):
            return None  # a Dense head computes the scores: the convs before it carry features
    return None


def choose_target_layer(nodes: Sequence[LayerNode], shapes: Mapping[str, Any], requested: str | None = None, *,
                        blocks: set[str] | None = None, classes: int | None = None) -> TargetLayer | None:
    """`requested` (a path or a unique layer name, with a 4-D output), else the last block output with a map of
    at least MIN_MAP_SIDE cells a side (the last one of any size when none is that large).

    A block output is a layer the whole computation passes through (`graph.block_outputs`; every layer when
    `blocks` is None): in conv -> BN -> ReLU blocks the ReLU, in residual blocks the add or the activation after
    it. A class-score conv (`class_score_conv`) and what follows it are never chosen. None when the model has no
    conv layer with a spatial output.
    """
    if requested:
        node = _find_layer(nodes, requested)
        shape = shapes.get(node.path)
        if not is_spatial(shape):
            raise InputError(
                f"{CAM_LAYER_FLAG}: {node.path} ({node.type_name}) has output shape {shape}, not one 4-D (batch, "
                f"height, width, channels) map; choose a conv, pooling or activation layer such as "
                f"{_spatial_examples(nodes, shapes)}"
            )
        return TargetLayer(node.path, node.type_name, tuple(shape), f"chosen with {CAM_LAYER_FLAG}")
    convs = [i for i, node in enumerate(nodes) if is_conv(node.layer) and is_spatial(shapes.get(node.path))]
    if not convs:
        return None
    score = class_score_conv(nodes, shapes, classes)
    end = len(nodes) if score is None else score

    def candidates(require_block: bool) -> list[int]:
        return [i for i in range(convs[0], end) if not nodes[i].is_model and _carries_features(nodes[i].layer)
                and is_spatial(shapes.get(nodes[i].path)) and min(shapes[nodes[i].path][1:3]) > 1
                and (not require_block or blocks is None or nodes[i].path in blocks)]

    found = candidates(True) or candidates(False) or [c for c in convs if c < end] or convs[-1:]
    large = [i for i in found if min(shapes[nodes[i].path][1:3]) >= MIN_MAP_SIDE]
    chosen = (large or found)[-1]
    node = nodes[chosen]
    last_conv = max(i for i in convs if i <= chosen)
    h, w = shapes[node.path][1:3]
    between = nodes[last_conv + 1:chosen + 1]
    if chosen == last_conv:
        reason = "the last convolutional layer"
    elif blocks is None or all(n.path in blocks for n in between):  # a chain: conv -> BN -> ReLU
        reason = (f"the output of the convolutional layer {nodes[last_conv].path} after its "
                  f"{', '.join(dict.fromkeys(n.type_name for n in between))}")
    else:
        reason = f"the output of the residual block that ends at {node.path} ({node.type_name})"
    reason += f", {h}x{w}: the last block output" + (f" with a map of at least {MIN_MAP_SIDE}x{MIN_MAP_SIDE}"
                                                      if large else "")
    notes = []
    later = [i for i in found if i > chosen]
    if large and later:
        coarse = nodes[later[-1]]
        ch, cw = shapes[coarse.path][1:3]
        notes.append(f"later ones such as {coarse.path} ({ch}x{cw}) are too coarse to localise")
    if score is not None:
        scored = nodes[score]
        notes.append(f"{scored.path} is a class-score convolution ({shapes[scored.path][-1]} channels, one per "
                     "class, only pooling after it): its maps are the scores themselves, the same for every method")
    reason += ("; " + "; ".join(notes) if notes else "")
    return TargetLayer(node.path, node.type_name, tuple(shapes[node.path]), reason)


def _find_layer(nodes: Sequence[LayerNode], requested: str) -> LayerNode:
    by_path = {node.path: node for node in nodes}
    if requested in by_path:
        return by_path[requested]
    named = [node for node in nodes if node.layer.name == requested]
    if len(named) == 1:
        return named[0]
    if named:
        raise InputError(f"{CAM_LAYER_FLAG}: {requested!r} names several layers ({', '.join(n.path for n in named)}); "
                         "give the full path")
    raise InputError(f"{CAM_LAYER_FLAG}: no layer {requested!r}; paths look like "
                     f"{', '.join(node.path for node in nodes[:4])}; `reportgen layers MODEL` lists them all")


def _spatial_examples(nodes: Sequence[LayerNode], shapes: Mapping[str, Any]) -> str:
    spatial = [node.path for node in nodes if is_spatial(shapes.get(node.path)) and not node.is_model]
    return ", ".join(spatial[-3:]) or "(none: this model has no spatial layer)"


def alternative_layers(nodes: Sequence[LayerNode], shapes: Mapping[str, Any], chosen: str,
                       blocks: set[str] | None, limit: int = 3, *, classes: int | None = None
                       ) -> tuple[tuple[str, tuple[int, int]], ...]:
    """Up to `limit` other layers to try as the CAM layer, nearest `chosen` first (in execution order, the earlier
    one on a tie), each with its map's (height, width): block outputs (`graph.block_outputs`; every layer when
    `blocks` is None) that carry features and have a map of at least 2x2, never a class-score conv
    (`class_score_conv`, given `classes`) or what follows it: the candidates `choose_target_layer` picks from, each
    conv -> normalisation -> activation chain counted once, by its end (its conv and normalisation show the same
    map before the activation, nothing new to try)."""
    import keras

    paths = [node.path for node in nodes]
    score = class_score_conv(nodes, shapes, classes)
    end = len(nodes) if score is None else score
    here = paths.index(chosen) if chosen in paths else end
    start = next((i for i, node in enumerate(nodes) if is_conv(node.layer)), end)  # feature maps start at a conv

    def candidate(i: int) -> bool:
        return (not nodes[i].is_model and _carries_features(nodes[i].layer) and is_spatial(shapes.get(nodes[i].path))
                and min(shapes[nodes[i].path][1:3]) > 1 and (blocks is None or nodes[i].path in blocks))

    continues = (keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                 keras.layers.PReLU, keras.layers.ELU, keras.layers.Dropout, keras.layers.SpatialDropout2D)

    def chain_end(i: int) -> bool:
        following = i + 1
        return not (following < end and candidate(following) and isinstance(nodes[following].layer, continues)
                    and shapes[nodes[following].path] == shapes[nodes[i].path])

    found = [i for i in range(start, end) if nodes[i].path != chosen and candidate(i) and chain_end(i)
             and not (i + 1 == here and isinstance(nodes[here].layer, continues))]
    nearest = sorted(found, key=lambda i: (abs(i - here), i))[:limit]
    return tuple((nodes[i].path, (int(shapes[nodes[i].path][1]), int(shapes[nodes[i].path][2]))) for i in nearest)
