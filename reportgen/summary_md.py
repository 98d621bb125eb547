"""summary.md: a short Markdown summary of a report for a pull-request comment or a model review.

Built from report.json (`report_folder.schema.Report`, checked), so it says exactly what the report holds: the
model, accuracy on the images, dead filters, the CAM sanity check, for a diff the flipped predictions, and a link to
the full report.
Every name that came from a user (model, layer, class, image) is escaped, so it cannot turn into Markdown or HTML.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from reportgen.report_folder import facts
from reportgen.report_folder.schema import Model, Report

MAX_ITEMS = 10  # names listed per line; the report has the rest
# The characters that can start Markdown or HTML inside a line of text or a table cell (GitHub's Markdown): emphasis,
# code, links and images, raw HTML and entities, table cells, strikethrough, a heading's closing #. Every other
# character is literal where summary.md puts user text (never at the start of a line), so `gradcam++` stays as is.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~&#!])")
_SEVERITY_MARK = {"problem": "❌", "caution": "⚠️", "ok": "✅"}


def escape(text: object) -> str:
    """User-supplied text as literal Markdown: what Markdown would read as markup escaped, line breaks flattened."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_ITEMS])
    return shown + (f", and {len(items) - MAX_ITEMS} more" if len(items) > MAX_ITEMS else "")


def _number(value: object, spec: str) -> str:
    """`value` formatted with `spec`, or "n/a" when it is not a finite number (a NaN or Inf is stored as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return format(value, spec)


def _model_line(model: Model) -> str:
    name = escape(model.name or "model")
    version = f" version {escape(model.version)}" if model.version else ""
    params = f" ({model.params:,} parameters)" if model.params is not None else ""
    return f"{name}{version}{params}"


def _table(rows: Sequence[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)]


def _dead_filters(report: Report) -> str | None:
    patterns = facts.dead_filters(report)
    channels = facts.dead_channels(report)
    parts = []
    if patterns:
        dead = [c for c in patterns if c.count]
        parts.append("filter patterns: " + (_listed([f"{escape(c.layer)} {c.count} of {c.total}" for c in dead])
                                             if dead else f"none of {sum(c.total for c in patterns)} filters"))
    if channels:
        dead = [c for c in channels if c.count]
        parts.append("feature maps (zero on every image): " + (
            _listed([f"{escape(c.layer)} {c.count} of {c.total}" for c in dead]) if dead else "none"))
    return "; ".join(parts) if parts else None


def _cam_sanity(report: Report) -> str | None:
    results = facts.cam_sanity(report)
    if not results:
        return None
    text = ", ".join(
        f"{escape(r.method)} {'passed' if r.passed else '**' + escape(r.status) + '**'}"
        + (f" (rank correlation {r.correlation:.2f} with a randomised model)" if r.correlation is not None else "")
        for r in results
    )
    if any(r.status == "flagged" for r in results):
        text += "; flagged maps barely change when the weights are random"
    if any(r.status == "empty maps" for r in results):
        text += "; empty maps explain nothing"
    return text


def _cam_faithfulness(report: Report) -> str | None:
    methods = facts.cam_faithfulness(report)
    if not methods:
        return None
    parts = []
    for m in methods:
        verdict = "beats random" if m.beats_random else "**no better than a random map**"
        same = f", same maps as {', '.join(escape(x) for x in m.same_maps_as if x != m.method)}" \
            if m.same_maps_as else ""
        parts.append(f"{escape(m.method)} {verdict} (margin {_number(m.margin_over_random, '+.3f')}{same})")
    return "; ".join(parts)


def _report_rows(report: Report) -> list[tuple[str, str]]:
    labelled = sum(1 for i in report.images if i.label)
    rows = [("Model", _model_line(report.model)), ("Images", f"{len(report.images)} ({labelled} labelled)")]
    accuracy = facts.accuracy(report)
    rows.append(("Accuracy on these images", accuracy.text() if accuracy else "n/a"))
    if report.ece is not None:
        rows.append(("Calibration (ECE, 15 bins)", f"{report.ece:.3f}"))
    dead = _dead_filters(report)
    if dead:
        rows.append(("Dead filters", dead))
    sanity = _cam_sanity(report)
    if sanity:
        rows.append(("CAM sanity check", sanity))
    faith = _cam_faithfulness(report)
    if faith:
        rows.append(("CAM deletion / insertion", faith))
    return rows


def _accuracy(value: Mapping[str, Any] | None) -> str:
    if not value:
        return "n/a"
    return f"{_number(value.get('accuracy'), '.1%')} ({value['correct']} of {value['labelled']})"


def _side(info: Mapping[str, Any]) -> str:
    return escape(info.get("name") or "?") + (f" {escape(info['version'])}" if info.get("version") else "")


def _diff_rows(diff: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = [("Compared", f"{_side(diff.get('old') or {})} → {_side(diff.get('new') or {})}"),
            ("Images compared", str(diff.get("images_compared", 0)))]
    predictions = diff.get("predictions")
    if predictions:
        rows.append(("Accuracy on these images",
                     f"{_accuracy(predictions.get('old_accuracy'))} → {_accuracy(predictions.get('new_accuracy'))}"))
        flips = predictions.get("flipped") or []
        listed = [f"{escape(f['image'])} ({escape(f['old'])} → {escape(f['new'])}"
                  + (f", {f['verdict']}" if f.get("verdict") else "") + ")" for f in flips]
        rows.append(("Flipped predictions", f"{len(flips)} of {predictions.get('compared', 0)}"
                     + (": " + _listed(listed) if listed else "")))
    else:
        rows.append(("Flipped predictions", "n/a (no predictions in one of the reports)"))
    weights = diff.get("weights") or {}
    largest = weights.get("largest")
    if weights.get("compared"):
        text = f"{weights['compared']} tensors compared"
        if largest:
            change = _number(largest.get("relative_change"), ".3g")
            text += f"; largest relative change {change} in {escape(largest['layer'])} {escape(largest['tensor'])}"
        rows.append(("Weights", text))
    cams = diff.get("cams")
    if cams:
        lowest = cams.get("lowest") or {}
        mean = cams.get("mean_correlation")
        text = f"{cams['compared']} maps compared, mean correlation {mean:.2f}" if mean is not None else \
            f"{cams['compared']} maps compared"
        if lowest and lowest.get("correlation") is not None:
            text += (f"; lowest {lowest['correlation']:.2f} for {escape(lowest['image'])}, class "
                     f"{escape(lowest['class'])} ({escape(lowest['method'])})")
        rows.append(("CAM change", text))
    not_compared = diff.get("not_compared") or {}
    if not_compared:
        rows.append(("Not compared", "; ".join(f"{escape(what)}: {n['only_old']} only in old, {n['only_new']} only "
                                                f"in new" for what, n in not_compared.items())))
    return rows


def summary_markdown(report: Report, link: str = "index.html") -> str:
    """The Markdown summary of a report (its report.json); `link` is where the full report is, relative to
    summary.md."""
    rows = _diff_rows(report.diff) if report.diff is not None else _report_rows(report)
    if report.warnings:
        rows.append(("Warnings", f"{len(report.warnings)}: " + _listed([escape(w) for w in report.warnings])))
    verdict = [f"- {_SEVERITY_MARK.get(f.severity, '')} **{escape(f.title)}**: {escape(f.evidence)}"
               for f in report.verdict]
    lines = [f"### {escape(report.title or 'reportgen report')}", "", *([*verdict, ""] if verdict else []),
             *_table(rows), "",
             # The creation time and our version are ours (ISO 8601, digits and dots), not a user's names.
             f"[Full report]({link}) · created {report.created or 'n/a'} · "
             f"reportgen {report.versions.get('reportgen', '')}", ""]
    return "\n".join(lines)
