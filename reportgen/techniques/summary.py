"""The model summary: every layer, nested ones included, with type, output shape and parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.graph import LayerNode
from reportgen.layer_kinds import sections_for


@dataclass(frozen=True)
class LayerRow:
    path: str
    type_name: str
    output_shape: Any  # tuple, or tuple of tuples for several outputs
    params: int
    trainable_params: int
    depth: int
    parent: str | None
    sections: tuple[str, ...]


@dataclass(frozen=True)
class ModelSummary:
    name: str
    input_shape: tuple
    output_shape: Any
    total_params: int
    trainable_params: int
    non_trainable_params: int
    layers: tuple[LayerRow, ...]


def _count(weights: list[Any]) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def summarize_model(model: Any, nodes: list[LayerNode], shapes: Mapping[str, Any],
                    cam_layer: str | None = None) -> ModelSummary:
    """Summarise `model` from its walked layers and measured output shapes; `cam_layer`, the class activation
    maps' target layer, lists `cam` among its sections."""
    rows = tuple(
        LayerRow(
            path=node.path,
            type_name=node.type_name,
            output_shape=shapes.get(node.path),
            params=_count(node.layer.weights),
            trainable_params=_count(node.layer.trainable_weights),
            depth=node.depth,
            parent=node.parent,
            sections=sections_for(node.layer, shapes.get(node.path)) + (("cam",) if node.path == cam_layer else ()),
        )
        for node in nodes
    )
    total = _count(model.weights)
    trainable = _count(model.trainable_weights)
    top_level = [row for row in rows if row.depth == 0]
    return ModelSummary(
        name=str(model.name),
        input_shape=tuple(model.inputs[0].shape),
        output_shape=top_level[-1].output_shape if top_level else None,
        total_params=total,
        trainable_params=trainable,
        non_trainable_params=total - trainable,
        layers=rows,
    )
