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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import InputError

INSTALL_HINT = 'pip install "reportgen[ray]"'
# A test hook: a file path; the first batch a worker sees while the file does not exist creates it and fails, so
# a test can check that Ray's retry re-runs the batch and nothing is counted twice.
FAIL_ONCE_VARIABLE = "REPORTGEN_RAY_FAIL_ONCE"


def require_ray() -> None:
    """InputError saying what to install when Ray Data is missing (checked before any work)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--engine ray: Ray Data is not installed; install it with {INSTALL_HINT}, or leave "
                         "--engine at local") from None


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
    fail_once: str | None


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
        if spec.fail_once and not Path(spec.fail_once).exists():
            Path(spec.fail_once).write_text("failed once\n", encoding="utf-8")
            raise RuntimeError("reportgen test hook: this batch fails once")
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
    if own_cluster:
        if options.ray_address:
            ray.init(address=options.ray_address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=options.workers or os.cpu_count() or 1, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False)
    try:
        workers = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
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
            input_shape=analysis.loaded.input_shape, image_size=options.image_size, name_rank=name_ranks(names),
            fail_once=os.environ.get(FAIL_ONCE_VARIABLE))
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
