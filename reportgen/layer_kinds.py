"""Which layers each technique applies to."""

from __future__ import annotations

from typing import Any

import keras

CONV_TYPES = (
    keras.layers.Conv2D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Conv2DTranspose,
)
# Layers whose filters can be maximised: a filter is an output channel computed from the input by convolution.
PATTERN_TYPES = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
POOL_TYPES = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def is_conv(layer: Any) -> bool:
    return isinstance(layer, CONV_TYPES)


def is_pool(layer: Any) -> bool:
    return isinstance(layer, POOL_TYPES)


def has_kernel(layer: Any) -> bool:
    """Conv and Dense layers: the ones with weight statistics."""
    return is_conv(layer) or isinstance(layer, keras.layers.Dense)


def is_spatial(shape: Any) -> bool:
    """A single 4-D (batch, height, width, channels) output."""
    return isinstance(shape, tuple) and len(shape) == 4 and all(isinstance(d, (int, type(None))) for d in shape)


def sections_for(layer: Any, shape: Any) -> tuple[str, ...]:
    """The section kinds that show this layer."""
    kinds = []
    if has_kernel(layer):
        kinds.append("weights")
    if (is_conv(layer) or is_pool(layer)) and is_spatial(shape):
        kinds.append("feature_maps")
    if isinstance(layer, PATTERN_TYPES):
        kinds.extend(("filter_patterns", "dataset_examples"))
    return tuple(kinds)
