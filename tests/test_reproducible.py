"""Reproducible reports: the same model, images, options and seed give the same bytes; SOURCE_DATE_EPOCH pins the
creation time, the only thing in the page that would otherwise change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.sections import available_sections

EPOCH, EPOCH_ISO = "1700000000", "2023-11-14T22:13:20Z"
OTHER_EPOCH, OTHER_ISO = "1800000000", "2027-01-15T08:00:00Z"
# Every section that is registered, at its cheapest settings: a timing or an unseeded draw in any of them shows.
CHEAP = dict(save_arrays=True, seed=3, steps=3, filters=2, cam_methods=("gradcam", "smoothgrad"), top_k=2)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


TIMINGS = ("seconds", "images_per_second", "engine_startup_seconds")


def _without_seconds(value):
    """report.json minus the wall-clock timings, which may differ between runs by design."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def _first_difference(a: Path, b: Path) -> str:
    """Where two files first differ, with some context: usually a timing or an unseeded draw."""
    first, second = a.read_bytes(), b.read_bytes()
    pairs = enumerate(zip(first, second, strict=False))
    at = next((i for i, (x, y) in pairs if x != y), min(len(first), len(second)))
    return (f"{a.name} differs between identical runs at byte {at}: {first[max(0, at - 120):at + 40]!r} vs "
            f"{second[max(0, at - 120):at + 40]!r}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, saved_models, shared_images):
    """Three reports of one model: two with the same SOURCE_DATE_EPOCH, one with another. Report "b" is made by
    the command line in a process of its own (another hash seed, fresh TensorFlow state), as two CI runs would."""
    folder = tmp_path_factory.mktemp("reproducible")
    options = ReportOptions(**CHEAP)
    with pytest.MonkeyPatch.context() as patch:
        for name, epoch in (("a", EPOCH), ("c", OTHER_EPOCH)):
            patch.setenv("SOURCE_DATE_EPOCH", epoch)
            generate_report(saved_models["plain"], [shared_images], folder / name, options)
    command = [sys.executable, "-m", "reportgen", "generate", str(saved_models["plain"]), str(shared_images),
               "-o", str(folder / "b"), "--quiet", "--save-arrays", "--seed", "3", "--steps", "3", "--filters", "2",
               "--cam-methods", "gradcam,smoothgrad", "--top-k", "2"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "PYTHONHASHSEED": "random"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return folder


def test_same_inputs_give_identical_bytes(runs):
    a, b = runs / "a", runs / "b"
    manifest = json.loads((a / "report.json").read_text())
    assert [k for k in available_sections() if k not in manifest["options"]["sections"]] == []
    assert manifest["created"] == EPOCH_ISO
    assert _files(a) == _files(b)
    assert {"index.html", "summary.md", "arrays.npz", "report.json"} <= set(_files(a))
    for name in _files(a):
        if name != "report.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), _first_difference(a / name, b / name)
    second = json.loads((b / "report.json").read_text())
    assert _without_seconds(manifest) == _without_seconds(second)
    with np.load(a / "arrays.npz") as first, np.load(b / "arrays.npz") as again:
        assert first.files == again.files and len(first.files) > 0
        for key in first.files:
            np.testing.assert_array_equal(first[key], again[key])


def test_only_the_creation_time_depends_on_the_epoch(runs):
    a, c = runs / "a", runs / "c"
    assert _files(a) == _files(c)
    for name in ("index.html", "summary.md"):
        first, other = (a / name).read_text(), (c / name).read_text()
        assert EPOCH_ISO in first and OTHER_ISO in other
        assert first.replace(EPOCH_ISO, OTHER_ISO) == other, name
    assert (a / "arrays.npz").read_bytes() == (c / "arrays.npz").read_bytes()

