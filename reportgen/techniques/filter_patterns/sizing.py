"""How large each layer's patterns are, which filters are searched, and in which arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reportgen.errors import InputError
from reportgen.graph import LayerNode, run_layers
from reportgen.precision import BF16_MIN_INTENSITY, fast_bfloat16, search_intensity

if TYPE_CHECKING:
    from reportgen.techniques.dataset_examples import ReceptiveField

DEFAULT_PATTERN_SIZE = 128



def choose_filters(channels: int, count: int, indices: Sequence[int] | None, layer: str) -> tuple[int, ...]:
    """`indices` when given (checked against the layer, duplicates dropped), else the first `count` filters."""
    if indices is None:
        return tuple(range(min(count, channels)))
    bad = [i for i in indices if not 0 <= i < channels]
    if bad:
        raise InputError(f"--filter-indices: {', '.join(map(str, bad))} out of range for layer {layer}, which has "
                         f"{channels} filters (0-{channels - 1})")
    return tuple(dict.fromkeys(int(i) for i in indices))


def pattern_size(input_shape: tuple[int | None, int | None, int], requested: int | None) -> tuple[int, int]:
    """(height, width): `--pattern-size` when given, else the model's input size when fixed, shrunk (aspect kept)
    to at most 128 px on its longer side, else 128.

    A pattern maximises a filter's mean over the whole map, so it is a texture: a 224 px canvas shows the same
    texture as a 128 px one, repeated, for (224 / 128)^2 = 3x the work (a 13-layer VGG16 search goes from about
    12-15 to about 4 minutes on 2 cores). The tutorials draw VGG16's patterns at 150 px, Lucid at 128.
    """
    if requested is not None:
        return requested, requested
    height, width = input_shape[0], input_shape[1]
    if height is None or width is None:
        return DEFAULT_PATTERN_SIZE, DEFAULT_PATTERN_SIZE
    shrink = min(1.0, DEFAULT_PATTERN_SIZE / max(height, width))
    return max(8, round(height * shrink)), max(8, round(width * shrink))


def search_size(model: Any, deepest_layer: str, input_shape: tuple[int | None, int | None, int],
                requested: int | None) -> tuple[int, int]:
    """`pattern_size`, or the model's own input size when the model cannot run up to `deepest_layer` on the
    smaller default (convolutions and pooling take any size; a Reshape or Dense before them pins the model's)."""
    height, width = pattern_size(input_shape, requested)
    model_height, model_width, channels = input_shape
    if requested is not None or (model_height, model_width) == (height, width):
        return height, width
    try:
        run_layers(model, np.zeros((1, height, width, channels), np.float32), [deepest_layer], stop_early=True)
    except Exception:  # Keras raises many types for a shape it cannot take
        return int(model_height), int(model_width)
    return height, width


MIN_LAYER_SIZE = 32  # the smallest canvas a layer's patterns get (drawn enlarged: a texture needs some periods)


def layer_sizes(model: Any, outputs: Sequence[str], canvas: tuple[int, int], channels: int,
                fields: dict[str, ReceptiveField] | None = None) -> dict[str, tuple[int, int]]:
    """(height, width) of the canvas for the patterns driving each of `outputs`: twice its receptive field, rounded
    up to 16 px, at least `MIN_LAYER_SIZE`, at most `canvas`. A filter sees only its receptive field, and a pattern
    maximises its mean over the whole map, so a larger canvas repeats the same texture for more work (VGG16's
    block1_conv2 sees 5x5 px: a 32 px canvas shows its texture for 1/16 of a 128 px one's search). The canvas
    stays where the model cannot run on the smaller one. `fields`: measured already (on any input at least as
    large as the canvas: a field past the canvas is capped either way); else every field from one forward pass on
    the canvas."""
    from reportgen.techniques.dataset_examples import receptive_fields

    if fields is None:
        fields = receptive_fields(model, list(outputs), (*canvas, channels))
    sizes: dict[str, tuple[int, int]] = {}
    for output in outputs:
        size = tuple(min(side, max(MIN_LAYER_SIZE, -(-2 * reach // 16) * 16)) for side, reach in
                     zip(canvas, fields[output].size, strict=True))
        if size != canvas:
            try:
                run_layers(model, np.zeros((1, *size, channels), np.float32), [output], stop_early=True)
            except Exception:  # Keras raises many types for a shape it cannot take
                size = canvas
        sizes[output] = (size[0], size[1])
    return sizes


def search_dtype(nodes: Sequence[LayerNode], shapes: dict[str, Any], layer_paths: Sequence[str]) -> str:
    """The search steps' arithmetic for a report: bfloat16 on CPUs with native bfloat16 when the layers' median
    `search_intensity` makes it pay, else float32. Depends only on the model and the CPU, so runs repeat."""
    if not layer_paths or not fast_bfloat16():
        return "float32"
    intensity = float(np.median([search_intensity(nodes, shapes, path) for path in layer_paths]))
    return "bfloat16" if intensity >= BF16_MIN_INTENSITY else "float32"
