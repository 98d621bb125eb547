"""Feature maps: the outputs of chosen 4-D layers for every image, from one multi-output forward pass.

The tutorials build a `keras.Model(inputs, layer.output)` per layer and call `predict` per image, so the shared
early layers run once per chosen layer and per image. Here one `tf.function` (traced once) runs the model layer by
layer through `graph.run_layers`, records every chosen layer's output and stops after the last of them; the
images go through it in batches sized so the captured activations of one batch stay within a memory budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from reportgen.config import flag
from reportgen.errors import InputError
from reportgen.graph import LayerNode, run_layers, traceable
from reportgen.layer_kinds import is_conv, is_pool, is_spatial

# Captured activations of one batch stay under this many bytes when --batch-size is not given.
ACTIVATION_BUDGET = 1 << 30
# A channel whose max - min is within this share of its largest |value| is constant: float32 has ~7 digits, so
# smaller differences are rounding noise (e.g. a zero kernel plus a bias), not a pattern worth stretching.
CONSTANT_TOLERANCE = 1e-6
# Below this absolute spread a channel is constant too: activations of 1e-10 (a randomly initialised MobileNetV2
# deep down) are rounding noise, and stretching them to full contrast would draw noise as if it were a pattern.
VANISHING = 1e-6
LAYERS_FLAG = flag("layers")  # the option this module checks, named as the command line spells it
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class MapBatch:
    """The chosen layers' outputs for images `start` to `start + len(batch)`: path -> (B, H, W, C) float32."""

    start: int
    maps: dict[str, np.ndarray]


@dataclass(frozen=True)
class NormalisedMaps:
    """Maps scaled for display, each channel of each image min-max to [0, 1]; constant channels are 0."""

    unit: np.ndarray  # (B, H, W, C) float32 in [0, 1]
    constant: np.ndarray  # (B, C) bool: the channel has one value over the whole image
    low: np.ndarray  # (B, C) the value shown darkest (the channel's minimum on that image)
    high: np.ndarray  # (B, C) the value shown brightest
    non_finite: int  # NaN or Inf values, shown as the channel's minimum


@dataclass(frozen=True)
class ImageMapStats:
    """One layer on one image."""

    mean: float
    min: float
    max: float
    sparsity: float  # share of exact zeros
    constant_channels: int  # channels with a single value over this image (shown hatched)


@dataclass(frozen=True)
class LayerMapStats:
    """One layer over all images."""

    path: str
    type_name: str
    shape: tuple[int, int, int]  # (H, W, C)
    images: int
    dead_channels: tuple[int, ...]  # channels with one value at every position of every image (a dead ReLU: 0)
    mean_activation: float
    sparsity: float  # share of exact zeros over all images, positions and channels; NaN for a signed output
    min: float
    max: float
    non_finite: int
    channel_spread: tuple[float, ...] = ()  # per channel max - min over every image and position

    def strongest_channels(self, count: int) -> tuple[int, ...]:
        """The `count` channels with the widest range of values over the set (dead ones never), in index order:
        the ones whose maps show the most."""
        spread = np.nan_to_num(np.asarray(self.channel_spread, np.float64), nan=0.0, posinf=0.0)
        if spread.size == 0:
            return tuple(range(min(count, self.channels)))
        order = np.argsort(-spread, kind="stable")[:count]
        return tuple(sorted(int(c) for c in order if spread[c] > 0))

    @property
    def rectified(self) -> bool:
        """True when no value is negative (a ReLU-like output), the only kind for which zeros mean 'off'."""
        return bool(self.min >= 0) if math.isfinite(self.min) else False

    @property
    def vanishing(self) -> bool:
        """Every value within VANISHING of 0, not all exactly 0 (that is dead): numerically nothing."""
        largest = max(abs(self.min), abs(self.max))
        return bool(0 < largest < VANISHING) if math.isfinite(largest) else False

    @property
    def channels(self) -> int:
        return self.shape[2]

    @property
    def dead_share(self) -> float:
        return len(self.dead_channels) / self.channels if self.channels else 0.0


def default_layer(node: LayerNode, shape: Any) -> bool:
    """Shown without --layers: conv and pooling layers with one 4-D output."""
    return (is_conv(node.layer) or is_pool(node.layer)) and is_spatial(shape)


def select_layers(nodes: Sequence[LayerNode], shapes: Mapping[str, Any], patterns: Sequence[str] = ()) -> list[
        LayerNode]:
    """The layers to show, in execution order: every conv and pooling layer, or those `patterns` choose.

    A pattern is a layer path (`conv_base/block1_conv1`), a bare layer name, or a glob matched against both
    (`block1_*`, `*/block5_*`, `*bn*`). An exact name must be a layer with a 4-D output; a glob keeps its 4-D
    matches (nested models only when it matches nothing else: their output is their last layer's). Raises
    InputError naming --layers when a pattern matches nothing or only layers without a 4-D output.
    """
    if not patterns:
        return [node for node in nodes if default_layer(node, shapes.get(node.path))]
    chosen: set[str] = set()
    for pattern in patterns:
        matches = [node for node in nodes if fnmatchcase(node.path, pattern) or fnmatchcase(node.layer.name, pattern)]
        if not matches:
            examples = ", ".join(node.path for node in nodes[:4])
            raise InputError(f"{LAYERS_FLAG}: {pattern!r} matches no layer (paths look like {examples}); "
                             "`reportgen layers MODEL` lists them all")
        is_glob = any(char in pattern for char in _GLOB_CHARS)
        spatial = [node for node in matches if is_spatial(shapes.get(node.path))]
        if is_glob and any(not node.is_model for node in spatial):
            spatial = [node for node in spatial if not node.is_model]  # its maps are its last layer's
        flat = [node for node in matches if not is_spatial(shapes.get(node.path))]
        if not spatial or (flat and not is_glob):
            node = (flat or matches)[0]
            raise InputError(
                f"{LAYERS_FLAG}: {node.path} ({node.type_name}) has output shape {shapes.get(node.path)}, not one "
                "4-D (batch, height, width, channels) map; choose conv, pooling, activation, normalisation or "
                "merge layers that keep a spatial map"
            )
        chosen.update(node.path for node in spatial)
    return [node for node in nodes if node.path in chosen]


def image_bytes(shapes: Mapping[str, Any], paths: Sequence[str]) -> int:
    """Bytes the captured float32 outputs of `paths` take per image."""
    return sum(4 * math.prod(shapes[path][1:]) for path in paths)


def auto_batch_size(shapes: Mapping[str, Any], paths: Sequence[str], images: int,
                    budget: int = ACTIVATION_BUDGET) -> int:
    """The largest batch whose captured activations fit in `budget` bytes (at least 1, at most `images`)."""
    per_image = max(1, image_bytes(shapes, paths))
    return max(1, min(images, budget // per_image))


def capture_function(model: Any, paths: Sequence[str], input_shape: tuple[int, ...], calls: int | None = None,
                     flops: float | None = None) -> Any:
    """A function of a batch returning the outputs of `paths` in order: a `tf.function` traced once for any batch
    size, or the same run eagerly when a layer name cannot be a TensorFlow scope name or it runs once on little
    arithmetic (`calls`, `flops` of a call: see `predictions.compiled`).

    The run stops after the last chosen layer, so a classifier head that no map needs is never computed.
    """
    import tensorflow as tf

    wanted = list(paths)

    def capture(x: Any) -> list[Any]:
        run = run_layers(model, x, capture=wanted, stop_early=True)
        return [run.captured[path] for path in wanted]

    from reportgen.precision import one_small_call

    if not traceable(model) or one_small_call(calls, flops):
        return capture
    return tf.function(capture, input_signature=[tf.TensorSpec((None, *input_shape), tf.float32)], autograph=False)


def iter_feature_maps(model: Any, inputs: np.ndarray, paths: Sequence[str], batch_size: int,
                      image_flops: float | None = None) -> Iterator[MapBatch]:
    """Run `inputs` (N, H, W, C) through `model` in batches; yield each batch's maps for every path
    (`image_flops`: the model's forward FLOPs per image, when known: see `capture_function`)."""
    inputs = np.asarray(inputs, dtype=np.float32)
    run = capture_function(model, paths, inputs.shape[1:], calls=-(-len(inputs) // batch_size),
                           flops=None if image_flops is None else min(batch_size, len(inputs)) * image_flops)
    for start in range(0, len(inputs), batch_size):
        outputs = run(inputs[start:start + batch_size])
        yield MapBatch(start, {path: np.asarray(out, dtype=np.float32) for path, out in zip(paths, outputs,
                                                                                            strict=True)})


def normalise_channels(maps: np.ndarray) -> NormalisedMaps:
    """Scale each channel of each image to [0, 1] by its own min and max over that image.

    Per channel, because channels of one layer differ in scale by orders of magnitude (one shared scale leaves
    most tiles black); per image, because a figure asks where in *this* image each filter responds; min-max
    rather than percentiles, because ReLU maps are mostly zeros and a filter firing on a few pixels is exactly
    what a percentile clip would erase. A constant channel has no pattern to stretch: it is 0 and flagged.
    """
    maps = np.asarray(maps, dtype=np.float32)
    finite = np.isfinite(maps)
    non_finite = int(maps.size - np.count_nonzero(finite))
    if non_finite:
        maps = np.where(finite, maps, np.nan)
        low, high = np.nanmin(maps, axis=(1, 2)), np.nanmax(maps, axis=(1, 2))
        low, high = np.nan_to_num(low), np.nan_to_num(high)
        maps = np.where(finite, maps, low[:, None, None, :])
    else:
        low, high = maps.min(axis=(1, 2)), maps.max(axis=(1, 2))
    span = high - low
    constant = span <= np.maximum(CONSTANT_TOLERANCE * np.maximum(np.abs(low), np.abs(high)), VANISHING)
    scale = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, span)).astype(np.float32)
    unit = (maps - low[:, None, None, :]) * scale[:, None, None, :]
    np.clip(unit, 0.0, 1.0, out=unit)
    return NormalisedMaps(unit=unit, constant=constant, low=low, high=high, non_finite=non_finite)


def image_stats(maps: np.ndarray, normalised: NormalisedMaps) -> list[ImageMapStats]:
    """Per image of a batch (B, H, W, C): mean, range, share of zeros and constant channels."""
    flat = maps.reshape(len(maps), -1)
    zeros = flat.shape[1] - np.count_nonzero(flat, axis=1)
    return [
        ImageMapStats(mean=float(flat[i].mean(dtype=np.float64)), min=float(normalised.low[i].min()),
                      max=float(normalised.high[i].max()), sparsity=float(zeros[i] / max(1, flat.shape[1])),
                      constant_channels=int(normalised.constant[i].sum()))
        for i in range(len(maps))
    ]


class LayerStatsAccumulator:
    """Statistics of one layer's maps gathered batch by batch, so the maps themselves need not be kept.

    `update` takes a batch, `merge` another accumulator's state (the same statistics over other images), `result`
    the statistics so far: any split of the images, in any order, gives the same result.
    """

    def __init__(self, node: LayerNode, shape: tuple[int, int, int]) -> None:
        # The layer's path and type, not the layer: the accumulator travels between processes.
        self.path, self.type_name = node.path, node.type_name
        self.shape = shape
        self.channel_low = np.full(shape[2], np.inf, dtype=np.float32)  # per channel min so far
        self.channel_high = np.full(shape[2], -np.inf, dtype=np.float32)
        self.total = 0.0
        self.zeros = 0
        self.count = 0
        self.images = 0
        self.non_finite = 0
        self.non_finite_channels = np.zeros(shape[2], dtype=bool)

    def update(self, maps: np.ndarray, normalised: NormalisedMaps) -> None:
        """Add a batch (B, H, W, C); `normalised` is `normalise_channels(maps)`, whose per-channel range we reuse."""
        if normalised.non_finite:
            self.non_finite += normalised.non_finite
            finite = np.isfinite(maps)
            self.non_finite_channels |= ~finite.all(axis=(0, 1, 2))  # NaN or Inf is not "dead"
            self.total += float(maps[finite].sum(dtype=np.float64))
        else:
            self.total += float(maps.sum(dtype=np.float64))
        self.channel_low = np.minimum(self.channel_low, normalised.low.min(axis=0))
        self.channel_high = np.maximum(self.channel_high, normalised.high.max(axis=0))
        self.zeros += int(maps.size - np.count_nonzero(maps))  # NaN counts as non-zero
        self.count += int(maps.size)
        self.images += len(maps)

    def update_reduced(self, low: np.ndarray, high: np.ndarray, total: float, zeros: int, count: int, images: int,
                       non_finite: int = 0, non_finite_channels: np.ndarray | None = None) -> None:
        """Add a batch already reduced where it was computed: per image and channel min and max (B, C) over the
        finite values, the sum of the finite values, the counts of zeros, values and non-finite values."""
        self.channel_low = np.minimum(self.channel_low, np.asarray(low, np.float32).min(axis=0))
        self.channel_high = np.maximum(self.channel_high, np.asarray(high, np.float32).max(axis=0))
        if non_finite_channels is not None:
            self.non_finite_channels |= np.asarray(non_finite_channels, bool)
        self.total += float(total)
        self.zeros += int(zeros)
        self.count += int(count)
        self.images += int(images)
        self.non_finite += int(non_finite)

    def merge(self, other: LayerStatsAccumulator) -> None:
        """Fold in the statistics of `other` (the same layer over other images)."""
        self.channel_low = np.minimum(self.channel_low, other.channel_low)
        self.channel_high = np.maximum(self.channel_high, other.channel_high)
        self.non_finite_channels |= other.non_finite_channels
        self.total += other.total
        self.zeros += other.zeros
        self.count += other.count
        self.images += other.images
        self.non_finite += other.non_finite

    def result(self) -> LayerMapStats:
        finite_count = self.count - self.non_finite
        low = float(self.channel_low.min()) if self.count else math.inf
        high = float(self.channel_high.max()) if self.count else -math.inf
        span = self.channel_high - self.channel_low
        largest = np.maximum(np.abs(self.channel_low), np.abs(self.channel_high))
        dead = (span <= np.maximum(CONSTANT_TOLERANCE * largest, VANISHING)) & ~self.non_finite_channels
        rectified = math.isfinite(low) and low >= 0
        return LayerMapStats(
            path=self.path,
            type_name=self.type_name,
            shape=self.shape,
            images=self.images,
            dead_channels=tuple(int(c) for c in np.flatnonzero(dead)) if self.count else (),
            mean_activation=self.total / finite_count if finite_count else float("nan"),
            # Zeros mean "off" only for rectified outputs; a signed (linear, batch-normalised) map has none.
            sparsity=self.zeros / self.count if self.count and rectified else float("nan"),
            min=low if math.isfinite(low) else float("nan"),
            max=high if math.isfinite(high) else float("nan"),
            non_finite=self.non_finite,
            channel_spread=tuple(float(v) for v in np.where(np.isfinite(span), span, 0.0)),
        )


def map_shape(shapes: Mapping[str, Any], path: str) -> tuple[int, int, int]:
    """(H, W, C) of a 4-D layer output."""
    _, height, width, channels = shapes[path]
    return int(height), int(width), int(channels)
