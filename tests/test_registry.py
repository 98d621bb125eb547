"""A new section kind or CAM method is one entry in `registry` (and its code): added there alone, it is accepted by
the options, built in report order, listed in report.json and drawn on the page."""

from __future__ import annotations

import json
import sys
import types

import pytest

from reportgen import registry
from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.errors import InputError


def _notes_builder(analysis, earlier):
    from reportgen.report import Section, SectionResult, Text

    predicted = "predictions" in earlier  # the kinds it names in `after` come to it
    return SectionResult(
        (Section(id="notes", kind="notes", title="Reviewer notes",
                 blocks=(Text(f"{len(analysis.images.sources)} images; predictions seen: {predicted}"),)),),
        warnings=("notes: a warning of the new kind",),
        manifest={"notes": {"images": len(analysis.images.sources)}},
    )


@pytest.fixture
def notes_kind(monkeypatch):
    """A section kind `notes`, declared in the registry only (its module injected as reportgen.sections.notes)."""
    module = types.ModuleType("reportgen.sections.notes")
    module.build = _notes_builder
    monkeypatch.setitem(sys.modules, "reportgen.sections.notes", module)
    kind = registry.SectionKind("notes", "notes:build", dataset_pass=False, plots=False, embed_rank=0,
                                after=("predictions",))
    monkeypatch.setattr(registry, "SECTIONS", (*registry.SECTIONS, kind))
    return kind


def test_a_section_kind_declared_once_is_built_everywhere(notes_kind, saved_models, image_folder, tmp_path):
    from reportgen.registry import resolve_sections

    assert resolve_sections(["notes", "summary"]) == ("summary", "notes")  # report order: the registry's
    out = tmp_path / "report"
    result = generate_report(saved_models["plain"], [image_folder], out,
                             ReportOptions(sections=("summary", "predictions", "notes")))
    manifest = json.loads((out / "report.json").read_text())
    assert [s["kind"] for s in manifest["sections"]][-1] == "notes"
    assert manifest["notes"] == {"images": 4}
    assert "notes: a warning of the new kind" in manifest["warnings"] == list(result.warnings)
    page = (out / "index.html").read_text()
    assert 'id="notes"' in page and "Reviewer notes" in page and "predictions seen: True" in page
    with pytest.raises(InputError, match="--sections: unknown section nope"):
        resolve_sections(["nope"])


def test_a_cam_method_declared_once_runs_and_is_reported(monkeypatch, saved_models, image_folder, tmp_path):
    info = registry.CamMethodInfo("absgrad", "Absolute gradient", "saliency", "input", "a test's own method",
                                  "one full forward and backward pass")
    with pytest.raises(InputError, match="--cam-methods: 'absgrad' is not one of"):
        ReportOptions(cam_methods=("absgrad",))
    monkeypatch.setattr(registry, "CAM_METHODS", (*registry.CAM_METHODS, info))
    out = tmp_path / "report"
    generate_report(saved_models["plain"], [image_folder], out,
                    ReportOptions(sections=("summary", "cam"), cam_methods=("gradcam", "absgrad"), detail=2))
    manifest = json.loads((out / "report.json").read_text())
    assert {h["method"] for h in manifest["heatmaps"]} == {"gradcam", "absgrad"}
    overview = next(s for s in manifest["sections"] if s["id"] == "cam")
    assert [row["method"] for row in overview["data"]["methods"]] == ["gradcam", "absgrad"]
    assert "Absolute gradient" in (out / "index.html").read_text()
