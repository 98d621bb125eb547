"""The dataset pass on Ray: the same accumulators as on one machine, run by a pool of workers and merged.

The image set is cut into blocks: runs of whole batches (the local engine's batches, so every batch holds the
same images), a few per worker, at most `MAX_BLOCK_BATCHES` batches each. Each worker is a Ray actor holding one
copy of the model (loaded once, from the model's bytes put in the object store once) and the same compiled step as
the local pass; it reads and decodes a block's images itself, on its own threads, streams them through the step
exactly as the local engine does, and returns one accumulator state per block. The driver hands out blocks as
workers finish them and merges the states in block order, each block exactly once: a block whose worker failed or
was lost (its node gone) goes to another worker, and a block's state that arrives again replaces the earlier one
until it is merged and is dropped after (`BlockMerge`). Because every top-k breaks ties by image name and the
merge order is fixed, the result does not depend on which worker ran what.

Start-up (joining or starting the cluster, each worker's model load and trace) is timed apart from the stream
(`DatasetResult.startup_seconds`), and each worker's own images/s is kept.

Needs the `ray` extra (`pip install "reportgen[ray]"`); the local engine needs nothing more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.config import flag
from reportgen.errors import InputError

INSTALL_HINT = 'pip install "reportgen[ray]"'


def require_ray() -> None:
    """InputError saying what to install when Ray is missing (checked before any work)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError(f"--engine ray: Ray is not installed; install it with {INSTALL_HINT}, or leave "
                         "--engine at local") from None


ADDRESS_FLAG = flag("ray_address")  # the option this module checks, named as the command line spells it
CONNECT_SECONDS = 3.0  # a cluster's GCS port answers at once; nothing answering in this long is no cluster


def check_engine(options: Any) -> None:
    """`--engine ray` checked before any work: Ray importable, and `--ray-address` an address where a Ray
    cluster answers (InputError naming the option otherwise, in seconds, never after minutes of silence)."""
    if options.engine != "ray":
        return
    require_ray()
    if options.ray_address is not None:
        cluster_address(options.ray_address)


def cluster_address(text: str) -> str:
    """The `HOST:PORT` a `--ray-address` value names, checked to answer; InputError saying what to give instead.
    `auto` is the cluster `ray start` last started on this machine (or RAY_ADDRESS)."""
    value = text.strip()
    hint = "give the address `ray start --head` printed, HOST:PORT (port 6379 by default)"
    if value.lower().startswith("ray://"):
        raise InputError(f"{ADDRESS_FLAG}: {text!r} is a Ray Client address, which reportgen does not use; run "
                         f"reportgen on a node of the cluster and {hint}")
    if "://" in value:
        raise InputError(f"{ADDRESS_FLAG}: {text!r} is a URL (http://HOST:8265 is the dashboard's); {hint}")
    if value == "auto":
        from ray._private import services

        try:
            found = services.canonicalize_bootstrap_address("auto")
        except Exception:
            found = None
        if not found:
            raise InputError(f"{ADDRESS_FLAG}: auto found no running Ray cluster on this machine; start one with "
                             f"`ray start --head`, or leave {ADDRESS_FLAG} out to start a local Ray for the run")
        value = found
    host, _, port_text = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [IPv6]:port
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536 or any(c in host for c in " /\\@"):
        raise InputError(f"{ADDRESS_FLAG}: {text!r} is not an address; {hint}")
    import socket

    try:
        with socket.create_connection((host, int(port_text)), timeout=CONNECT_SECONDS):
            pass
    except socket.gaierror:
        raise InputError(f"{ADDRESS_FLAG}: the host {host!r} of {text!r} is not known; {hint}") from None
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise InputError(f"{ADDRESS_FLAG}: no Ray cluster answers at {value} ({reason}); start it with "
                         f"`ray start --head`, or {hint}") from None
    return value


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _resident_memory() -> int:
    """This process's resident memory in bytes: TensorFlow and the model, which every worker holds too."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_count(requested: int | None, cpus: int, memory: float | None, per_worker: int,
                 where: str) -> tuple[int, str | None]:
    """Workers to start: `requested` (default: one per CPU), at most one per CPU and as many as `memory` holds
    at `per_worker` bytes each (at least one). Returns the count and a warning when a request was cut down."""
    by_memory = max(1, int(memory // per_worker)) if memory and per_worker > 0 else None
    limit = max(1, min(cpus, by_memory if by_memory is not None else cpus))
    wanted = requested or cpus
    if wanted <= limit:
        return wanted, None
    if requested is None:
        return limit, None  # the default adapts quietly
    mib = per_worker / 2**20
    memory_note = (f" and memory for {by_memory} (each worker holds the model and TensorFlow, about {mib:,.0f} MiB "
                   "as measured in this process)") if by_memory is not None else ""
    return limit, (f"--workers {requested}: {where} has {cpus} CPU(s){memory_note}; ran {limit} worker(s) "
                   "instead")


# Blocks per worker when the set is large enough: enough for a lost worker's share to spread over the others and
# for workers of unequal speed to finish together; a block's hand-over costs a few milliseconds.
BLOCKS_PER_WORKER = 4
MAX_BLOCK_BATCHES = 16  # so a block is seconds of work, and a retried one little to redo
MAX_ATTEMPTS = 3  # a block whose task raised this many times fails the run
POLL_SECONDS = 1.0  # how often the driver asks the workers how far they are into their blocks (the progress line)


def plan_blocks(count: int, batch_size: int, workers: int) -> list[range]:
    """Consecutive index ranges covering `count` images, each a whole number of batches (but the last): about
    BLOCKS_PER_WORKER per worker, from one batch up to MAX_BLOCK_BATCHES batches."""
    batches = -(-count // max(1, batch_size))
    per_block = min(MAX_BLOCK_BATCHES, max(1, -(-batches // (max(1, workers) * BLOCKS_PER_WORKER))))
    size = per_block * batch_size
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


@dataclass(frozen=True)
class Block:
    """Images `first` .. `first` + len(paths) - 1 of the set: what a worker needs to read and fold them."""

    number: int
    first: int
    paths: tuple[str, ...]
    names: tuple[str, ...]
    labels: np.ndarray  # class index or -1, per image


@dataclass(frozen=True)
class BlockResult:
    """A worker's answer for one block: its accumulator state and how long the worker took."""

    number: int
    state: Any  # PassState, pickled once for the block
    images: int  # read successfully
    seconds: float
    worker: str  # the actor's id


class BlockMerge:
    """Block states folded into `state` exactly once each, in block order (so the sums round the same way
    whichever worker finished first). A state that arrives for a block not yet merged replaces the one held;
    one that arrives for a block already merged is dropped: a retried block can never be counted twice."""

    def __init__(self, state: Any, blocks: int) -> None:
        self.state, self.blocks = state, blocks
        self.merged = 0  # blocks 0 .. merged - 1 are in `state`
        self.waiting: dict[int, Any] = {}

    def add(self, number: int, state: Any) -> bool:
        """Take block `number`'s state; False when that block was merged already (the state is dropped)."""
        if number < self.merged:
            return False
        fresh = number not in self.waiting
        self.waiting[number] = state
        while self.merged in self.waiting:
            self.state.merge(self.waiting.pop(self.merged))
            self.merged += 1
        return fresh

    @property
    def complete(self) -> bool:
        return self.merged == self.blocks


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to rebuild the pass: small values and the model's bytes in the object store."""

    model: Any  # ObjectRef of the model's .keras bytes
    unsafe: bool
    preprocess: str
    channels: int
    classes: int
    plan: Any  # PassPlan, its layer nodes replaced by their paths
    stat_layers: tuple[str, ...]  # the feature-map layers' paths
    shapes: dict[str, Any]
    activation: str
    input_shape: tuple[int | None, int | None, int]
    image_size: tuple[int, int] | None
    batch_size: int
    batches: int  # in the whole pass: the step is compiled as the local engine compiles it
    name_rank: np.ndarray  # shipped once per worker, never with a state


class PassWorker:
    """A Ray actor: one model, its compiled step traced once, folding blocks into one state each."""

    def __init__(self, spec: WorkerSpec) -> None:
        started = time.perf_counter()
        import ray

        if "TF_NUM_INTRAOP_THREADS" not in os.environ:  # one CPU reserved per worker: one TensorFlow thread
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(1)
        from reportgen.dataset import DatasetPass
        from reportgen.graph import walk_layers
        from reportgen.loading.models import load_model
        from reportgen.loading.preprocess import Preprocessor

        folder = Path(tempfile.mkdtemp(prefix="reportgen-worker-"))
        path = folder / "model.keras"
        path.write_bytes(ray.get(spec.model))
        model = load_model(path, unsafe=spec.unsafe).model
        by_path = {node.path: node for node in walk_layers(model)}  # the same paths as on the driver
        stat_layers = tuple(by_path[p] for p in spec.stat_layers)
        plan = replace(spec.plan, stat_layers=stat_layers)
        self.spec = spec
        self.dataset_pass = DatasetPass(model, Preprocessor(spec.preprocess, spec.channels), spec.classes, plan,
                                        spec.shapes, spec.activation)
        self.dataset_pass.expect_batches(spec.batches, spec.batch_size)
        self.folded = 0  # images of the block in hand done so far
        self.load_seconds = time.perf_counter() - started

    def _reader(self, block: Block) -> Any:
        from reportgen.loading.images import ImageSource
        from reportgen.loading.stream import ImageReader

        sources = [ImageSource(Path(p), n, None) for p, n in zip(block.paths, block.names, strict=True)]
        return ImageReader(sources, self.spec.input_shape, self.spec.image_size)

    def start(self, sample: Block | None) -> tuple[str | None, float]:
        """Trace and warm the step; with `sample` (a block), also decide how outputs become probabilities from its
        first batch, as the local engine does. Returns the method (None without a sample or a readable image)
        and this worker's start-up seconds (model load and warm-up)."""
        reader = self._reader(sample) if sample is not None else None
        if reader is None:
            from reportgen.loading.images import target_size

            (height, width), _ = target_size(self.spec.input_shape, self.spec.image_size)
            seconds = self.dataset_pass.warm_up(height, width, self.spec.input_shape[2])
            return None, self.load_seconds + seconds
        seconds = self.dataset_pass.warm_up(reader.height, reader.width, reader.channels)
        method = None
        first = next(reader.batches(self.spec.batch_size, prefetch=0), None)
        if first is not None:
            _, method, _ = self.dataset_pass.probabilities(first, sample.labels[first.indices], None)
        return method, self.load_seconds + seconds

    def run_block(self, block: Block, method: str) -> BlockResult:
        """Fold one block into a fresh state: the whole work of a worker, as the local engine does it."""
        import ray

        started = time.perf_counter()
        self.folded = 0
        state = self.dataset_pass.new_state(self.spec.name_rank)

        def report(done: int) -> None:
            self.folded = done

        self.dataset_pass.stream(state, self._reader(block), block.labels, block.names, self.spec.batch_size,
                                 method, first=block.first, progress=report)
        images = len(block.paths) - len(state.skipped)
        return BlockResult(block.number, state, images, time.perf_counter() - started,
                           ray.get_runtime_context().get_actor_id())

    def progress(self) -> int:
        """Images of the block in hand folded so far (answered on a second thread while a block runs)."""
        return self.folded


def run_on_ray(analysis: Any, dataset_pass: Any, reader: Any, labels: np.ndarray, batch_size: int,
               progress: Callable[[int, int], None] | None = None) -> Any:
    """The dataset pass on Ray: `dataset_pass` (the local DatasetPass) holds the merged result; the workers do
    the rest. Returns the result and the number of workers that started."""
    import ray

    options = analysis.options
    started = time.perf_counter()
    own_cluster = not ray.is_initialized()
    per_worker = _resident_memory()
    workers = None
    if own_cluster:
        # ray.init replaces the SIGTERM handler with sys.exit(15); the run's own (SIGTERM ends it as Ctrl-C does,
        # exit 130, staging removed) is put back.
        handler = signal.getsignal(signal.SIGTERM)
        try:
            if options.ray_address:
                address = cluster_address(options.ray_address)
                try:
                    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
                    line = next((x for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
                    raise InputError(f"{ADDRESS_FLAG}: could not join the Ray cluster at {address} "
                                     f"({line[:300]})") from None
            else:
                workers, warning = worker_count(options.workers, _available_cpus(), _available_memory(),
                                                per_worker, "this machine")
                if warning:
                    analysis.warnings.append(warning)
                ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        finally:
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, handler)
    try:
        if workers is None:  # a cluster this run joined: its CPUs and memory
            resources = ray.cluster_resources()
            workers, warning = worker_count(options.workers, max(1, int(resources.get("CPU", 1))),
                                            resources.get("memory"), per_worker, "the Ray cluster")
            if warning:
                analysis.warnings.append(warning)
        return _run(analysis, dataset_pass, reader, labels, batch_size, workers, started, progress), workers
    finally:
        if own_cluster:
            ray.shutdown()


def _run(analysis: Any, dataset_pass: Any, reader: Any, labels: np.ndarray, batch_size: int, workers: int,
         started: float, progress: Callable[[int, int], None] | None) -> Any:
    """Start the workers, hand out the blocks, merge what comes back (see the module docstring)."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    from reportgen.dataset import name_ranks
    from reportgen.errors import ReportgenError

    options = analysis.options
    sources = reader.sources
    names = [s.name for s in sources]
    labels = np.asarray(labels, np.int64)
    ranges = plan_blocks(len(sources), batch_size, workers)
    blocks = [Block(k, r.start, tuple(str(sources[i].path) for i in r), tuple(names[i] for i in r),
                    labels[r.start:r.stop]) for k, r in enumerate(ranges)]
    with tempfile.TemporaryDirectory(prefix="reportgen-model-") as folder:
        model_file = Path(folder) / "model.keras"
        analysis.model.save(model_file)
        model_ref = ray.put(model_file.read_bytes())  # once, for every worker
    plan = dataset_pass.plan
    spec = WorkerSpec(
        model=model_ref, unsafe=options.unsafe, preprocess=analysis.preprocessor.mode,
        channels=analysis.preprocessor.channels, classes=dataset_pass.classes,
        plan=replace(plan, stat_layers=()), stat_layers=tuple(n.path for n in plan.stat_layers),
        shapes=dict(analysis.layer_shapes), activation=dataset_pass.activation,
        input_shape=analysis.loaded.input_shape, image_size=options.image_size, batch_size=batch_size,
        batches=-(-len(sources) // max(1, batch_size)), name_rank=name_ranks(names))
    # A worker is a threaded actor so that it answers `progress` while it folds a block; it is never given a
    # second block while it holds one. SPREAD: on a cluster, workers go to different nodes first.
    actor_class = ray.remote(num_cpus=1, max_concurrency=2, max_restarts=0, scheduling_strategy="SPREAD")(
        PassWorker)
    spec_ref = ray.put(spec)
    pool = [actor_class.remote(spec_ref) for _ in range(workers)]
    # Every worker loads the model and traces its step; the first also decides the probability method from the
    # first readable batch (the local engine's first batch), trying later blocks when a whole block is unreadable.
    method: str | None = None
    starts = {actor.start.remote(blocks[0] if i == 0 and blocks else None): actor for i, actor in enumerate(pool)}
    live, lost = [], None
    for ref, actor in starts.items():
        try:
            found, _ = ray.get(ref)
        except RayError as exc:  # lost while starting (or its model did not load): the others carry on
            lost = exc
            continue
        live.append(actor)
        method = method or found
    if not live:
        line = next((x for x in str(lost).splitlines() if x.strip()), type(lost).__name__)
        raise ReportgenError(f"--engine ray: no Ray worker started ({line[:300]})")
    for block in blocks[1:]:
        if method is not None:
            break
        method, _ = ray.get(live[0].start.remote(block))
    startup = time.perf_counter() - started

    merge = BlockMerge(dataset_pass.new_state(name_ranks(names)), len(blocks))
    queue = list(reversed(blocks))  # popped from the end: block 0 first
    attempts = dict.fromkeys(range(len(blocks)), 0)
    running: dict[Any, tuple[Block, Any]] = {}  # result ref -> (block, actor)
    busy: dict[str, list[float]] = {}  # actor id -> [images, seconds]
    done = 0
    merge_seconds = 0.0  # the driver's own work per block: fetching, unpickling and merging its state
    last_poll = time.perf_counter()

    def hand_out(actor: Any) -> None:
        if queue:
            block = queue.pop()
            running[actor.run_block.remote(block, method or "softmax applied")] = (block, actor)

    for actor in live:
        hand_out(actor)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
        if not ready:
            if progress and time.perf_counter() - last_poll >= POLL_SECONDS:
                last_poll = time.perf_counter()
                asked = [actor.progress.remote() for _, actor in running.values()]
                answered, _ = ray.wait(asked, num_returns=len(asked), timeout=POLL_SECONDS)
                in_hand = 0
                for ref in answered:
                    try:
                        in_hand += ray.get(ref)
                    except RayError:
                        pass
                progress(min(done + in_hand, len(names)), len(names))
            continue
        block, actor = running.pop(ready[0])
        fetched = time.perf_counter()
        try:
            result = ray.get(ready[0])  # the state's bytes, fetched and unpickled: the driver's cost per block
        except RayTaskError:
            attempts[block.number] += 1
            if attempts[block.number] >= MAX_ATTEMPTS:
                raise
            queue.append(block)  # the same worker takes it again: a failure in the task, not the worker
            hand_out(actor)
            continue
        except RayError:  # the worker or its node is gone: its block goes to the others
            live.remove(actor)
            with contextlib.suppress(RayError):
                ray.kill(actor, no_restart=True)  # gone already, or cut off: either way it gets no more work
            queue.append(block)
            if not live:
                raise ReportgenError(f"--engine ray: every Ray worker was lost; {len(queue)} block(s) of "
                                     f"{len(blocks)} not done") from None
            idle = [a for a in live if all(a is not b for _, b in running.values())]
            for spare in idle:
                hand_out(spare)
            continue
        fresh = merge.add(result.number, result.state)
        merge_seconds += time.perf_counter() - fetched
        if fresh:
            done += len(block.paths)
            images, seconds = busy.setdefault(result.worker, [0.0, 0.0])
            busy[result.worker] = [images + result.images, seconds + result.seconds]
        hand_out(actor)
        if progress:
            progress(done, len(names))
    if not merge.complete:  # pragma: no cover - every block is run until merged or the run fails
        raise ReportgenError("--engine ray: some blocks were never merged")
    rates = tuple(images / seconds for images, seconds in busy.values() if seconds > 0)
    for actor in live:
        ray.kill(actor, no_restart=True)
    return replace(merge.state.result(labels, method, time.perf_counter() - started, startup, rates),
                   merge_seconds=merge_seconds)

