"""The dataset pass on Ray Data: the same accumulators as on one machine, run by a pool of workers and merged.

Each worker is a Ray actor holding one copy of the model (loaded once, from the model's bytes put in the object
store once) and the same compiled step as the local pass. Ray Data hands it batches of rows that carry image
paths, never pixels; the worker reads and decodes them itself, folds the batch into fresh accumulators and returns
them pickled, one row per batch. The driver merges the partial states as they arrive. Because a batch's state is
returned whole or not at all, a batch that Ray re-runs after a failure is counted once; because every top-k breaks
ties by image name, the merged result does not depend on which worker ran what.

Needs the `ray` extra (`pip install "reportgen[ray]"`); the local engine needs nothing more.
"""

from __future__ import annotations

import os
import pickle
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
    """InputError saying what to install when Ray Data is missing (checked before any work)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--engine ray: Ray Data is not installed; install it with {INSTALL_HINT}, or leave "
                         "--engine at local") from None


ADDRESS_FLAG = flag("ray_address")  # the option this module checks, named as the command line spells it
CONNECT_SECONDS = 3.0  # a cluster's GCS port answers at once; nothing answering in this long is no cluster


def check_engine(options: Any) -> None:
    """`--engine ray` checked before any work: Ray Data importable, and `--ray-address` an address where a Ray
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
    method: str
    input_shape: tuple[int | None, int | None, int]
    image_size: tuple[int, int] | None
    name_rank: np.ndarray


class PassWorker:
    """A Ray Data callable class: one model per actor, one partial state per batch."""

    def __init__(self, spec: WorkerSpec) -> None:
        import ray

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

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from reportgen.loading.images import ImageSource
        from reportgen.loading.stream import ImageReader

        spec = self.spec
        indices = np.asarray(rows["index"], np.int64)
        sources = [ImageSource(Path(str(p)), str(n), None) for p, n in zip(rows["path"], rows["name"], strict=True)]
        labels = np.asarray(rows["label"], np.int64)
        reader = ImageReader(sources, spec.input_shape, spec.image_size)
        state = self.dataset_pass.new_state(spec.name_rank)
        for batch in reader.batches(len(sources), prefetch=0):
            local = batch.indices
            batch = replace(batch, indices=indices[local])
            self.dataset_pass.process(state, batch, labels[local], [sources[i].name for i in local], spec.method)
        state.skipped.update(int(indices[i]) for i in reader.skipped)
        state.warnings.extend(reader.warnings)
        return {"state": np.array([pickle.dumps(state)], dtype=object), "images": np.array([len(sources)])}


def run_on_ray(analysis: Any, dataset_pass: Any, reader: Any, labels: np.ndarray, batch_size: int,
               progress: Callable[[int, int], None] | None = None) -> Any:
    """The dataset pass on Ray: `dataset_pass` (the local DatasetPass) decides how outputs become probabilities
    on the first batch and holds the merged result; the workers do the rest."""
    import ray
    import ray.data

    from reportgen.dataset import name_ranks

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
        context = ray.data.DataContext.get_current()
        context.retried_map_errors = True  # a failed batch is re-run (its state counted once)
        context.max_map_retries = 3
        context.actor_task_retry_on_errors = True
        context.enable_progress_bars = False
        names = [s.name for s in reader.sources]
        first = next(reader.batches(min(batch_size, len(names)), prefetch=0), None)
        method = None
        if first is not None:
            _, method, _ = dataset_pass.probabilities(first, labels[first.indices], None)
        with tempfile.TemporaryDirectory(prefix="reportgen-model-") as folder:
            model_file = Path(folder) / "model.keras"
            analysis.model.save(model_file)
            model_ref = ray.put(model_file.read_bytes())  # once, for every worker
        plan = dataset_pass.plan
        spec = WorkerSpec(
            model=model_ref, unsafe=options.unsafe, preprocess=analysis.preprocessor.mode,
            channels=analysis.preprocessor.channels, classes=dataset_pass.classes,
            plan=replace(plan, stat_layers=()), stat_layers=tuple(n.path for n in plan.stat_layers),
            shapes=dict(analysis.layer_shapes), activation=dataset_pass.activation, method=method or "softmax applied",
            input_shape=analysis.loaded.input_shape, image_size=options.image_size, name_rank=name_ranks(names))
        rows = [{"index": i, "path": str(s.path), "name": s.name, "label": int(labels[i])}
                for i, s in enumerate(reader.sources)]
        dataset = ray.data.from_items(rows).map_batches(
            PassWorker, fn_constructor_args=(spec,), batch_size=batch_size, concurrency=workers, num_cpus=1,
            batch_format="numpy")
        state = dataset_pass.new_state(name_ranks(names))
        seen = 0
        for row in dataset.iter_rows():
            state.merge(pickle.loads(row["state"]))
            seen += int(row["images"])
            if progress:
                progress(seen, len(names))
        return state.result(labels, method, time.perf_counter() - started), workers
    finally:
        if own_cluster:
            ray.shutdown()
