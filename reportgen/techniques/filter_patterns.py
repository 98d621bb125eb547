"""Filter patterns: for chosen filters of a conv layer, the inputs that drive the filter's mean activation up
(ascent) and down (descent).

All chosen filters of a layer, in both directions, are optimised together as one batch by one compiled step
(`tf.function`, traced once per layer; filter indices and directions are tensors, so nothing retraces). The model
runs only up to the layer (`graph.run_layers(..., stop_early=True)`), which also works for nested and loaded models.

What is optimised is the filter's mean output, the number reported (`activation`, re-evaluated in float32 on the
stored pattern). Where the filter is off everywhere (a ReLU gives exactly zero) that has no gradient, so there the
search follows the mean *pre-activation* (the layer's output before its own activation) instead: a filter that is
off on the starting image can still be switched on, and descent keeps pushing once the output reaches zero. (The
pre-activation alone is no substitute: descent would buy a lower mean with bright spikes, raising the real output.)
A filter is *dead* when even its ascent pattern leaves its output at zero everywhere, or when the search cannot
move it at all (zero gradient).
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.config import DIRECTIONS
from reportgen.errors import InputError
from reportgen.graph import LayerNode, run_layers, traceable, walk_layers
from reportgen.layer_kinds import is_spatial
from reportgen.techniques.pattern_params import Method, PixelMap, method_named

DEFAULT_PATTERN_SIZE = 128
# A filter whose output stays within this of zero on its ascent pattern cannot be switched on (ReLU gives exact 0).
DEAD_LEVEL = 1e-6
# Images per compiled step at 128x128; scaled down for larger patterns to bound memory (~1 GiB on VGG16).
BATCH_PIXELS = 32 * 128 * 128


@dataclass(frozen=True)
class PatternSettings:
    """How the search runs; the same for every layer of a report."""

    steps: int = 40
    height: int = DEFAULT_PATTERN_SIZE
    width: int = DEFAULT_PATTERN_SIZE
    method: str = "fourier"
    seed: int = 0
    directions: tuple[str, ...] = DIRECTIONS
    compute_dtype: str = "float32"  # "bfloat16" runs the search steps in bfloat16 (final numbers stay float32)

    @property
    def batch_limit(self) -> int:
        return max(1, BATCH_PIXELS // (self.height * self.width))


@dataclass(frozen=True)
class DirectionPatterns:
    """The patterns of one direction for a layer's chosen filters, in the order of `LayerPatterns.filters`."""

    direction: str
    inputs: np.ndarray  # (F, H, W, C) float32: the model input that produced each number below
    activation: np.ndarray  # (F,) mean of the filter's output (after the layer's activation) on the pattern
    pre_activation: np.ndarray  # (F,) mean before the layer's activation (e.g. ReLU)


@dataclass(frozen=True)
class LayerPatterns:
    layer: str
    filters: tuple[int, ...]
    patterns: tuple[DirectionPatterns, ...]
    start_activation: np.ndarray  # (F,) on the starting image (the same start for both directions)
    start_pre_activation: np.ndarray  # (F,)
    dead: np.ndarray  # (F,) bool
    seconds: float
    flops: float  # estimated floating-point operations of the search steps (0 when not given)

    def direction(self, name: str) -> DirectionPatterns:
        return next(p for p in self.patterns if p.direction == name)


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


def fast_bfloat16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), where conv steps run ~2-4x faster."""
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
        for name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            kernel = getattr(node.layer, name, None)
            if kernel is None or not isinstance(shape, tuple) or len(shape) < 2:
                continue
            spatial = float(np.prod([d for d in shape[1:-1] if d])) * area_scale if len(shape) == 4 else 1.0
            macs += spatial * float(np.prod(kernel.shape))
        if node.path == layer_path:
            break
    return 4.0 * macs  # 2 flops per multiply-add, forward and input gradient


# bfloat16 steps pay where the search is arithmetic-bound. Measured per step (32 patterns, 2 cores, AVX512-BF16):
# VGG16 block3_conv1 1.7x faster, ResNet50 1.2x, the example CNN 1.2x (median 100-2,800 FLOPs per activation
# element along the path); MobileNetV2 0.65x, slower (33: depthwise and 1x1 layers are memory-bound, and the casts
# cost more than the arithmetic saves).
BF16_MIN_INTENSITY = 100.0


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


def search_dtype(nodes: Sequence[LayerNode], shapes: dict[str, Any], layer_paths: Sequence[str]) -> str:
    """The search steps' arithmetic for a report: bfloat16 on CPUs with native bfloat16 when the layers' median
    `search_intensity` makes it pay, else float32. Depends only on the model and the CPU, so runs repeat."""
    if not layer_paths or not fast_bfloat16():
        return "float32"
    intensity = float(np.median([search_intensity(nodes, shapes, path) for path in layer_paths]))
    return "bfloat16" if intensity >= BF16_MIN_INTENSITY else "float32"


def matmul_rate(dtype: str = "float32", size: int = 1024, repeats: int = 5) -> float:
    """The machine's matrix-multiply rate in GFLOP/s (best of `repeats`), the yardstick for the search's speed."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal([size, size], seed=[0, 0]), dtype)
    matmul = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x), tf.float32)))
    matmul(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a).numpy()
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


def _activation_of(layer: Any) -> Any:
    import keras

    return getattr(layer, "activation", None) or keras.activations.linear


def _channel_wise(activation: Any) -> bool:
    """True for activations that mix channels (softmax), which must see the whole layer output."""
    import keras

    return activation in (keras.activations.softmax, keras.activations.log_softmax)


@contextlib.contextmanager
def _tracing_view(nodes: Sequence[LayerNode], layer: Any, compute_dtype: str) -> Iterator[None]:
    """While a function is traced (or, for eager models, runs): `layer` without its activation (we optimise the
    pre-activation) and, for bfloat16, every float32 layer computing in mixed bfloat16. Everything is restored on
    exit; a traced graph keeps what it saw, so the model itself is left as it was."""
    import keras

    activation = _activation_of(layer)
    changed: list[tuple[Any, Any]] = []
    try:
        layer.activation = keras.activations.linear
        if compute_dtype == "bfloat16":
            for node in nodes:
                policy = node.layer.dtype_policy
                if policy.name == "float32":
                    changed.append((node.layer, policy))
                    node.layer.dtype_policy = keras.DTypePolicy("mixed_bfloat16")
        yield
    finally:
        layer.activation = activation
        for target, policy in changed:
            target.dtype_policy = policy


def _channel_means(values: Any, filters: Any) -> Any:
    """(B, h, w, C), (B,) filter per image -> (B,) spatial mean of each image's own filter, float32."""
    import tensorflow as tf

    means = tf.reduce_mean(tf.cast(values, tf.float32), axis=[1, 2])
    return tf.reduce_sum(means * tf.one_hot(filters, int(values.shape[-1]), dtype=tf.float32), axis=1)


@dataclass(frozen=True)
class _Compiled:
    step: Any  # (params, (m, v), seed, t, filters, signs) -> (params, (m, v), objective)
    render: Any  # params -> model input
    evaluate: Any  # (model input, filters) -> (pre-activation mean, activation mean, max |activation|)


def _compile(model: Any, layer_path: str, method: Method, pixel_map: PixelMap, shape: tuple[int, int, int],
             compute_dtype: str) -> _Compiled:
    import tensorflow as tf

    nodes = walk_layers(model)
    layer = next(node.layer for node in nodes if node.path == layer_path)
    height, width, channels = shape

    def pre_activation(x: Any) -> Any:
        return run_layers(model, x, [layer_path], stop_early=True).captured[layer_path]

    activation = _activation_of(layer)
    whole = _channel_wise(activation)

    def step(params: Any, state: Any, seed: Any, t: Any, filters: Any, signs: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(params)
            unit = method.image(params, width)
            if method.jitter is not None:
                # Ascent only: descent must switch the filter off everywhere at once, which random views fight
                # (on the example model most descents then ended above their start).
                unit = method.jitter(unit, seed, tf.cast(signs > 0, tf.float32))
            pre = pre_activation(pixel_map.to_model(unit))
            # Each image's own filter, (B, h, w). Softmax-like activations need every channel; the others are
            # elementwise, so they run on the one channel (the layer's full output is large on early layers).
            if whole:
                post = tf.cast(tf.gather(activation(pre), filters, axis=3, batch_dims=1), tf.float32)
                pre = tf.cast(tf.gather(pre, filters, axis=3, batch_dims=1), tf.float32)
            else:
                pre = tf.cast(tf.gather(pre, filters, axis=3, batch_dims=1), tf.float32)
                post = activation(pre)
            # Where the filter is off everywhere the real output has no gradient: follow the pre-activation there.
            off = tf.stop_gradient(tf.reduce_max(post, axis=[1, 2]) <= 0.0)
            objective = tf.where(off, tf.reduce_mean(pre, axis=[1, 2]), tf.reduce_mean(post, axis=[1, 2]))
            total = tf.reduce_sum(signs * objective)  # each image's gradient is its own: images are independent
        params, state = method.update(params, tape.gradient(total, params), state, t)
        return params, state, objective

    def evaluate(x: Any, filters: Any) -> Any:
        pre = pre_activation(x)
        post = activation(pre)
        onehot = tf.one_hot(filters, int(post.shape[-1]), dtype=tf.float32)
        peak = tf.reduce_sum(tf.reduce_max(tf.abs(tf.cast(post, tf.float32)), axis=[1, 2]) * onehot, axis=1)
        return _channel_means(pre, filters), _channel_means(post, filters), peak

    def render(params: Any) -> Any:
        return pixel_map.to_model(method.image(params, width))

    if not traceable(model):
        return _Compiled(_in_view(step, nodes, layer, compute_dtype), render, _in_view(evaluate, nodes, layer))
    param_spec = tf.TensorSpec([None, *method.param_shape(height, width, channels)], tf.float32)
    index_spec = tf.TensorSpec([None], tf.int32)
    with _tracing_view(nodes, layer, compute_dtype):
        step_fn = tf.function(step, autograph=False).get_concrete_function(
            param_spec, (param_spec, param_spec), tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.float32),
            index_spec, tf.TensorSpec([None], tf.float32))
    with _tracing_view(nodes, layer, "float32"):
        evaluate_fn = tf.function(evaluate, autograph=False).get_concrete_function(
            tf.TensorSpec([None, height, width, channels], tf.float32), index_spec)
    return _Compiled(step_fn, tf.function(render, autograph=False).get_concrete_function(param_spec), evaluate_fn)


def _in_view(function: Any, nodes: Sequence[LayerNode], layer: Any, compute_dtype: str = "float32") -> Any:
    """`function` run eagerly inside `_tracing_view`, for models whose layer names cannot be traced."""

    def run(*args: Any) -> Any:
        with _tracing_view(nodes, layer, compute_dtype):
            return function(*args)

    return run


def _batches(count: int, limit: int) -> list[np.ndarray]:
    """Indices 0..count-1 in near-equal batches of at most `limit`."""
    return [part for part in np.array_split(np.arange(count), -(-count // limit)) if part.size]


def _evaluate(compiled: _Compiled, inputs: np.ndarray, filters: np.ndarray, limit: int) -> tuple[np.ndarray, ...]:
    import tensorflow as tf

    parts = [compiled.evaluate(tf.constant(inputs[b]), tf.constant(filters[b], tf.int32)) for b in
             _batches(len(inputs), limit)]
    return tuple(np.concatenate([p[k].numpy() for p in parts]) for k in range(3))


def search_patterns(
    model: Any,
    layer_path: str,
    filters: Sequence[int],
    settings: PatternSettings,
    pixel_map: PixelMap,
    flops_per_step: float = 0.0,
) -> LayerPatterns:
    """Optimise the patterns of `filters` of the layer at `layer_path` in every direction of `settings`.

    Deterministic for a given `settings.seed`: each filter's starting image is drawn from (seed, layer, filter),
    and the random transforms of each step from (seed, layer, step). `flops_per_step` (see `search_flops`) is
    only carried into the result for reporting.
    """
    import tensorflow as tf

    started = time.perf_counter()
    method = method_named(settings.method)
    height, width, channels = settings.height, settings.width, int(pixel_map.offset.shape[0])
    compiled = _compile(model, layer_path, method, pixel_map, (height, width, channels), settings.compute_dtype)

    salt = zlib.crc32(layer_path.encode("utf-8"))
    starts = np.stack([method.init(np.random.default_rng([settings.seed, salt, f]), height, width, channels)
                       for f in filters])
    count = len(filters)
    directions = settings.directions
    # One job per (direction, filter); both directions of a filter start from the same image.
    params = np.concatenate([starts] * len(directions))
    job_filters = np.tile(np.asarray(filters, np.int32), len(directions))
    signs = np.repeat([1.0 if d == "ascent" else -1.0 for d in directions], count).astype(np.float32)

    final = np.empty_like(params)
    for b, batch in enumerate(_batches(len(params), settings.batch_limit)):
        p = tf.constant(params[batch])
        state = (tf.zeros_like(p), tf.zeros_like(p))
        f, s = tf.constant(job_filters[batch]), tf.constant(signs[batch])
        for t in range(1, settings.steps + 1):
            seed = tf.constant([(settings.seed * 1_000_003 + salt) % 2**63, b * 1_000_003 + t], tf.int64)
            p, state, _ = compiled.step(p, state, seed, tf.constant(float(t)), f, s)
        final[batch] = p.numpy()

    def render(values: np.ndarray) -> np.ndarray:
        return np.concatenate([compiled.render(tf.constant(values[b])).numpy()
                               for b in _batches(len(values), settings.batch_limit)])

    start_inputs = render(starts)
    start_pre, start_post, _ = _evaluate(compiled, start_inputs, job_filters[:count], settings.batch_limit)
    inputs = render(final)
    pre, post, peak = _evaluate(compiled, inputs, job_filters, settings.batch_limit)

    # Dead: the ascent pattern cannot switch the filter on, or no direction could move it at all.
    dead = np.zeros(count, bool)
    for k, direction in enumerate(directions):
        rows = slice(k * count, (k + 1) * count)
        if direction == "ascent":
            dead |= peak[rows] <= DEAD_LEVEL
        if settings.steps > 0:
            dead |= np.all((final[rows] == params[rows]).reshape(count, -1), axis=1)
    patterns = tuple(
        DirectionPatterns(direction=d, inputs=inputs[k * count:(k + 1) * count],
                          activation=post[k * count:(k + 1) * count], pre_activation=pre[k * count:(k + 1) * count])
        for k, d in enumerate(directions)
    )
    return LayerPatterns(
        layer=layer_path, filters=tuple(int(f) for f in filters), patterns=patterns, start_activation=start_post,
        start_pre_activation=start_pre, dead=dead, seconds=time.perf_counter() - started,
        flops=flops_per_step * len(params) * settings.steps,
    )


def filter_responses(model: Any, layer_path: str, inputs: np.ndarray, filters: Sequence[int],
                     batch: int = 32) -> np.ndarray:
    """(N, F): the mean output (after the layer's activation) of each of `filters` on each model input, float32.

    Independent of the search (no activation trick, no bfloat16): what the model itself computes.
    """
    import tensorflow as tf

    def run(x: Any) -> Any:
        return tf.reduce_mean(run_layers(model, x, [layer_path], stop_early=True).captured[layer_path], axis=[1, 2])

    if traceable(model):
        run = tf.function(run, autograph=False)
    rows = [run(tf.constant(inputs[b], tf.float32)).numpy() for b in _batches(len(inputs), batch)]
    return np.concatenate(rows)[:, list(filters)]
