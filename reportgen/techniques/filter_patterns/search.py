"""The search itself: every chosen filter of a group of layers, in both directions, optimised together by one
compiled step; then every pattern re-evaluated in float32."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen import seeds
from reportgen.config import DEFAULT_STEPS, DIRECTIONS
from reportgen.graph import LayerNode, input_tape, pick_channel, run_layers, traceable, walk_layers
from reportgen.precision import layers_computing_in
from reportgen.techniques.filter_patterns.sizing import DEFAULT_PATTERN_SIZE
from reportgen.techniques.filter_patterns.targets import PatternTarget, first_conv, pattern_targets
from reportgen.techniques.pattern_params import Method, PixelMap, ProjectedAscent, method_named

# A filter whose output stays within this of zero on its ascent pattern cannot be switched on (ReLU gives exact 0).
DEAD_LEVEL = 1e-6
# Images per compiled step at 128x128; scaled down for larger patterns to bound memory (~1 GiB on VGG16).
BATCH_PIXELS = 32 * 128 * 128



@dataclass(frozen=True)
class PatternSettings:
    """How the search runs; the same for every layer of a report."""

    steps: int = DEFAULT_STEPS
    height: int = DEFAULT_PATTERN_SIZE
    width: int = DEFAULT_PATTERN_SIZE
    method: str = "projected"
    seed: int = 0
    directions: tuple[str, ...] = DIRECTIONS
    compute_dtype: str = "float32"  # "bfloat16" runs the search steps in bfloat16 (final numbers stay float32)
    diversity: int = 1  # patterns per filter and direction, kept apart by a diversity penalty when above 1

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
    responses: np.ndarray  # (F, len(filters)): every chosen filter's mean output on each pattern (float32)


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
    target: PatternTarget | None = None  # whose output the patterns drive
    diversity: int = 1  # patterns per filter in each direction (rows filter by filter)

    def direction(self, name: str) -> DirectionPatterns:
        return next(p for p in self.patterns if p.direction == name)



def _activation_of(layer: Any) -> Any:
    import keras

    return getattr(layer, "activation", None) or keras.activations.linear


def _channel_wise(activation: Any) -> bool:
    """True for activations that mix channels (softmax), which must see the whole layer output."""
    import keras

    return activation in (keras.activations.softmax, keras.activations.log_softmax)


def _channel_means(values: Any, filters: Any) -> Any:
    """(B, h, w, C), (B,) filter per image -> (B,) spatial mean of each image's own filter, float32."""
    import tensorflow as tf

    return pick_channel(tf.reduce_mean(tf.cast(values, tf.float32), axis=[1, 2]), filters)


def _diversity(features: Any, groups: Any) -> Any:
    """(B, h, w, C) layer outputs, (B,) group per image -> (B,) each image's mean cosine similarity of its Gram
    matrix (channel co-activation, i.e. style) to those of the other images of its group (Lucid's diversity)."""
    import tensorflow as tf

    x = tf.cast(features, tf.float32)
    flat = tf.reshape(x, [tf.shape(x)[0], -1, int(x.shape[-1])])
    gram = tf.linalg.matmul(flat, flat, transpose_a=True)
    gram = tf.math.l2_normalize(tf.reshape(gram, [tf.shape(x)[0], -1]), axis=1)
    similarity = tf.linalg.matmul(gram, gram, transpose_b=True)
    same = tf.cast(tf.equal(groups[:, None], groups[None, :]), tf.float32) * (1.0 - tf.eye(tf.shape(x)[0]))
    return tf.reduce_sum(similarity * same, axis=1) / tf.maximum(tf.reduce_sum(same, axis=1), 1.0)


# Diversity penalty per unit of similarity, as a share of the image's own objective. Measured on the tests' RGB
# CNN (3 patterns of 2 filters of its last block): 1 does not lower the similarity reliably (0.99 against 0.92
# without), 10 lowers it to 0.84 at 0.6x the activation, 100 to 0.68 at 0.3x.
DIVERSITY_WEIGHT = 10.0


@dataclass(frozen=True)
class _Compiled:
    step: Any  # (params, (m, v), seed, t, total, filters, signs, groups, members) -> (params, (m, v), objective)
    render: Any  # params -> model input
    evaluate: Any  # (model input, filters, members) -> (pre-activation mean, activation mean, max |activation|,
    # per target: every channel's activation mean)


def _compile(model: Any, targets: Sequence[PatternTarget], methods: Sequence[Method], pixel_map: PixelMap,
             shape: tuple[int, int, int], compute_dtype: str, diverse: bool,
             step_rows: int | None = None) -> _Compiled:
    """The search's functions for patterns of several targets at once: each image (row) drives the target at its
    index in `members`, with that target's method. One forward pass gives every target's output, so layers that
    share a canvas share one trace and one run of steps (on a small model tracing costs more than the steps).
    The methods may differ only in their update (the first conv layer's projection has no budget).

    `step_rows`: the rows of every step call, when all have the same number. The step is then traced for it: with
    every shape known, its gradient needs no shape arithmetic at run time (a fifth of a small step's ops)."""
    import tensorflow as tf

    method = methods[0]
    updates = list(dict.fromkeys(methods))  # distinct, in order
    if not all(m == method or (isinstance(m, ProjectedAscent) and isinstance(method, ProjectedAscent)
                               and dataclasses.replace(m, budget=method.budget) == method) for m in updates):
        raise ValueError("one search's methods may differ only in their saturation budget")
    # Each row's update: the index in `updates` of its target's method.
    update_of = [updates.index(m) for m in methods]
    nodes = walk_layers(model)
    by_path = {node.path: node.layer for node in nodes}
    height, width, channels = shape
    # A conv with its own activation (`pre` None): its output before the activation, which is applied here.
    activations = [_activation_of(by_path[t.layer]) if t.pre is None else None for t in targets]
    whole = [a is not None and _channel_wise(a) for a in activations]
    captures = {path for t in targets if t.pre is not None for path in (t.pre, t.output)}
    pre_captures = {t.layer for t in targets if t.pre is None}

    def outputs(x: Any) -> list[tuple[Any, Any]]:
        """Per target, (pre-activation, output) of the whole layer; the output None where `activations` gives it."""
        run = run_layers(model, x, captures, stop_early=True, pre_activation=pre_captures)
        return [(run.pre_activations[t.layer], None) if t.pre is None else (run.captured[t.pre],
                                                                            run.captured[t.output])
                for t in targets]

    def own(values: Any, filters: Any) -> Any:
        return tf.cast(pick_channel(values, filters), tf.float32)

    def per_target(members: Any, filters: Any) -> Iterator[tuple[int, Any, Any]]:
        """(index, rows of the target, filter per row): the filter is 0 on other targets' rows (a channel every
        layer has), whose values are computed and then not selected."""
        for k in range(len(targets)):
            mine = tf.equal(members, k)
            yield k, mine, tf.where(mine, filters, 0) if len(targets) > 1 else filters

    def select(mine: Any, values: Any, so_far: Any) -> Any:
        return values if so_far is None else tf.where(mine, values, so_far)

    def step(params: Any, state: Any, seed: Any, t: Any, total_steps: Any, filters: Any, signs: Any,
             groups: Any, members: Any) -> Any:
        with input_tape(params) as tape:
            unit = method.image(params, width)
            if method.jitter is not None:
                # Ascent only: descent must switch the filter off everywhere at once, which random views fight
                # (on the example model most descents then ended above their start).
                unit = method.jitter(unit, seed, tf.cast(signs > 0, tf.float32))
            full = outputs(pixel_map.to_model(unit))
            objective = pre_mean = diversity = None
            for k, mine, row_filters in per_target(members, filters):
                full_pre, full_post = full[k]
                # Each image's own filter, (B, h, w). Softmax-like activations need every channel; the others are
                # elementwise, so they run on the one channel (the layer's full output is large on early layers).
                if full_post is None and (whole[k] or diverse):
                    full_post = activations[k](full_pre)
                pre = own(full_pre, row_filters)
                post = own(full_post, row_filters) if full_post is not None else activations[k](pre)
                # Where the filter is off everywhere the real output has no gradient: follow the pre-activation.
                off = tf.stop_gradient(tf.reduce_max(post, axis=[1, 2]) <= 0.0)
                mean_pre = tf.reduce_mean(pre, axis=[1, 2])
                objective = select(mine, tf.where(off, mean_pre, tf.reduce_mean(post, axis=[1, 2])), objective)
                pre_mean = select(mine, mean_pre, pre_mean)
                if diverse:
                    diversity = select(mine, _diversity(full_post, groups), diversity)
            total = tf.reduce_sum(signs * objective)  # each image's gradient is its own: images are independent
            pre_share = getattr(method, "pre_share", 0.0)
            if pre_share:  # ascent also raises the pre-activation a little: cells that are off keep a gradient
                total += pre_share * tf.reduce_sum(tf.nn.relu(signs) * pre_mean)
            penalty = getattr(method, "penalty", None)
            if penalty is not None:  # a share of each image's own objective, whatever the layer's scale
                total -= tf.reduce_sum((tf.stop_gradient(tf.abs(objective)) + 1e-12) * penalty(params))
            if diverse:
                scale = tf.stop_gradient(tf.abs(objective)) + 1e-6
                total -= DIVERSITY_WEIGHT * tf.reduce_sum(scale * diversity)
        gradient = tape.gradient(total, params)
        if len(updates) == 1:
            params, state = method.update(params, gradient, state, t, total_steps, signs)
            return params, state, objective
        # Variants of one projected method that differ only in their budget: one Adam step (and moments) for
        # every row, then each row's own projection.
        moved, state = method.move(params, gradient, state, t, total_steps, signs)
        params = updates[0].project(moved)
        for u in range(1, len(updates)):
            rows = tf.gather(tf.constant(update_of), members) == u
            params = tf.where(tf.reshape(rows, [-1] + [1] * (len(params.shape) - 1)), updates[u].project(moved),
                              params)
        return params, state, objective

    def evaluate(x: Any, filters: Any, members: Any) -> Any:
        full = outputs(x)
        pre_means = post_means = peaks = None
        every_channel = []
        for k, mine, row_filters in per_target(members, filters):
            pre, post = full[k]
            if post is None:
                post = activations[k](pre)
            peak = pick_channel(tf.reduce_max(tf.abs(tf.cast(post, tf.float32)), axis=[1, 2]), row_filters)
            pre_means = select(mine, _channel_means(pre, row_filters), pre_means)
            post_means = select(mine, _channel_means(post, row_filters), post_means)
            peaks = select(mine, peak, peaks)
            every_channel.append(tf.reduce_mean(tf.cast(post, tf.float32), axis=[1, 2]))
        return pre_means, post_means, peaks, tuple(every_channel)

    def render(params: Any) -> Any:
        return pixel_map.to_model(method.image(method.finish(params), width))

    if not traceable(model):
        return _Compiled(_in_view(step, nodes, compute_dtype), render, _in_view(evaluate, nodes))
    param_spec = tf.TensorSpec([None, *method.param_shape(height, width, channels)], tf.float32)
    index_spec = tf.TensorSpec([None], tf.int32)
    scalar = tf.TensorSpec([], tf.float32)
    step_params = tf.TensorSpec([step_rows, *param_spec.shape[1:]], tf.float32)
    step_index = tf.TensorSpec([step_rows], tf.int32)
    with layers_computing_in(nodes, compute_dtype):
        step_fn = tf.function(step, autograph=False).get_concrete_function(
            step_params, (step_params, step_params), tf.TensorSpec([2], tf.int64), scalar, scalar, step_index,
            tf.TensorSpec([step_rows], tf.float32), step_index, step_index)
    evaluate_fn = tf.function(evaluate, autograph=False).get_concrete_function(
        tf.TensorSpec([None, height, width, channels], tf.float32), index_spec, index_spec)
    return _Compiled(step_fn, tf.function(render, autograph=False).get_concrete_function(param_spec), evaluate_fn)


def _in_view(function: Any, nodes: Sequence[LayerNode], compute_dtype: str = "float32") -> Any:
    """`function` run eagerly with every float32 layer computing in `compute_dtype`, for models whose layer names
    cannot be traced."""

    def run(*args: Any) -> Any:
        with layers_computing_in(nodes, compute_dtype):
            return function(*args)

    return run


def _batches(count: int, limit: int, group: int = 1) -> list[np.ndarray]:
    """Indices 0..count-1 in near-equal batches of at most `limit` (at least `group`), each a whole number of
    consecutive groups of `group` (the diversity patterns of one filter share a batch)."""
    groups = count // group
    per = max(1, limit // group)
    return [np.concatenate([np.arange(g * group, (g + 1) * group) for g in part])
            for part in np.array_split(np.arange(groups), -(-groups // per)) if part.size]


def _evaluate(compiled: _Compiled, inputs: np.ndarray, filters: np.ndarray, members: np.ndarray,
              limit: int) -> tuple[Any, ...]:
    """(pre-activation means, activation means, peaks, per target: every channel's means) of `inputs`."""
    import tensorflow as tf

    parts = [compiled.evaluate(tf.constant(inputs[b]), tf.constant(filters[b], tf.int32),
                               tf.constant(members[b], tf.int32)) for b in _batches(len(inputs), limit)]
    stacked = tuple(np.concatenate([part[k].numpy() for part in parts]) for k in range(3))
    every_channel = tuple(np.concatenate([part[3][t].numpy() for part in parts]) for t in range(len(parts[0][3])))
    return (*stacked, every_channel)


@dataclass(frozen=True)
class PatternJob:
    """One layer's share of a search: the filters of the layer at `layer` whose patterns drive `target`."""

    layer: str
    filters: tuple[int, ...]
    target: PatternTarget | None = None  # default: `pattern_target`, the conv's block output
    flops_per_step: float = 0.0  # of one pattern (see `search_flops`), only carried into the result


def search_patterns(
    model: Any,
    layer_path: str,
    filters: Sequence[int],
    settings: PatternSettings,
    pixel_map: PixelMap,
    flops_per_step: float = 0.0,
    target: PatternTarget | None = None,
    method: Method | None = None,
) -> LayerPatterns:
    """Optimise the patterns of `filters` of the layer at `layer_path` in every direction of `settings`, driving
    `target`'s output (default: `pattern_target`, the conv's block output); see `search_layers`."""
    job = PatternJob(layer_path, tuple(int(f) for f in filters), target, flops_per_step)
    return search_layers(model, [job], settings, pixel_map, method)[0]


def search_layers(model: Any, jobs: Sequence[PatternJob], settings: PatternSettings, pixel_map: PixelMap,
                  method: Method | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[LayerPatterns]:
    """The patterns of every job's filters, in one search: all of them on the canvas of `settings`, in the same
    compiled steps (each image drives its own layer's filter; images are independent).

    With `settings.diversity` K > 1 each filter gets K patterns per direction, optimised together with a penalty
    on their similarity; `DirectionPatterns.inputs` then holds them filter by filter (K rows per filter).
    Deterministic for a given `settings.seed` and jobs: each filter's starting image is drawn from (seed, layer,
    filter), and the random transforms of each step from (seed, the jobs' layers, step) (`seeds.PATTERN_START`,
    `seeds.PATTERN_STEP`). A job's `seconds` are its share (by FLOPs, else by patterns) of the search's time.

    `method`, when given, replaces the parameterisation `settings.method` names: an object with the methods of
    `pattern_params` (`param_shape`, `init`, `finish`, `update`, `jitter`...). The report always names one;
    `benchmarks/pattern_methods.py` and `pattern_bound.py` pass variants no option names (the tutorials' loop,
    tuned learning rates) to compare them on the same compiled search. `progress(done, total)` is called after
    every step of every batch.
    """
    import tensorflow as tf

    started = time.perf_counter()
    paths = [job.layer for job in jobs]
    targets = [job.target or pattern_targets(model, [job.layer])[0] for job in jobs]
    method = method or method_named(settings.method)
    first = first_conv(walk_layers(model))
    # The first conv layer's best image is two-level: a saturation budget only lowers it.
    methods = [dataclasses.replace(method, budget=None) if isinstance(method, ProjectedAscent)
               and method.free_first_layer and path == first else method for path in paths]
    height, width, channels = settings.height, settings.width, int(pixel_map.offset.shape[0])
    diversity = settings.diversity
    directions = settings.directions
    limit = max(settings.batch_limit, diversity)
    batches = _batches(sum(len(job.filters) for job in jobs) * diversity * len(directions), limit, diversity)
    rows = {len(batch) for batch in batches}
    compiled = _compile(model, targets, methods, pixel_map, (height, width, channels), settings.compute_dtype,
                        diversity > 1, rows.pop() if len(rows) == 1 else None)

    def start(layer: str, f: int, k: int) -> np.ndarray:
        return method.init(seeds.rng(settings.seed, seeds.PATTERN_START, layer, f, k), height, width, channels)

    # Rows job by job; within a job one row per (direction, filter, k), both directions of a filter starting from
    # the same images.
    counts = [len(job.filters) * diversity for job in jobs]  # patterns per direction of each job
    firsts = np.cumsum([0, *(count * len(directions) for count in counts)])
    starts = [np.stack([start(job.layer, f, k) for f in job.filters
                        for k in range(diversity)]) for job in jobs]
    params = np.concatenate([np.concatenate([first] * len(directions)) for first in starts])
    job_filters = np.concatenate([np.tile(np.repeat(np.asarray(job.filters, np.int32), diversity), len(directions))
                                  for job in jobs])
    members = np.repeat(np.arange(len(jobs), dtype=np.int32), np.diff(firsts))
    groups = np.repeat(np.arange(len(params) // diversity, dtype=np.int32), diversity)
    signs = np.concatenate([np.repeat([1.0 if d == "ascent" else -1.0 for d in directions], count)
                            for count in counts]).astype(np.float32)

    final = np.empty_like(params)
    for b, batch in enumerate(batches):
        p = tf.constant(params[batch])
        state = (tf.zeros_like(p), tf.zeros_like(p))
        f, s, g = tf.constant(job_filters[batch]), tf.constant(signs[batch]), tf.constant(groups[batch])
        m = tf.constant(members[batch])
        total = tf.constant(float(settings.steps))
        for t in range(1, settings.steps + 1):
            seed = tf.constant(seeds.stateless(settings.seed, seeds.PATTERN_STEP, tuple(paths), b, t), tf.int64)
            p, state, _ = compiled.step(p, state, seed, tf.constant(float(t)), total, f, s, g, m)
            if progress is not None:  # a search can take minutes: the watchdog and the user see it move
                progress(b * settings.steps + t, len(batches) * settings.steps)
        final[batch] = p.numpy()

    def render(values: np.ndarray) -> np.ndarray:
        return np.concatenate([compiled.render(tf.constant(values[b])).numpy()
                               for b in _batches(len(values), limit)])

    # The starts: each filter's first image (of its K), once.
    start_params = np.concatenate([first[::diversity] for first in starts])
    start_members = np.repeat(np.arange(len(jobs), dtype=np.int32), [len(job.filters) for job in jobs])
    start_filters = np.concatenate([np.asarray(job.filters, np.int32) for job in jobs])
    start_pre, start_post, _, _ = _evaluate(compiled, render(start_params), start_filters, start_members, limit)
    inputs = render(final)
    pre, post, peak, every_channel = _evaluate(compiled, inputs, job_filters, members, limit)
    seconds = time.perf_counter() - started
    work = np.array([job.flops_per_step * count for job, count in zip(jobs, counts, strict=True)])
    shares = work / work.sum() if work.sum() > 0 else np.array(counts) / sum(counts)

    results = []
    start_firsts = np.cumsum([0, *(len(job.filters) for job in jobs)])
    for j, job in enumerate(jobs):
        rows = slice(firsts[j], firsts[j + 1])
        count, filters = counts[j], job.filters
        job_final, job_params, job_peak = final[rows], params[rows], peak[rows]
        # Dead: the ascent pattern cannot switch the filter on, or no direction could move it at all.
        dead = np.zeros(len(filters), bool)
        for k, direction in enumerate(directions):
            part = slice(k * count, (k + 1) * count)
            if direction == "ascent":
                dead |= np.all((job_peak[part] <= DEAD_LEVEL).reshape(len(filters), diversity), axis=1)
            if settings.steps > 0:
                dead |= np.all((job_final[part] == job_params[part]).reshape(len(filters), -1), axis=1)
        responses = every_channel[j][rows][:, list(filters)]
        job_inputs, job_post, job_pre = inputs[rows], post[rows], pre[rows]
        patterns = tuple(
            DirectionPatterns(direction=d, inputs=job_inputs[k * count:(k + 1) * count],
                              activation=job_post[k * count:(k + 1) * count],
                              pre_activation=job_pre[k * count:(k + 1) * count],
                              responses=responses[k * count:(k + 1) * count])
            for k, d in enumerate(directions)
        )
        at = slice(start_firsts[j], start_firsts[j + 1])
        results.append(LayerPatterns(
            layer=job.layer, filters=filters, patterns=patterns, start_activation=start_post[at],
            start_pre_activation=start_pre[at], dead=dead, seconds=seconds * float(shares[j]),
            flops=job.flops_per_step * count * len(directions) * settings.steps, target=targets[j],
            diversity=diversity,
        ))
    return results


def filter_responses(model: Any, layer_path: str, inputs: np.ndarray, filters: Sequence[int],
                     batch: int | None = None, compute_dtype: str = "float32") -> np.ndarray:
    """(N, F): the mean output (after the layer's activation) of each of `filters` on each model input.

    Independent of the search (no activation trick): what the model itself computes, in float32 unless
    `compute_dtype` is "bfloat16" (for shares of an activation, where its ~0.4% rounding does not show).
    """
    return channel_means(model, [layer_path], inputs, batch, compute_dtype)[layer_path][:, list(filters)]


def channel_means(model: Any, outputs: Sequence[str], inputs: np.ndarray, batch: int | None = None,
                  compute_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Each of `outputs` -> (N, C): the spatial mean of every channel of that layer's output on each model input,
    from one function for all of them, in batches of `batch` (default: `BATCH_PIXELS` of input)."""
    import tensorflow as tf

    nodes = walk_layers(model) if compute_dtype != "float32" else ()
    outputs = list(dict.fromkeys(outputs))
    if batch is None:
        batch = max(1, BATCH_PIXELS // int(np.prod(inputs.shape[1:3])))

    def run(x: Any) -> Any:
        captured = run_layers(model, x, outputs, stop_early=True).captured
        return tuple(tf.reduce_mean(tf.cast(captured[output], tf.float32), axis=[1, 2]) for output in outputs)

    if traceable(model):
        with layers_computing_in(nodes, compute_dtype):
            run = tf.function(run, autograph=False).get_concrete_function(
                tf.TensorSpec([None, *inputs.shape[1:]], tf.float32))
    else:
        run = _in_view(run, nodes, compute_dtype)
    parts = [run(tf.constant(inputs[b], tf.float32)) for b in _batches(len(inputs), batch)]
    return {output: np.concatenate([part[k].numpy() for part in parts]) for k, output in enumerate(outputs)}
