"""The command line's watchdog (`reportgen.watchdog`): a stalled step or a native crash ends the run with one line
that names the step, and OUT is left exactly as it was.

Each test runs `reportgen demo` as a user does, in a subprocess, with a `sitecustomize` module on PYTHONPATH that
breaks one figure function in every process of the run (the watching parent, the report, the plotting worker):
nothing in the package knows about these tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

COMMAND = [sys.executable, "-m", "reportgen.cli", "demo", "--sections", "weights", "--seed", "1"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(out: Path, breakage: str | None, tmp_path: Path, stall_seconds: str = "120") -> subprocess.CompletedProcess:
    env = {**os.environ, "REPORTGEN_STALL_SECONDS": stall_seconds}
    if breakage is not None:
        hooks = tmp_path / "hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(textwrap.dedent(breakage))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))
    return subprocess.run([*COMMAND, "-o", str(out)], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def earlier_report(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """OUT holding a complete earlier report, and its bytes."""
    tmp_path = tmp_path_factory.mktemp("watchdog")
    out = tmp_path / "report"
    done = _run(out, None, tmp_path)
    assert done.returncode == 0, done.stderr
    return out, _snapshot(out)


def _assert_untouched(out: Path, before: dict[str, bytes]) -> None:
    assert _snapshot(out) == before
    from reportgen.render import LEFTOVER_KINDS

    leftovers = [p.name for p in out.parent.iterdir()
                 if any(p.name.startswith(f".{out.name}.{kind}-") for kind in LEFTOVER_KINDS)]
    assert not leftovers  # the staging folder was removed


def test_a_plot_that_never_returns_ends_the_run_with_the_section_named(earlier_report, tmp_path):
    out, before = earlier_report
    never_returns = """
        import time
        import reportgen.figures as figures

        def plot_histogram(*args, **kwargs):
            time.sleep(3600)

        figures.plot_histogram = plot_histogram
    """
    # Long enough for TensorFlow's import on a busy machine: the first progress step comes after it.
    done = _run(out, never_returns, tmp_path, stall_seconds="15")
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: no progress for 15 s in the ") and "weights" in last, done.stderr
    assert "REPORTGEN_STALL_SECONDS" in last
    assert "Traceback" not in done.stderr
    _assert_untouched(out, before)


def test_a_native_abort_inside_a_section_names_it_and_what_to_try(earlier_report, tmp_path):
    out, before = earlier_report
    aborts = """
        import os
        import reportgen.figures as figures

        def kernel_grid(*args, **kwargs):
            os.abort()  # what a crashing TensorFlow kernel does: no Python exception, no cleanup

        figures.kernel_grid = kernel_grid
    """
    done = _run(out, aborts, tmp_path)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the report process died of SIGABRT in the weights step"), done.stderr
    assert "TF_ENABLE_ONEDNN_OPTS=0" in last and "--batch-size" in last
    _assert_untouched(out, before)


def test_a_bad_stall_limit_is_an_input_error(tmp_path):
    done = _run(tmp_path / "report", None, tmp_path, stall_seconds="soon")
    assert done.returncode == 2
    assert done.stderr.strip() == "Error: REPORTGEN_STALL_SECONDS: expected a positive number of seconds, got 'soon'"
    assert not (tmp_path / "report").exists()
