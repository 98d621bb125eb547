"""The wheel carries the templates: build it, install it apart from the source tree, render a report from it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, sys
from pathlib import Path
import reportgen
from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.render import templates_dir
site = Path(sys.argv[1]).resolve()
assert Path(reportgen.__file__).resolve().is_relative_to(site), reportgen.__file__
assert templates_dir().resolve().is_relative_to(site), templates_dir()
generate_report(sys.argv[2], [sys.argv[3]], sys.argv[4], ReportOptions(sections=("summary", "weights")))
print("ok", templates_dir())
"""


@pytest.mark.slow
def test_wheel_renders_a_report_without_the_source_tree(tmp_path, saved_models, image_folder):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
                           cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(dist.glob("reportgen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for template in ("report.html.j2", "macros.html.j2", "style.css", "report.js"):
        assert f"reportgen/templates/{template}" in names
    assert any(name.startswith("reportgen/example/data/") for name in names)

    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                              str(site), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(site), str(saved_models["plain"]), str(image_folder),
                          str(out)], cwd=workdir, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Weights" in (out / "index.html").read_text()
