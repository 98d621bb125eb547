"""Issue 26, part B: every input bounded, every bad input exit 2 naming the file or option.

`--ray-address` and `--workers` (the Ray engine), two runs into one OUT, symbolic links and special files in
IMAGES, the notebook view's kinds, infinite logits in summary.md, what `publish` copies, `--steps`, `check
--markdown/--json`, `--detail-images` escapes and model files that are not what their name says."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import write_images

from reportgen.config import MAX_STEPS, ReportOptions
from reportgen.errors import InputError, ModelLoadError, OutputError


def _finishes(function, seconds: float = 20.0):
    """Run `function` on a thread; its result, or a failure when it has not returned in `seconds` (a hang)."""
    box: dict = {}

    def target():
        try:
            box["value"] = function()
        except BaseException as exc:  # re-raised on the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, keras) -> Path:
    from test_dataset import tiny_model

    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    tiny_model(keras).save(path)
    return path


@pytest.fixture(scope="module")
def small_report(tmp_path_factory, tiny) -> Path:
    from reportgen.api import generate_report

    folder = tmp_path_factory.mktemp("small")
    images = write_images(folder / "images", size=(16, 16))
    out = folder / "report"
    generate_report(tiny, [images], out, ReportOptions(sections=("summary", "predictions")))
    return out


# ---------------------------------------------------------------------------------------------- 8. Ray engine


@pytest.mark.parametrize("address", ["localhost:1", "nonsense", "http://localhost:8265", "ray://localhost:10001",
                                     "auto", "localhost:99999"])
def test_a_bad_ray_address_is_exit_2_in_seconds(cli, tiny, tmp_path, monkeypatch, address):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "no-cluster"))  # `auto` must not find another test's Ray
    import ray._private.services as services

    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir=None: None)
    images = write_images(tmp_path / "images", size=(16, 16), per_class=1)
    started = time.perf_counter()
    result = cli("generate", tiny, images, "-o", tmp_path / "out", "--engine", "ray", "--ray-address", address)
    assert result.exit_code == 2, result.output
    assert "--ray-address" in result.output and "Traceback" not in result.output
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_workers_are_capped_at_the_cpus_and_the_memory_with_a_warning():
    from reportgen.ray_engine import worker_count

    mib = 2**20
    count, warning = worker_count(24, 2, 16_000 * mib, 800 * mib, "this machine")
    assert count == 2 and "--workers 24" in warning and "2 CPU" in warning
    count, warning = worker_count(8, 16, 2_000 * mib, 800 * mib, "the Ray cluster")
    assert count == 2 and "memory for 2" in warning  # 2,000 MiB hold two workers of 800 MiB
    assert worker_count(None, 4, 100_000 * mib, 800 * mib, "this machine") == (4, None)  # the default: one per CPU
    assert worker_count(None, 4, 1_000 * mib, 800 * mib, "this machine") == (1, None)
    assert worker_count(2, 4, None, 800 * mib, "this machine") == (2, None)


def test_ray_init_does_not_take_over_sigterm(monkeypatch):
    """Ray's init installs a SIGTERM handler that exits 15; the run's own (SIGTERM ends it as Ctrl-C does, exit 130,
    staging removed) must be the one in force during the pass."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from reportgen import ray_engine

    def ours(signum, frame):
        raise KeyboardInterrupt

    def fake_init(*args, **kwargs):
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(15))
        raise RuntimeError("stop here")

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", fake_init)
        analysis = SimpleNamespace(options=ReportOptions(engine="ray", workers=1), warnings=[])
        with pytest.raises(RuntimeError, match="stop here"):
            ray_engine.run_on_ray(analysis, None, None, np.zeros(0), 1)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------- 9. one run per OUT


def test_a_second_run_into_the_same_out_is_exit_2_and_leaves_the_first_runs_staging(tiny, tmp_path, cli):
    from reportgen.api import generate_report
    from reportgen.outlock import lock_path, output_lock

    images = write_images(tmp_path / "images", size=(16, 16), per_class=1)
    out = (tmp_path / "out").resolve()
    staging = tmp_path / ".out.building-abcd1234"  # what the first run is writing
    with output_lock(out):
        staging.mkdir()
        (staging / "index.html").write_text("half")
        with pytest.raises(OutputError, match=r"another reportgen run is writing .*out"):
            generate_report(tiny, [images], out, ReportOptions(sections=("summary",)))
        result = cli("generate", tiny, images, "-o", out, "--sections", "summary")
        assert result.exit_code == 2 and "-o/--output-dir" in result.output, result.output
        assert staging.is_dir()  # not swept from under the first run
    assert not lock_path(out).exists()  # released and removed
    lock_path(out).write_text("")  # left by a run that was killed: neither swept nor in the way
    generate_report(tiny, [images], out, ReportOptions(sections=("summary",)))
    assert (out / "index.html").is_file() and not staging.exists()  # now a leftover, swept


# -------------------------------------------------------------------------------------- 10. links in IMAGES


def test_links_leaving_images_are_named_and_special_files_never_listed(tmp_path):
    from reportgen.loading.images import discover_images

    images = write_images(tmp_path / "images", classes=("a",), per_class=1, size=(8, 8))
    private = write_images(tmp_path / "private", classes=("p",), per_class=1, size=(8, 8)) / "p" / "p_0.png"
    (images / "a" / "inside.png").symlink_to(images / "a" / "a_0.png")
    (images / "a" / "outside.png").symlink_to(private)
    (images / "a" / "passwd.png").symlink_to("/etc/passwd")
    (images / "a" / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(images / "a" / "pipe.png")
    warnings: list[str] = []
    names = [s.name for s in discover_images([images], warnings=warnings)]
    assert "a/zero.png" not in names and "a/pipe.png" not in names
    assert "a/outside.png" in names and "a/passwd.png" in names  # followed, and named:
    leaving = next(w for w in warnings if "point outside" in w)
    assert "a/outside.png" in leaving and "a/passwd.png" in leaving and "inside.png" not in leaving
    assert any("not regular files" in w and "a/pipe.png" in w and "a/zero.png" in w for w in warnings)

    warnings = []
    names = [s.name for s in discover_images([images], warnings=warnings, follow_links=False)]
    assert names == ["a/a_0.png"]
    assert any("--no-follow-links" in w and "a/outside.png" in w for w in warnings)


def test_no_follow_links_is_an_option_of_generate_and_the_config(tmp_path, cli):
    from reportgen.config import read_config_file

    assert "--no-follow-links" in cli("generate", "--help").output
    config = tmp_path / "c.toml"
    config.write_text("follow-links = false\n")
    assert read_config_file(config) == {"follow_links": False}
    assert ReportOptions(follow_links=False).to_manifest()["follow-links"] is False


def test_a_fifo_or_device_is_never_read_as_an_image(tmp_path):
    from reportgen.loading.images import decode_image

    os.mkfifo(tmp_path / "pipe.png")
    for path in (tmp_path / "pipe.png", Path("/dev/zero")):
        with pytest.raises(ValueError, match="not a regular file"):
            _finishes(lambda p=path: decode_image(p), 10)


def test_a_stray_report_json_in_a_class_folder_is_a_warning(tmp_path):
    from reportgen.loading.images import discover_images

    images = write_images(tmp_path / "images", classes=("cat", "dog"), per_class=1, size=(8, 8))
    (images / "dog" / "report.json").write_text('{"schema_version": 1, "generator": "reportgen"}')
    warnings: list[str] = []
    names = [s.name for s in discover_images([images], warnings=warnings)]
    assert names == ["cat/cat_0.png"]
    assert any("report.json" in w and "dog" in w for w in warnings), warnings


# ------------------------------------------------------------------------------- 11. the notebook view's kinds


def test_show_a_kind_is_every_section_of_that_kind():
    from reportgen.notebook import section_ids

    manifest = {"sections": [{"id": "cam", "kind": "cam"}, {"id": "cam-cat-1", "kind": "cam"},
                             {"id": "weights", "kind": "weights"}, {"id": "weights-conv1", "kind": "weights",
                                                                    "layer": "conv1"}]}
    assert section_ids(manifest, "cam") == ["cam", "cam-cat-1"]
    assert section_ids(manifest, "weights") == ["weights", "weights-conv1"]
    assert section_ids(manifest, "weights-conv1") == ["weights-conv1"]
    assert section_ids(manifest, "conv1") == ["weights-conv1"]


# ------------------------------------------------------------------------------------- 12. infinite logits


def test_infinite_logits_write_the_report_and_summary_says_n_a(keras, tmp_path):
    from test_dataset import tiny_model

    from reportgen.api import generate_report

    model = tiny_model(keras)
    kernel, bias = model.get_layer("out").get_weights()
    model.get_layer("out").set_weights([kernel, np.full_like(bias, np.inf)])
    images = write_images(tmp_path / "images", size=(16, 16), per_class=2)
    result = generate_report(model, [images], tmp_path / "out", ReportOptions(
        sections=("predictions", "cam"), cam_methods=("gradcam",), detail=2))
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "margin n/a" in summary and result.index_html.is_file()


def test_summary_md_formats_missing_numbers_as_n_a(small_report):
    """A CAM method whose margin over random is missing (no finite curve) reads n/a in summary.md."""
    import json

    from reportgen.report_folder.schema import Report
    from reportgen.summary_md import summary_markdown

    manifest = json.loads((small_report / "report.json").read_text())
    manifest["sections"].append({"id": "cam", "kind": "cam", "title": "Class activation maps", "figures": [],
                                 "data": {"methods": [{"method": "gradcam", "beats_random": False,
                                                       "margin_over_random": None, "same_maps_as": []}]}})
    assert "margin n/a" in summary_markdown(Report.from_dict(manifest))


# --------------------------------------------------------------------------------------------- 13. publish


def _copy(report: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "report"
    shutil.copytree(report, copy)
    return copy


@pytest.mark.parametrize("change", ["script before the policy", "no policy", "loose policy", "extra page",
                                    "figure not a png"])
def test_publish_copies_only_what_generate_writes(small_report, tmp_path, cli, change):
    report = _copy(small_report, tmp_path)
    page = report / "index.html"
    text = page.read_text(encoding="utf-8")
    if change == "script before the policy":
        page.write_text(text.replace("<head>", "<head><script>alert(1)</script>", 1), encoding="utf-8")
    elif change == "no policy":
        page.write_text(text.replace('http-equiv="Content-Security-Policy"', 'name="x"', 1), encoding="utf-8")
    elif change == "loose policy":
        page.write_text(text.replace("script-src ", "script-src 'unsafe-inline' ", 1), encoding="utf-8")
    elif change == "extra page":
        (report / "evil.html").write_text("<script>alert(1)</script>")
    else:
        figure = next((report / "figures").iterdir())
        figure.write_bytes(b"<svg onload='alert(1)'/>")
    site = tmp_path / "site"
    result = cli("publish", report, site)
    assert result.exit_code == 2, result.output
    assert "REPORT" in result.output and "Traceback" not in result.output
    assert not site.exists()


def test_a_publish_that_fills_the_disk_leaves_no_folder(small_report, tmp_path, cli, monkeypatch):
    import shutil

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copy2", full)
    result = cli("publish", small_report, tmp_path / "site")
    assert result.exit_code == 2 and "no space left" in result.output, result.output
    assert not (tmp_path / "site").exists()
    (tmp_path / "site").mkdir()  # a site that was there stays, without an empty model folder
    assert cli("publish", small_report, tmp_path / "site").exit_code == 2
    assert list((tmp_path / "site").iterdir()) == []


# ---------------------------------------------------------------------------------------------- low severity


def test_steps_are_capped(cli, tmp_path):
    with pytest.raises(InputError, match="--steps"):
        ReportOptions(steps=MAX_STEPS + 1)
    ReportOptions(steps=MAX_STEPS)
    result = cli("generate", tmp_path / "missing.keras", tmp_path, "-o", tmp_path / "out", "--steps", "100000000")
    assert result.exit_code == 2 and "--steps" in result.output and "does not exist" not in result.output


@pytest.mark.parametrize("flag", ["--markdown", "--json"])
def test_check_outputs_are_plain_files_outside_the_report_written_whole(small_report, tmp_path, cli, flag):
    report = _copy(small_report, tmp_path)
    manifest = (report / "report.json").read_bytes()
    os.mkfifo(tmp_path / "pipe")
    target = tmp_path / "target.txt"
    target.write_text("keep")
    (tmp_path / "link").symlink_to(target)
    for bad, what in ((tmp_path / "pipe", "not a regular file"), (tmp_path / "link", "symbolic link"),
                      (report / "report.json", "inside the report")):
        result = _finishes(lambda b=bad: cli("check", report, flag, b), 30)
        assert result.exit_code == 2 and flag in result.output and what in result.output, result.output
    assert (report / "report.json").read_bytes() == manifest and target.read_text() == "keep"
    good = tmp_path / "out.txt"
    rules = tmp_path / "rules.toml"
    rules.write_text("min_accuracy = 0.0\n")
    result = cli("check", report, "--rules", rules, flag, good)
    assert result.exit_code == 0, result.output
    assert good.read_text(encoding="utf-8") and [p.name for p in tmp_path.glob(".out.txt.*")] == []


def test_detail_images_escapes_glob_characters():
    from reportgen.api import _check_unambiguous
    from reportgen.techniques.detail import choose_detail

    names = ["c/[x]*.png", "c/x.png", "c/xy.png"]
    with pytest.raises(InputError, match=r"--detail-images.*c/\[\[\]x\]\[\*\]\.png"):
        _check_unambiguous(names, ["c/[x]*.png"])
    _check_unambiguous(names, ["c/[[]x][*].png", "c/[x]*.png?"])
    predicted = np.zeros(3, np.int64)
    assert choose_detail(names, predicted, predicted, np.ones(3), 12, 0, ["c/[[]x][*].png"]) == [0]
    assert choose_detail(names, predicted, predicted, np.ones(3), 12, 0, ["c/[x]*"]) == [1, 2]


def test_model_files_that_are_not_what_they_say_are_exit_2(tmp_path):
    from reportgen.loading.models import load_model

    (tmp_path / "zero.keras").symlink_to("/dev/zero")
    with pytest.raises(ModelLoadError, match="not a regular file"):
        _finishes(lambda: load_model(tmp_path / "zero.keras"), 10)
    (tmp_path / "random.keras").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ModelLoadError, match=r"not a \.keras file.*zip"):
        load_model(tmp_path / "random.keras")


@pytest.fixture(scope="module")
def tf_keras():
    return pytest.importorskip("tf_keras")


def test_legacy_h5_with_a_nested_sequential_base_loads(tf_keras, tmp_path):
    from reportgen.loading.models import load_model

    layers = tf_keras.layers
    tf_keras.utils.set_random_seed(0)
    base = tf_keras.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(16, 16, 3), name="c1"),
                                layers.MaxPooling2D(name="p1")], name="seq_base")
    model = tf_keras.Sequential([base, layers.Flatten(), layers.Dense(3, activation="softmax")], name="transfer")
    model.save(tmp_path / "nested.h5")
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    loaded = load_model(tmp_path / "nested.h5")
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_a_model_config_that_is_not_utf8_is_exit_2(tf_keras, tmp_path):
    import h5py

    from reportgen.loading.models import load_model

    model = tf_keras.Sequential([tf_keras.Input((8, 8, 3)), tf_keras.layers.Conv2D(2, 3, name="c1"),
                                 tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(2)], name="m")
    model.save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as handle:
        raw = handle.attrs["model_config"]
        raw = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        del handle.attrs["model_config"]
        handle.attrs.create("model_config", data=raw.replace(b'"m"', b'"m\xff"', 1),
                            dtype=h5py.string_dtype("utf-8"))
    with pytest.raises(ModelLoadError, match="not UTF-8"):
        load_model(tmp_path / "m.h5")
