"""Which layers each technique applies to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


# Layers whose output is an affine function of their inputs in inference mode (with a linear activation of their
# own, where they have one): convolutions and dense layers before their activation, normalisation with stored
# statistics, regularisers that are the identity at inference, merges that add or stack, average pooling,
# resampling and reshaping. Pooling by maximum, normalisation by the input's own statistics, products and every
# non-linear activation are not; anything not named here is not known to be either.
AFFINE_TYPES = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Conv2DTranspose,
    keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense, keras.layers.EinsumDense,
    keras.layers.BatchNormalization, keras.layers.Normalization, keras.layers.Rescaling,
    keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D, keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization, keras.layers.Identity,
    keras.layers.Add, keras.layers.Subtract, keras.layers.Average, keras.layers.Concatenate,
    keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalAveragePooling3D,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D, keras.layers.Cropping1D,
    keras.layers.Cropping2D, keras.layers.Cropping3D, keras.layers.UpSampling1D, keras.layers.UpSampling2D,
    keras.layers.UpSampling3D, keras.layers.Resizing, keras.layers.Reshape, keras.layers.Flatten,
    keras.layers.Permute, keras.layers.RepeatVector, keras.layers.Activation,
)
NONLINEAR_TYPES = (
    keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU, keras.layers.Softmax,
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D, keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D, keras.layers.LayerNormalization,
    keras.layers.GroupNormalization, keras.layers.UnitNormalization, keras.layers.RMSNormalization,
    keras.layers.Multiply, keras.layers.Maximum, keras.layers.Minimum, keras.layers.Dot,
)


def activation_name(layer: Any) -> str | None:
    """The name of a layer's own non-linear activation (`relu`, `swish`...), None when it has none or a linear one.
    An activation layer's is its function: `relu` (`relu capped at 6` for ReLU6), `leakyrelu`, `softmax`..."""
    if isinstance(layer, keras.layers.ReLU):
        cap = getattr(layer, "max_value", None)
        return "relu" if cap is None else f"relu capped at {float(cap):g}"
    if isinstance(layer, (keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU, keras.layers.Softmax)):
        return type(layer).__name__.lower()
    activation = getattr(layer, "activation", None)
    if activation is None or activation is keras.activations.linear:
        return None
    name = getattr(activation, "__name__", None) or type(activation).__name__
    return None if name == "linear" else name


def linearity_of(layer: Any, own_activation: bool = True) -> bool | None:
    """True when `layer` is affine in its inputs in inference mode, False when it is not, None when reportgen does
    not know (a custom or unlisted layer). `own_activation=False` asks about its output before its own activation."""
    if isinstance(layer, NONLINEAR_TYPES):
        return False
    if own_activation and activation_name(layer) is not None:
        return False
    return True if isinstance(layer, AFFINE_TYPES) else None


@dataclass(frozen=True)
class Linearity:
    """Whether a layer's output is an affine function of the model's input image, read from the layer graph: True
    only when every layer between the input and it is affine (`linearity_of`); False when a non-linear one lies
    between (`cause`, the one nearest the layer); None when no non-linear one does but an unclassified one does
    (`cause`)."""

    linear: bool | None
    cause: str | None = None  # the path of that layer


def describe_layer(path: str, layer: Any | None) -> str:
    """`b1_relu1 (Activation, relu)`: a layer's path, type and own activation, for sentences about it."""
    if layer is None:
        return f"{path} (an operation of the model's graph)"
    name = activation_name(layer)
    return f"{path} ({type(layer).__name__}{', ' + name if name else ''})"


def image_linearity(sources: Mapping[str, tuple[str, ...]], layers: Mapping[str, Any], path: str, *,
                    before_activation: bool = False) -> Linearity:
    """Whether the output of the layer at `path` (before its own activation with `before_activation`) is an affine
    function of the input image. `sources` is `graph.layer_sources` (who reads whose output), `layers` maps paths
    to layer objects (an operation the graph calls directly, missing from it, counts as unclassified)."""
    from reportgen.graph import MODEL_INPUT

    seen: set[str] = set()
    order: list[str] = []  # nearest first
    queue = [path]
    while queue:
        current = queue.pop(0)
        if current in seen or current == MODEL_INPUT:
            continue
        seen.add(current)
        order.append(current)
        queue.extend(sources.get(current, ()))
    unknown = None
    for current in order:
        layer = layers.get(current)
        verdict = None if layer is None else linearity_of(layer, own_activation=not (before_activation
                                                                                   and current == path))
        if verdict is False:
            return Linearity(False, current)
        if verdict is None and unknown is None:
            unknown = current
    return Linearity(True) if unknown is None else Linearity(None, unknown)
