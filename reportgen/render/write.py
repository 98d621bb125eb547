"""Write a report folder: figures/, index.html, report.json (through `report_folder.write`), summary.md and
arrays.npz, built in a staging folder and swapped into place."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from reportgen import watchdog
from reportgen.render.encode import FigureEncoder
from reportgen.render.folder import check_output_dir, raise_if_disk_full, swap_into_place
from reportgen.render.page import EncodedFigure, budget_note, encode_figures, render_html
from reportgen.report import Figure, Report
from reportgen.report_folder import write
from reportgen.report_folder.schema import Report as ReportJson
from reportgen.summary_md import summary_markdown

SUMMARY_MD = "summary.md"


def _manifest(report: Report, figures: dict[str, EncodedFigure], arrays_file: str | None) -> dict[str, Any]:
    """report.json of `report` (built by `report_folder.write`, its only writer)."""
    def figure_entry(figure: Figure) -> dict[str, Any]:
        encoded = figures[figure.key]
        return write.figure_entry(figure.key, f"figures/{encoded.file}", figure.title, figure.caption, encoded.width,
                                  encoded.height, encoded.embedded)

    return write.report_dict(
        versions=report.versions, created=report.created, title=report.title, model=report.model,
        options=report.options,
        images=[write.image_entry(image.id, image.name, image.path, image.label, image.original_size,
                                  image.conversion, image.prediction, image.detail) for image in report.images],
        class_names=report.class_names,
        sections=[write.section_entry(section.id, section.kind, section.title, section.layer, section.class_name,
                                      [figure_entry(f) for f in section.figures()], section.data,
                                      section.arrays if arrays_file else None) for section in report.sections],
        warnings=report.warnings, seconds=report.seconds, arrays=arrays_file,
        extra={**({"verdict": [f.to_manifest() for f in report.verdict]} if report.verdict else {}), **report.extra},
    )


def write_report(report: Report, out: Path, force: bool = False, save_arrays: bool = False,
                 encoder: FigureEncoder | None = None) -> Path:
    """Write the report folder atomically; an earlier report at `out` is replaced as a whole."""
    out = check_output_dir(Path(out), force)
    figures = encode_figures(report, encoder)
    note = budget_note(figures, report)
    if note:
        report = dataclasses.replace(report, warnings=(*report.warnings, note))
    arrays: dict[str, np.ndarray] = {}
    if save_arrays:
        for section in report.sections:
            for key, value in section.arrays.items():
                if key in arrays:
                    raise ValueError(f"two arrays share the key {key!r}")
                arrays[key] = np.asarray(value)
    arrays_file = "arrays.npz" if save_arrays else None
    manifest = _manifest(report, figures, arrays_file)
    summary = summary_markdown(ReportJson.from_dict(manifest, f"the report for {out}"))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    watchdog.staging(staging)  # a watching parent removes it if this process dies before the swap
    try:
        (staging / "figures").mkdir()
        for encoded in figures.values():
            (staging / "figures" / encoded.file).write_bytes(encoded.png)
        render_html(report, figures, staging / "index.html")
        write.write_manifest(staging, manifest)
        (staging / SUMMARY_MD).write_text(summary, encoding="utf-8")
        if arrays_file:
            np.savez_compressed(staging / arrays_file, **arrays)
        staging.chmod(0o755)  # mkdtemp makes it private; a report is meant to be read
        swap_into_place(staging, out)
        watchdog.staging(None)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise_if_disk_full(exc, out)
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
