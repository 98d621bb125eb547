"""The arithmetic of the passes whose numbers are only ranked or averaged: bfloat16 where it pays, else float32;
and the FLOP and activation counts that decide it (and the pattern search's estimate).

CPUs with native bfloat16 (AVX512-BF16, AMX) run convolutions 1.5-3x faster in it, with float32 accumulation.
That pays where a model has enough arithmetic per activation element (VGG, ResNet: hundreds to thousands of FLOPs);
memory-bound models (MobileNet's depthwise and 1x1 layers: tens) get slower, as the casts cost more than the
arithmetic saves. The choice depends only on the model and the CPU, so the same machine gives the same report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from reportgen.graph import LayerNode, walk_layers
from reportgen.layer_kinds import is_spatial

# Measured per step of the pattern search (2 cores, AVX512-BF16): VGG16 1.7x faster, ResNet50 1.2x, the example
# CNN 1.2x (100-2,800 FLOPs of a forward and input-gradient pass per activation element, `search_intensity`);
# MobileNetV2 0.65x (33).
BF16_MIN_INTENSITY = 100.0
KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


def fast_bfloat16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def search_flops(nodes: Sequence[LayerNode], shapes: dict[str, Any], layer_path: str, area_scale: float) -> float:
    """Floating-point operations of one search step for one image: the conv and dense multiply-adds up to
    `layer_path` (output sizes from `shapes`, scaled by `area_scale` = pattern area / measured area), forward plus
    the gradient with respect to the input (about as much again)."""
    macs = 0.0
    for node in nodes:
        shape = shapes.get(node.path)
        for name in KERNELS:
            kernel = getattr(node.layer, name, None)
            if kernel is None or not isinstance(shape, tuple) or len(shape) < 2:
                continue
            spatial = float(np.prod([d for d in shape[1:-1] if d])) * area_scale if len(shape) == 4 else 1.0
            macs += spatial * float(np.prod(kernel.shape))
        if node.path == layer_path:
            break
    return 4.0 * macs  # 2 flops per multiply-add, forward and input gradient


def forward_flops(nodes: Sequence[LayerNode], shapes: dict[str, Any]) -> float:
    """Floating-point operations of one image's forward pass through the whole model (conv and dense
    multiply-adds): what decides whether a report's work is its arithmetic or its Python and tracing."""
    return search_flops(nodes, shapes, nodes[-1].path, 1.0) / 2.0 if nodes else 0.0


# Below this many forward FLOPs per image a model's report is tracing and Python, not arithmetic (the 3-conv
# benchmark CNN: 18 MFLOP; VGG16: 15.5 GFLOP): functions that run once run eagerly (`predictions.compiled`) and
# TensorFlow's graph optimiser stays off (`graph.without_graph_rewrites`). On VGG16 both would cost: its eager
# forward and backward pass of 4 images took 1.1 s against 0.33 s traced, its bfloat16 forward 7% longer
# without the optimiser.
SMALL_MODEL_FLOPS = 1e9


def one_small_call(calls: int | None, flops: float | None) -> bool:
    """True for a function that runs once (`calls`) on at most `SMALL_MODEL_FLOPS` of forward arithmetic (`flops`,
    None when unknown): tracing it would cost more than running it eagerly (`predictions.compiled`)."""
    return calls == 1 and flops is not None and flops <= SMALL_MODEL_FLOPS


def search_elements(nodes: Sequence[LayerNode], shapes: dict[str, Any], layer_path: str,
                    area_scale: float = 1.0) -> float:
    """Activation elements one search step computes for one image, every layer from the input to `layer_path`
    (sizes from `shapes`, scaled by `area_scale`): what memory-bound layers (normalisation, activations,
    depthwise) cost in time, whatever their few FLOPs."""
    elements = 0.0
    for node in nodes:
        shape = shapes.get(node.path)
        if is_spatial(shape):  # one 4-D map (measured shapes: no unknown sizes)
            elements += float(np.prod(shape[1:])) * area_scale
        if node.path == layer_path:
            break
    return elements


def search_intensity(nodes: Sequence[LayerNode], shapes: dict[str, Any], layer_path: str) -> float:
    """FLOPs of one search step per activation element it computes, from the model input to `layer_path`
    (scale-free: both grow with the image area)."""
    return search_flops(nodes, shapes, layer_path, 1.0) / max(search_elements(nodes, shapes, layer_path), 1.0)


def ranking_dtype(model: Any, shapes: dict[str, Any]) -> str:
    """"bfloat16" for the forward passes whose outputs are averaged into scores (deletion and insertion curves)
    on a CPU with native bfloat16 and a model with enough arithmetic to gain from it; else "float32"."""
    if not fast_bfloat16():
        return "float32"
    nodes = walk_layers(model)
    whole = search_intensity(nodes, shapes, nodes[-1].path) if nodes else 0.0
    return "bfloat16" if whole >= BF16_MIN_INTENSITY else "float32"


def computing_in(model: Any, dtype: str) -> contextlib.AbstractContextManager[None]:
    """While a function of `model` is traced (or, for eager models, runs): for "bfloat16", every float32 layer
    computes in mixed bfloat16 (float32 weights, bfloat16 arithmetic). A traced graph keeps what it saw; the
    model's own policies are restored on exit."""
    return layers_computing_in(walk_layers(model) if dtype == "bfloat16" else (), dtype)


@contextlib.contextmanager
def layers_computing_in(nodes: Sequence[LayerNode], dtype: str) -> Iterator[None]:
    """`computing_in` for the given layers only."""
    if dtype != "bfloat16":
        yield
        return
    import keras

    changed: list[tuple[Any, Any]] = []
    try:
        for node in nodes:
            policy = node.layer.dtype_policy
            if policy.name == "float32":
                changed.append((node.layer, policy))
                node.layer.dtype_policy = keras.DTypePolicy("mixed_bfloat16")
        yield
    finally:
        for layer, policy in changed:
            layer.dtype_policy = policy
