"""The dataset pass on Ray gives the report a single machine gives, on a cluster of a head and two worker nodes:
the same evaluation, dataset examples, class-level and feature-map numbers; a block whose task fails once is run
again and counted once; a node lost mid-pass leaves its blocks to the other and nothing is counted twice; start-up
is reported apart from the throughput; without Ray, exit 2."""

from __future__ import annotations

import builtins
import json
import pickle
import threading
import time

import numpy as np
import pytest
from test_dataset import tiny_model, write_pngs

from reportgen import ray_engine
from reportgen.config import ReportOptions

SECTIONS = ("feature_maps", "dataset_examples", "predictions", "evaluation", "data_health", "class")
IMAGES = 300
BATCH = 32


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster: a head without CPUs (the driver's) and two worker nodes of one CPU each, so each of
    the two workers has a node of its own. Node deaths are noticed within about a second."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'reportgen[ray]')")
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 2}})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def three_hundred(tmp_path_factory, keras):
    folder = tmp_path_factory.mktemp("ray")
    images = write_pngs(folder / "images", IMAGES)
    (images / "x" / "broken.png").write_bytes(b"not an image")  # skipped with the same warning either way
    model = tiny_model(keras)
    model.save(folder / "tiny.keras")
    return folder, images


@pytest.fixture(scope="module")
def local_report(three_hundred):
    folder, images = three_hundred
    return _report(folder, images, "local")


def _report(folder, images, name, **options):
    from reportgen.api import generate_report

    result = generate_report(folder / "tiny.keras", [images], folder / name, ReportOptions(
        sections=SECTIONS, examples=4, filters=3, batch_size=BATCH, detail=4, **options), force=True)
    return json.loads(result.manifest.read_text()), result


def _dataset_numbers(manifest):
    sections = {s["id"]: s.get("data", {}) for s in manifest["sections"]}
    classes = {s["id"]: s["data"]["dataset"] for s in manifest["sections"]
               if s["kind"] == "class" and s["data"].get("dataset")}
    return {
        "evaluation": manifest["evaluation"],
        "examples": manifest["dataset_examples"],
        "classes": classes,
        "feature_maps": [{k: v for k, v in e.items() if k in ("layer", "dead_channels", "mean_activation",
                                                              "sparsity")} for e in manifest["feature_maps"]],
        "images": [(i["name"], i["prediction"]) for i in manifest["images"]],
        "overview": sections.get("feature-maps"),
        "data_health": manifest["data_health"],  # the same label issues, duplicates and outliers, in order
    }


def _assert_close(a, b, path="report"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), path
    else:
        assert a == b, path


def _confusion_total(manifest):
    return sum(map(sum, manifest["evaluation"]["confusion"]))


def test_two_nodes_give_the_local_report(cluster, three_hundred, local_report):
    folder, images = three_hundred
    local, local_result = local_report
    on_ray, ray_result = _report(folder, images, "ray", engine="ray", workers=2)
    assert local["dataset"]["images"] == on_ray["dataset"]["images"] == IMAGES
    assert on_ray["dataset"]["engine"] == "ray" and on_ray["dataset"]["workers"] == 2
    assert local["dataset"]["engine"] == "local"
    _assert_close(_dataset_numbers(local), _dataset_numbers(on_ray))
    assert _confusion_total(on_ray) == IMAGES  # the labelled images, each once (broken.png was never read)
    assert any("broken.png" in w for w in ray_result.warnings)
    assert [w for w in ray_result.warnings if "broken" in w] == [w for w in local_result.warnings if "broken" in w]
    # Both workers (one per node) folded blocks; start-up is timed apart from the stream.
    dataset = on_ray["dataset"]
    assert len(dataset["worker_images_per_second"]) == 2
    assert 0 < dataset["engine_startup_seconds"] < dataset["seconds"]
    assert dataset["images_per_second"] == pytest.approx(
        IMAGES / (dataset["seconds"] - dataset["engine_startup_seconds"]), rel=0.01)
    assert 0 < local["dataset"]["engine_startup_seconds"] < local["dataset"]["seconds"]


def test_a_failed_block_and_a_node_lost_mid_pass_count_every_image_once(cluster, three_hundred, local_report,
                                                                         tmp_path, monkeypatch):
    """A block whose task raises is run again; a worker that has delivered a block and then loses its node
    while it holds another leaves that one to the other worker. The same numbers as the local engine: the
    delivered block is neither lost nor counted again, the failed and the lost blocks are counted once."""
    import ray

    folder, images = three_hundred
    local, _ = local_report
    failed, stalled = tmp_path / "failed", tmp_path / "stalled"

    # Defined here, so Ray ships the class by value to its workers.
    class FailsOnceThenStalls(ray_engine.PassWorker):
        def run_block(self, block, method):
            if block.number == 1 and not failed.exists():
                failed.write_text("failed once\n", encoding="utf-8")
                raise RuntimeError("this block fails once, after none of it was returned")
            if getattr(self, "delivered", 0) >= 1 and not stalled.exists():
                stalled.write_text(ray.get_runtime_context().get_node_id(), encoding="utf-8")
                time.sleep(120)  # its node is removed meanwhile
            result = super().run_block(block, method)
            self.delivered = getattr(self, "delivered", 0) + 1
            return result

    removed = []

    def remove_the_stalled_node():
        deadline = time.monotonic() + 120
        while not stalled.exists() or not stalled.read_text(encoding="utf-8"):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        node_id = stalled.read_text(encoding="utf-8")
        node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
        cluster.remove_node(node, allow_graceful=False)
        removed.append(node_id)

    monkeypatch.setattr(ray_engine, "PassWorker", FailsOnceThenStalls)
    # Five blocks of two batches: a worker stalls on a block after it delivered one, so one is left for it.
    assert len(ray_engine.plan_blocks(IMAGES + 1, BATCH, 2)) == 5
    killer = threading.Thread(target=remove_the_stalled_node, daemon=True)
    killer.start()
    try:
        survived, _ = _report(folder, images, "lost-node", engine="ray", workers=2)
    finally:
        killer.join(timeout=5)
        cluster.add_node(num_cpus=1)  # back to two worker nodes for whatever runs next
        cluster.wait_for_nodes()
    assert failed.exists() and removed, "the block never failed, or the stalled worker's node was never removed"
    assert _confusion_total(survived) == IMAGES
    assert survived["dataset"]["images"] == IMAGES
    _assert_close(_dataset_numbers(local), _dataset_numbers(survived))


class Count:
    """A stand-in accumulator state: which blocks it holds, in merge order."""

    def __init__(self, blocks=()):
        self.blocks = list(blocks)

    def merge(self, other):
        self.blocks.extend(other.blocks)


def test_block_states_are_merged_once_each_in_block_order_whatever_arrives():
    merge = ray_engine.BlockMerge(Count(), 4)
    arrivals = [(2, "first try"), (0, "only"), (2, "retry"), (0, "duplicate"), (3, "only"), (1, "only"),
                (1, "late duplicate")]
    fresh = [merge.add(number, Count([(number, note)])) for number, note in arrivals]
    assert merge.complete
    # Block 2's retry replaced its first state before block 2 was merged; the late arrivals after their block was
    # merged were dropped; the merge order is the block order.
    assert merge.state.blocks == [(0, "only"), (1, "only"), (2, "retry"), (3, "only")]
    assert fresh == [True, True, False, False, True, True, False]


@pytest.mark.parametrize(("count", "batch", "workers"), [(301, 32, 2), (20_000, 128, 1), (5, 8, 4), (0, 8, 1),
                                                         (1_000_000, 128, 64)])
def test_blocks_cover_every_image_once_in_whole_batches(count, batch, workers):
    blocks = ray_engine.plan_blocks(count, batch, workers)
    assert [i for block in blocks for i in block] == list(range(count))
    assert all(len(block) % batch == 0 for block in blocks[:-1])  # the local engine's batches, unbroken
    assert all(len(block) <= ray_engine.MAX_BLOCK_BATCHES * batch for block in blocks)
    batches = -(-count // batch)
    # About BLOCKS_PER_WORKER per worker when there are batches enough, never more blocks than batches.
    assert len(blocks) <= batches
    if batches >= workers * ray_engine.BLOCKS_PER_WORKER * ray_engine.MAX_BLOCK_BATCHES:
        assert len(blocks) >= workers * ray_engine.BLOCKS_PER_WORKER
    elif batches >= workers * ray_engine.BLOCKS_PER_WORKER:
        assert workers * ray_engine.BLOCKS_PER_WORKER / 2 <= len(blocks) <= workers * ray_engine.BLOCKS_PER_WORKER


def test_a_state_leaves_its_process_without_the_name_ranks():
    """A block's state is pickled once; the ranks of every image's name (an array over the whole set) stay home,
    and the state merged on the other side gives the same examples."""
    from reportgen.dataset import PassState, name_ranks
    from reportgen.techniques.class_stats import ClassAccumulator
    from reportgen.techniques.dataset_examples import FilterExtremes
    from reportgen.techniques.evaluation import EvaluationAccumulator

    rng = np.random.default_rng(1)
    names = [f"img{i:06d}" for i in range(200_000)]
    ranks = name_ranks(names)

    def state(indices):
        s = PassState(EvaluationAccumulator(2), ClassAccumulator(2, None, None), {},
                      [FilterExtremes("conv", [0, 1], 3, ranks)])
        maps = rng.normal(size=(len(indices), 2, 2, 2))
        # Equal means everywhere: the examples are decided by the name ranks alone.
        s.extremes[0].update(indices, [names[i] for i in indices], np.ones((len(indices), 2)), maps)
        return s

    block = state(np.arange(150_000, 150_010))
    sent = pickle.dumps(block)
    assert len(sent) < 20_000 < ranks.nbytes
    assert block.extremes[0].name_rank is ranks  # the worker's own state keeps them
    here = state(np.arange(199_990, 200_000))
    here.merge(pickle.loads(sent))
    top = here.extremes[0].result()[0].top
    assert [r.index for r in top] == [150_000, 150_001, 150_002]  # the first names, whatever side they came from


def test_without_ray_the_engine_is_exit_2_with_the_install_line(cli, three_hundred, monkeypatch):
    folder, images = three_hundred
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = cli("generate", folder / "tiny.keras", images, "-o", folder / "never", "--engine", "ray")
    assert result.exit_code == 2
    assert 'pip install "reportgen[ray]"' in result.output
    assert not (folder / "never").exists()
