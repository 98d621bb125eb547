"""The dataset pass on Ray Data gives the report a single machine gives: the same evaluation, dataset examples,
class-level and feature-map numbers; a batch that fails once is re-run and counted once; without Ray, exit 2."""

from __future__ import annotations

import builtins
import json

import pytest
from test_dataset import tiny_model, write_pngs

from reportgen import ray_engine
from reportgen.config import ReportOptions

SECTIONS = ("feature_maps", "dataset_examples", "predictions", "evaluation", "class")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'reportgen[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def three_hundred(tmp_path_factory, keras):
    folder = tmp_path_factory.mktemp("ray")
    images = write_pngs(folder / "images", 300)
    (images / "x" / "broken.png").write_bytes(b"not an image")  # skipped with the same warning either way
    model = tiny_model(keras)
    model.save(folder / "tiny.keras")
    return folder, images


def _report(folder, images, name, **options):
    from reportgen.api import generate_report

    result = generate_report(folder / "tiny.keras", [images], folder / name, ReportOptions(
        sections=SECTIONS, examples=4, filters=3, batch_size=32, detail=4, **options), force=True)
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


def test_the_ray_engine_gives_the_local_report(local_ray, three_hundred, tmp_path, monkeypatch):
    folder, images = three_hundred
    local, local_result = _report(folder, images, "local")
    on_ray, ray_result = _report(folder, images, "ray", engine="ray", workers=2)
    assert local["dataset"]["images"] == on_ray["dataset"]["images"] == 300
    assert on_ray["dataset"]["engine"] == "ray" and on_ray["dataset"]["workers"] == 2
    assert local["dataset"]["engine"] == "local"
    _assert_close(_dataset_numbers(local), _dataset_numbers(on_ray))
    assert any("broken.png" in w for w in ray_result.warnings)
    assert [w for w in ray_result.warnings if "broken" in w] == [w for w in local_result.warnings if "broken" in w]

    # A batch that fails once is re-run by Ray: the same numbers, nothing counted twice. The failing worker is a
    # subclass defined here (a local class, so Ray ships it by value to its workers).
    marker = tmp_path / "failed-once"

    class FailsOnce(ray_engine.PassWorker):
        def __call__(self, rows):
            if not marker.exists():
                marker.write_text("failed once\n", encoding="utf-8")
                raise RuntimeError("this batch fails once")
            return super().__call__(rows)

    monkeypatch.setattr(ray_engine, "PassWorker", FailsOnce)
    retried, _ = _report(folder, images, "retried", engine="ray", workers=2)
    assert marker.exists()
    assert sum(map(sum, retried["evaluation"]["confusion"])) == 300
    _assert_close(_dataset_numbers(local), _dataset_numbers(retried))


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

