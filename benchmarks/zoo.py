"""The model zoo of `tests/test_zoo.py` at each model's real input size, with the report's default options.

    python benchmarks/zoo.py [--models mobilenetv2,efficientnetb0,...] [--images 4]

Models: the keras.applications families with random weights (`--weights none`) at their default input size
(224 px; 299 px for Inception and Xception), and the zoo's tiny trained models at theirs (32 or 48 px; the Keras 2
one as an .h5 file written by tf_keras). Images: `--images` generated shapes, in class folders.

Each report runs as `python -m reportgen generate MODEL IMAGES -o OUT` in its own process, as a user runs it, one
at a time. Printed: a markdown table with, per model, the wall time, the peak resident memory of the report's
processes (the largest one: `/usr/bin/time -v`), their CPU seconds (every process and thread: comparable when
the machine is busy), the page's size (index.html, figures inlined) and the sections
that warned (report.json's warnings, by section), then each warning in full.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# Default input size per keras.applications name (what the constructor builds without input_shape).
APPLICATIONS = {
    "vgg16": 224, "resnet50": 224, "resnet50v2": 224, "inceptionv3": 299, "inceptionresnetv2": 299, "xception": 299,
    "mobilenet": 224, "mobilenetv2": 224, "mobilenetv3small": 224, "densenet121": 224, "nasnetmobile": 224,
    "efficientnetb0": 224, "efficientnetv2b0": 224, "convnexttiny": 224,
}


def run_report(model: str, images: Path, out: Path, extra: list[str], limit: float | None = None) -> dict:
    """One default report under `/usr/bin/time -v`: wall seconds, peak memory, page bytes and warnings; a report
    still running after `limit` seconds is stopped (its whole process group) and said so."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "reportgen", "generate", model, str(images), "-o",
               str(out), "--quiet", *extra]
    cpu_before = _children_cpu()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out.parent,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\nstopped after {limit:.0f} s (--limit)"
    run = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    seconds = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before  # every process and thread of the report: comparable on a busy machine
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    result = {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": int(peak.group(1)) / 1024 if peak else float("nan"),
              "exit": run.returncode, "error": "", "page_bytes": 0, "warnings": []}
    if run.returncode != 0:
        lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("\t")]
        result["error"] = next((line for line in reversed(lines) if "Command exited" not in line), "")
        return result
    result["page_bytes"] = (out / "index.html").stat().st_size
    result["warnings"] = json.loads((out / "report.json").read_text())["warnings"]
    return result


def _children_cpu() -> float:
    """User and system CPU seconds of this process's finished children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def warned_sections(warnings: list[str]) -> list[str]:
    """The sections named at the start of the warnings (`cam: ...`), in order, each once."""
    return list(dict.fromkeys(w.split(":", 1)[0] for w in warnings if ":" in w))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="Comma-separated zoo names (default: all).")
    parser.add_argument("--images", type=int, default=4, help="Generated images per report.")
    parser.add_argument("--limit", type=float, default=None, help="Stop a report after this many seconds.")
    args = parser.parse_args()

    from test_zoo import TINY_MODELS, save_tiny_models, write_image_folder

    zoo = [*APPLICATIONS, *TINY_MODELS, "keras2_h5"]
    chosen = zoo if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(zoo))
    if unknown:
        sys.exit(f"unknown models {unknown}; the zoo is: {', '.join(zoo)}")

    work = Path(tempfile.mkdtemp(prefix="reportgen-zoo-"))
    images = write_image_folder(work / "images", count=args.images, size=256)
    binary_images = write_image_folder(work / "binary_images", count=args.images, size=256,
                                       classes=("other", "square"))
    files: dict[str, Path] = {}
    if set(chosen) - set(APPLICATIONS):
        (work / "models").mkdir()
        files = save_tiny_models(work / "models")

    print(f"{args.images} images per report; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| model | input | seconds | CPU seconds | peak memory (MiB) | page (MB) | sections that warned |")
    print("|---|---|---:|---:|---:|---:|---|")
    details: list[str] = []
    for name in chosen:
        if name in APPLICATIONS:
            model, folder, extra, size = name, images, ["--weights", "none"], APPLICATIONS[name]
        elif name in files:
            model, folder, extra = str(files[name]), binary_images if name == "binary_sigmoid" else images, []
            size = None
        else:
            print(f"| {name} | | | | | | skipped: tf_keras is not installed |")
            continue
        result = run_report(model, folder, work / f"report-{name}", extra, args.limit)
        input_size = f"{size} px" if size else "its own"
        if result["exit"] != 0:
            print(f"| {name} | {input_size} | {result['seconds']:.0f} | {result['cpu_seconds']:.0f} | "
                  f"{result['peak_mib']:.0f} | | "
                  f"FAILED (exit {result['exit']}): {result['error'][:120]} |", flush=True)
            continue
        warned = ", ".join(warned_sections(result["warnings"])) or "none"
        print(f"| {name} | {input_size} | {result['seconds']:.0f} | {result['cpu_seconds']:.0f} | "
              f"{result['peak_mib']:.0f} | "
              f"{result['page_bytes'] / 1e6:.1f} | {warned} |", flush=True)
        details += [f"- {name}: {warning}" for warning in result["warnings"]]
    if details:
        print("\nWarnings:")
        print("\n".join(details))


if __name__ == "__main__":
    main()
