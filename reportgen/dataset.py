"""The dataset pass: every image once through the model, in streamed batches, feeding every dataset-level
accumulator from one forward pass (and one backward pass to the CAM layer, for the class-average maps).

Per batch a single compiled function returns reductions — predictions, per-channel minima, maxima, sums and zero
counts of the feature-map layers, each chosen filter's mean, the Grad-CAM map of each image's own class and the
CAM layer's channel means — and the example layers' outputs as they are (on CPU NumPy reads them without a copy),
in which `FilterExtremes` finds the extreme cells of only the images that make a list. The accumulators (`update`,
`merge`, `result`) are the same classes a distributed engine can run on several workers and merge.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from reportgen.graph import LayerNode, input_tape, pick_channel
from reportgen.loading.preprocess import Preprocessor
from reportgen.loading.stream import ImageBatch, ImageReader
from reportgen.techniques.class_stats import ClassAccumulator, ClassSummary
from reportgen.techniques.data_health import LAYOUT_GRID, Embeddings, EmbeddingStore, SetEmbedding
from reportgen.techniques.dataset_examples import FilterExamples, FilterExtremes, filter_statistics
from reportgen.techniques.evaluation import Evaluation, EvaluationAccumulator
from reportgen.techniques.feature_maps import ACTIVATION_BUDGET, LayerMapStats, LayerStatsAccumulator

# Images per batch when the layers' activations allow it: on a small model, 128 halves the per-batch Python and
# dispatch of 64 (a few percent faster); larger batches gain nothing more on CPU.
PASS_BATCH = 128


@dataclass(frozen=True)
class PassPlan:
    """What the pass computes besides predictions."""

    stat_layers: tuple[LayerNode, ...] = ()  # feature-map statistics over every image
    # (layer, the output its filters' patterns drive, filters) for the dataset examples
    example_layers: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    cam_layer: str | None = None  # class-average Grad-CAM maps and class x filter means
    examples: int = 6
    batch_size: int | None = None
    # Data health: each image's globally pooled output of this layer, randomly projected (seeded) to at most 128
    # dimensions and kept with its probabilities (`techniques.data_health.EmbeddingStore`).
    embedding_layer: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class DatasetResult:
    """What every image contributed, in a few numbers each."""

    images: int  # read successfully
    listed: int  # found
    labels: np.ndarray  # (N listed,) class index, -1 unknown or unread
    predicted: np.ndarray  # (N listed,) top-1 class, -1 for an unreadable image
    confidence: np.ndarray  # (N listed,) top-1 probability, NaN for an unreadable image
    probability_method: str
    evaluation: Evaluation
    classes: list[ClassSummary]
    layer_stats: dict[str, LayerMapStats]
    examples: list[FilterExamples]
    seconds: float
    sizes: np.ndarray  # (N listed, 2) width, height before resizing (0 for an unreadable image)
    conversions: tuple[str, ...]  # per listed image
    skipped: tuple[int, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    # Of `seconds`, the engine's start-up before the first image: the step's trace and first call on one blank
    # image (every engine), and on Ray also joining the cluster and each worker's model load.
    startup_seconds: float = 0.0
    worker_images_per_second: tuple[float, ...] = ()  # each Ray worker's images over its own busy seconds
    merge_seconds: float = 0.0  # on Ray, the driver's time fetching, unpickling and merging block states
    embeddings: Embeddings | None = None  # data health: every image's embedding and probabilities (by index)
    embedding_split: int = 0  # the embeddings' first this many dimensions are `SetEmbedding.whole`'s

    @property
    def images_per_second(self) -> float:
        """The throughput once started: images over `seconds` less `startup_seconds`."""
        streaming = self.seconds - self.startup_seconds
        return self.images / streaming if streaming > 0 else float("nan")


def pass_batch_size(shapes: dict[str, Any], paths: Sequence[str], requested: int | None) -> int:
    """`requested`, else PASS_BATCH images or fewer, so one batch's captured activations stay within budget (the
    backward pass to the CAM layer keeps what it needs of them)."""
    if requested:
        return requested
    per_image = sum(4 * math.prod(shapes[p][1:]) for p in paths if p in shapes) or 1
    return max(1, min(PASS_BATCH, ACTIVATION_BUDGET // (2 * per_image)))


class DatasetPass:
    """One compiled step per batch and the accumulators it feeds; `run` streams a reader through it."""

    def __init__(self, model: Any, preprocessor: Preprocessor, classes: int, plan: PassPlan,
                 shapes: dict[str, Any], activation: str) -> None:
        from reportgen.graph import walk_layers
        from reportgen.precision import forward_flops
        from reportgen.techniques.cams import ModelFunctions, score_head
        from reportgen.techniques.predictions import final_layer, output_units

        self.model, self.preprocessor, self.classes, self.plan = model, preprocessor, classes, plan
        self.activation = activation
        head = score_head(model, final_layer(model), output_units(model))
        self.functions = ModelFunctions(model, head, plan.cam_layer, lambda raw: raw)
        self.capture = list(dict.fromkeys([*(n.path for n in plan.stat_layers),
                                           *(output for _, output, _ in plan.example_layers),
                                           *([plan.cam_layer] if plan.cam_layer else []),
                                           *([plan.embedding_layer] if plan.embedding_layer else [])]))
        # The same matrix on every worker: it depends only on the seed and the layer's width.
        self.embedding = (SetEmbedding(int(shapes[plan.embedding_layer][-1]), seed=plan.seed)
                          if plan.embedding_layer else None)
        self.cam_shape = tuple(shapes[plan.cam_layer][1:3]) if plan.cam_layer else None
        self.cam_channels = int(shapes[plan.cam_layer][3]) if plan.cam_layer else None
        self.stat_shapes = {n.path: tuple(int(d) for d in shapes[n.path][1:]) for n in plan.stat_layers}
        self._image_flops = forward_flops(walk_layers(model), shapes)
        self.expect_batches(None, 0)

    def expect_batches(self, batches: int | None, batch_size: int) -> None:
        """How many batches of `batch_size` the step will take (None: unknown): a step that runs once on a small
        model runs eagerly rather than traced (`predictions.compiled`)."""
        from reportgen.techniques.predictions import compiled

        self._step = compiled(self._step_graph, self.model, calls=batches, flops=batch_size * self._image_flops,
                              gradients=self.plan.cam_layer is not None)
        self._traced = hasattr(self._step, "get_concrete_function")
        self._traced_shapes: set[tuple[int, ...]] = set()

    def _step_graph(self, x: Any, labels: Any) -> dict[str, Any]:
        import tensorflow as tf

        plan = self.plan
        with input_tape(x) as tape:  # the CAM layer's gradient below; never the weights'
            scores, run = self.functions.scores(x, self.capture)
            owner = tf.where(labels >= 0, labels, tf.argmax(scores, axis=1, output_type=tf.int32))
            selected = tf.reduce_sum(pick_channel(scores, owner))
        out: dict[str, Any] = {"raw": tf.reshape(run.output, (tf.shape(x)[0], -1))}
        if plan.cam_layer:
            acts = run.captured[plan.cam_layer]
            gradients = tape.gradient(selected, acts)  # images are independent: one backward pass for the batch
            weights = tf.reduce_mean(gradients, axis=(1, 2))
            out["cam"] = tf.nn.relu(tf.einsum("bhwk,bk->bhw", acts, weights))  # Grad-CAM, eq. 1-2
            out["cam_channels"] = tf.reduce_mean(acts, axis=(1, 2))
        if plan.embedding_layer and self.embedding is not None:  # data health (`SetEmbedding`), projected here:
            # in TensorFlow's threads, not in a NumPy matmul on the accumulating thread, whose BLAS threads would
            # compete with the model's for the same cores (the pass ran 25% slower so).
            maps = tf.cast(run.captured[plan.embedding_layer], tf.float32)
            whole = (out["cam_channels"] if plan.embedding_layer == plan.cam_layer
                     else tf.reduce_mean(maps, axis=(1, 2)))
            grid = tf.reshape(grid_pool(maps, LAYOUT_GRID), (tf.shape(maps)[0], -1))
            halves = [_project(whole, self.embedding.whole.matrix), _project(grid, self.embedding.layout.matrix)]
            out["embedding"] = tf.concat(halves, axis=1) / np.sqrt(2.0)
        for node in plan.stat_layers:
            maps = tf.cast(run.captured[node.path], tf.float32)
            total = tf.reduce_sum(maps, axis=(1, 2))
            # Non-finite values show in the sums; only a batch that has them pays for masking them out.
            bad = ~tf.math.is_finite(total)

            def plain(maps: Any = maps) -> tuple[Any, ...]:
                return (tf.reduce_min(maps, axis=(1, 2)), tf.reduce_max(maps, axis=(1, 2)),
                        tf.constant(0, tf.int64))

            def masked(maps: Any = maps) -> tuple[Any, ...]:
                finite = tf.math.is_finite(maps)
                return (tf.reduce_min(tf.where(finite, maps, np.inf), axis=(1, 2)),
                        tf.reduce_max(tf.where(finite, maps, -np.inf), axis=(1, 2)),
                        tf.reduce_sum(tf.cast(~finite, tf.int64)))

            low, high, non_finite = tf.cond(tf.reduce_any(bad), masked, plain)
            out[f"low/{node.path}"], out[f"high/{node.path}"] = low, high
            out[f"sum/{node.path}"] = tf.where(bad, tf.zeros_like(total), total)
            out[f"zeros/{node.path}"] = zero_count(maps)
            out[f"bad/{node.path}"] = tf.reduce_any(bad, axis=0)
            out[f"nonfinite/{node.path}"] = non_finite
        for path, output, filters in plan.example_layers:
            out[f"mean/{path}"], out[f"maps/{path}"] = filter_statistics(run.captured[output], filters)
        return out

    def new_state(self, name_rank: np.ndarray | None = None) -> PassState:
        """Empty accumulators for this pass (`name_rank`: each image's position among the sorted names, for ties)."""
        plan = self.plan
        return PassState(
            evaluation=EvaluationAccumulator(self.classes),
            class_stats=ClassAccumulator(self.classes, self.cam_shape, self.cam_channels),
            layer_stats={n.path: LayerStatsAccumulator(n, self.stat_shapes[n.path]) for n in plan.stat_layers},
            extremes=[FilterExtremes(path, filters, plan.examples, name_rank, output)
                      for path, output, filters in plan.example_layers],
            embedding_split=self.embedding.split if self.embedding is not None else 0,
            data_health=(EmbeddingStore(self.classes, self.embedding.dimensions)
                         if self.embedding is not None else None))

    def probabilities(self, batch: ImageBatch, labels: np.ndarray, method: str | None
                      ) -> tuple[np.ndarray, str, dict[str, np.ndarray]]:
        """One compiled step on a batch: class probabilities (B, classes), how they were read (decided from the
        first batch when `method` is None) and the step's reductions."""
        import tensorflow as tf

        from reportgen.techniques.predictions import convert, probability_method

        x = tf.constant(self.preprocessor.apply(batch.pixels) if batch.inputs is None else batch.inputs, tf.float32)
        image_shape = tuple(x.shape[1:])
        if self._traced and image_shape not in self._traced_shapes:
            # One trace for every batch size: the last, shorter batch would otherwise trace the step again.
            self._step.get_concrete_function(tf.TensorSpec((None, *image_shape), tf.float32),
                                             tf.TensorSpec((None,), tf.int32))
            self._traced_shapes.add(image_shape)
        out = self._step(x, tf.constant(labels, tf.int32))
        out = {key: np.asarray(value) for key, value in out.items()}
        raw = np.asarray(out["raw"], np.float64)
        if method is None:
            method, _ = probability_method(raw, self.activation)
        return convert(raw, method), method, out

    def process(self, state: PassState, batch: ImageBatch, labels: np.ndarray, names: list[str],
                method: str | None) -> str:
        """Run one batch (`labels`, `names` for its images) and fold it into `state`; returns the probability
        method. This is the whole work of a distributed worker, too."""
        probabilities, method, out = self.probabilities(batch, labels, method)
        state.record(batch, probabilities)
        self.fold(state, batch.indices, names, labels, probabilities, out)
        return method

    def warm_up(self, height: int, width: int, channels: int) -> float:
        """Trace the step and run it once on one blank image, so that no image pays for either; returns the
        seconds it took: the local engine's start-up (a Ray worker's too, after its model load)."""
        started = time.perf_counter()
        blank = ImageBatch(np.zeros(1, np.int64), np.zeros((1, height, width, channels), np.float32),
                           ((width, height),), ("",))
        self.probabilities(blank, np.full(1, -1, np.int64), None)
        return time.perf_counter() - started

    def run(self, reader: ImageReader, labels: np.ndarray, batch_size: int,
            progress: Callable[[int, int], None] | None = None) -> DatasetResult:
        """Stream every image of `reader` through the step; `labels` (N,) class index or -1."""
        started = time.perf_counter()
        names = [s.name for s in reader.sources]
        self.expect_batches(-(-len(names) // batch_size), min(batch_size, len(names)))
        startup = self.warm_up(reader.height, reader.width, reader.channels) if names else 0.0
        state = self.new_state(name_ranks(names))
        report = (lambda done: progress(done, len(names))) if progress else None
        method = self.stream(state, reader, np.asarray(labels, np.int64), names, batch_size, None, progress=report)
        return state.result(labels, method, time.perf_counter() - started, startup)

    def stream(self, state: PassState, reader: ImageReader, labels: np.ndarray, names: Sequence[str],
               batch_size: int, method: str | None, first: int = 0,
               progress: Callable[[int], None] | None = None) -> str | None:
        """Fold every image of `reader` into `state`: the whole set (the local engine) or one block of it (a Ray
        worker), whose image i is image `first` + i of the set; `labels` and `names` are the reader's. Returns the
        probability method (decided on the first batch when `method` is None); `progress(images done)`."""
        done = 0
        # The accumulators take each batch on a thread of their own while the model runs the next one (TensorFlow
        # releases the GIL while it computes); at most one batch waits, so memory stays one batch deep. The reader
        # decodes on threads of its own, a batch or two ahead.
        with ThreadPoolExecutor(1, thread_name_prefix="reportgen-accumulate") as accumulating:
            pending: Future | None = None
            for batch in reader.batches(batch_size, prepare=self.preprocessor.apply):
                local = batch.indices
                batch_labels = labels[local]
                if first:
                    batch = replace(batch, indices=local + first)
                probabilities, method, out = self.probabilities(batch, batch_labels, method)
                state.record(batch, probabilities)
                if pending is not None:
                    pending.result()  # batches are folded in order, and an error surfaces here
                pending = accumulating.submit(self.fold, state, batch.indices, [names[i] for i in local],
                                              batch_labels, probabilities, out)
                done += len(local)
                if progress:
                    progress(done + len(reader.skipped))
            if pending is not None:
                pending.result()
        state.skipped.update(first + i for i in reader.skipped)
        state.warnings.extend(w for w in reader.warnings if w not in state.warnings)
        return method

    def fold(self, state: PassState, indices: np.ndarray, names: list[str], labels: np.ndarray,
             probabilities: np.ndarray, out: dict[str, Any]) -> None:
        """Feed one batch's reductions to every accumulator of `state`."""
        state.evaluation.update(indices, names, labels, probabilities)
        cam = np.asarray(out["cam"], np.float32) if "cam" in out else None
        channels = np.asarray(out["cam_channels"], np.float32) if "cam_channels" in out else None
        state.class_stats.update(indices, names, labels, probabilities, cam, channels)
        for path, acc in state.layer_stats.items():
            low, high = np.asarray(out[f"low/{path}"]), np.asarray(out[f"high/{path}"])
            bad = np.asarray(out[f"bad/{path}"])
            count = len(indices) * int(np.prod(acc.shape))
            acc.update_reduced(low, high, float(np.asarray(out[f"sum/{path}"], np.float64).sum()),
                               int(out[f"zeros/{path}"]), count, len(indices), int(out[f"nonfinite/{path}"]), bad)
        for extremes in state.extremes:
            path = extremes.layer
            extremes.update(indices, names, np.asarray(out[f"mean/{path}"]), np.asarray(out[f"maps/{path}"]))
        if state.data_health is not None:
            state.data_health.update(indices, np.asarray(out["embedding"]), probabilities, labels)


def _project(features: Any, matrix: np.ndarray | None) -> Any:
    """`RandomProjection.project` in TensorFlow: features @ matrix (none: as they are), rows to unit norm."""
    import tensorflow as tf

    projected = features if matrix is None else tf.matmul(features, tf.constant(matrix))
    return tf.math.l2_normalize(projected, axis=1)


def grid_pool(maps: Any, cells: int) -> Any:
    """(B, h, w, C) maps averaged over a `cells` x `cells` grid: (B, cells, cells, C). One average pool when the
    map is at least `cells` a side (the last rows and columns beyond a whole cell are left out), else area
    resizing, which is adaptive average pooling but several times slower on CPU."""
    import tensorflow as tf

    h, w = maps.shape[1], maps.shape[2]
    if h is None or w is None or h < cells or w < cells:
        return tf.image.resize(maps, (cells, cells), method="area")
    size = (h // cells, w // cells)
    return tf.nn.avg_pool2d(maps, ksize=size, strides=size, padding="VALID")[:, :cells, :cells]


def zero_count(maps: Any) -> Any:
    """The number of zeros in a batch of maps (B, h, w, C) (a float32 tensor; NaN is not zero), as int64.

    Counted per map in float32, exact below 2**24 cells a map: a third cheaper than `count_nonzero`, whose int64
    cast of every value costs more than the comparison."""
    import tensorflow as tf

    cells = maps.shape[1] * maps.shape[2] if None not in maps.shape[1:3] else None
    if cells is None or cells >= 2**24:
        return tf.size(maps, out_type=tf.int64) - tf.math.count_nonzero(maps)
    per_map = tf.reduce_sum(tf.cast(tf.equal(maps, 0.0), tf.float32), axis=(1, 2))
    return tf.reduce_sum(tf.cast(per_map, tf.int64))


def name_ranks(names: Sequence[str]) -> np.ndarray:
    """Each image's position among the sorted names: the tie-break every top-k shares, on every worker."""
    ranks = np.empty(len(names), np.int64)
    ranks[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    return ranks


@dataclass
class PassState:
    """What some batches contributed: every accumulator and each image's own few numbers. States of disjoint
    batches `merge` into the state of all of them, in any order."""

    evaluation: EvaluationAccumulator
    class_stats: ClassAccumulator
    layer_stats: dict[str, LayerStatsAccumulator]
    extremes: list[FilterExtremes]
    data_health: EmbeddingStore | None = None
    embedding_split: int = 0  # `SetEmbedding.split`, for the result
    images: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]] = field(default_factory=list)
    skipped: set[int] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def record(self, batch: ImageBatch, probabilities: np.ndarray) -> None:
        """Keep each image's top-1 class and probability, size and conversion."""
        top = np.argmax(probabilities, axis=1)
        self.images.append((batch.indices, top, probabilities[np.arange(len(top)), top],
                            np.asarray(batch.sizes, np.int64).reshape(-1, 2), batch.conversions))

    def __getstate__(self) -> dict[str, Any]:
        """A state leaves its process without the name ranks (an array over the whole image set, the same on both
        sides): it is then merged into a state that has them, never updated itself."""
        shared = dict(self.__dict__)
        shared["extremes"] = [copy.copy(e) for e in self.extremes]
        for extremes in shared["extremes"]:
            extremes.name_rank = None
        return shared

    def merge(self, other: PassState) -> None:
        self.evaluation.merge(other.evaluation)
        self.class_stats.merge(other.class_stats)
        for path, acc in self.layer_stats.items():
            acc.merge(other.layer_stats[path])
        for mine, theirs in zip(self.extremes, other.extremes, strict=True):
            mine.merge(theirs)
        if self.data_health is not None and other.data_health is not None:
            self.data_health.merge(other.data_health)
        self.images.extend(other.images)
        self.skipped |= other.skipped
        self.warnings.extend(w for w in other.warnings if w not in self.warnings)

    def result(self, labels: np.ndarray, method: str | None, seconds: float, startup: float = 0.0,
               worker_rates: tuple[float, ...] = ()) -> DatasetResult:
        listed = len(labels)
        predicted = np.full(listed, -1, np.int64)
        confidence = np.full(listed, np.nan)
        sizes = np.zeros((listed, 2), np.int64)
        conversions = [""] * listed
        done = 0
        for indices, top, probability, size, conversion in self.images:
            predicted[indices], confidence[indices], sizes[indices] = top, probability, size
            for i, text in zip(indices.tolist(), conversion, strict=True):
                conversions[i] = text
            done += len(indices)
        return DatasetResult(
            images=done, listed=listed, labels=np.asarray(labels, np.int64), predicted=predicted,
            confidence=confidence, probability_method=method or "softmax applied",
            evaluation=self.evaluation.result(), classes=self.class_stats.result(),
            layer_stats={path: acc.result() for path, acc in self.layer_stats.items()},
            examples=[e for extremes in self.extremes for e in extremes.result()], seconds=seconds,
            sizes=sizes, conversions=tuple(conversions), skipped=tuple(sorted(self.skipped)),
            warnings=tuple(self.warnings), startup_seconds=startup, worker_images_per_second=worker_rates,
            embeddings=self.data_health.result() if self.data_health is not None else None,
            embedding_split=self.embedding_split)
