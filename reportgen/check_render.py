"""A check's result as a terminal table, as Markdown for a pull request or `$GITHUB_STEP_SUMMARY`, and as JSON.

The Markdown stays under GitHub's 1 MiB job-summary limit whatever the report holds: each rule lists at most
MAX_ITEMS names, each name is cut at MAX_NAME characters, and the whole is cut at MARKDOWN_LIMIT bytes if it
still were longer. Every name from a model or the images is escaped, so it shows as written, with its control
characters removed (an ESC or BEL in a file name would colour a terminal or a CI log, or ring it) and e-mail
addresses and URLs kept from becoming links.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from reportgen.check import FAIL, NOT_EVALUATED, PASS, CheckResult, RuleResult
from reportgen.summary_md import escape

MARKDOWN_LIMIT = 1024 * 1024  # bytes; GitHub refuses a larger job summary
MAX_ITEMS = 10  # names listed per rule; the JSON has them all
MAX_NAME = 200  # characters of one name or detail item


def format_value(rule: str, value: float | int | bool | None) -> str:
    """A rule's value or threshold as a reader expects it: accuracy and shares as percentages, an accuracy drop in
    percentage points, counts as integers."""
    if value is None:
        return "n/a"
    if rule == "cam_sanity":
        return "every method passes" if isinstance(value, bool) else f"{value} flagged"
    if rule in ("min_accuracy", "max_dead_filters"):
        return f"{value:.1%}"
    if rule == "max_accuracy_drop":
        return f"{100 * value:.1f} pts"
    if rule == "max_deletion_auc_increase":
        return f"{value:+.3f}"
    if rule == "max_flipped_predictions":
        return str(int(value))
    return f"{value:.3f}"  # max_ece, min_cam_correlation


def verdict(result: RuleResult, strict: bool) -> str:
    if result.status == NOT_EVALUATED:
        return "not evaluated (a failure with --strict)" if strict else "not evaluated"
    return result.status


def _threshold(result: RuleResult) -> str:
    if result.rule == "cam_sanity":
        return format_value(result.rule, result.threshold)
    return f"{result.comparison} {format_value(result.rule, result.threshold)}"


def _headline(check: CheckResult) -> str:
    passed, failed, skipped = check.count(PASS), check.count(FAIL), check.count(NOT_EVALUATED)
    state = "passed" if check.passed else "FAILED"
    return f"{state}: {passed} passed, {failed} failed, {skipped} not evaluated"


def table_text(check: CheckResult) -> str:
    """The result as an aligned plain-text table, for the terminal, after the warnings."""
    rows = [("rule", "value", "threshold", "result", "detail")]
    for r in check.results:
        rows.append((r.label, format_value(r.rule, r.value), _threshold(r), verdict(r, check.strict),
                     _cut(r.detail)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)), row[4]]).rstrip()
             for row in rows]
    for r in check.results:
        if r.items and r.status == FAIL:
            lines.append(f"{r.label}: " + "; ".join(_cut(i) for i in r.items[:MAX_ITEMS])
                         + (f"; and {len(r.items) - MAX_ITEMS} more" if len(r.items) > MAX_ITEMS else ""))
    against = f" against {_cut(check.baseline)}" if check.baseline else ""
    lines.append(f"{_cut(check.report)}{against}: {_headline(check)}")
    return "\n".join([*(f"Warning: {_cut(w, MARKDOWN_LIMIT)}" for w in check.warnings), *lines])


def plain(text: object) -> str:
    """`text` on one line without control characters (C0, DEL, C1: ESC, BEL, CSI, ...), which a terminal or a
    CI log would obey rather than show."""
    return " ".join("".join(c for c in str(text) if unicodedata.category(c) != "Cc" or c in "\t\n\r").split())


def _cut(text: str, limit: int = MAX_NAME) -> str:
    text = plain(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# GitHub links e-mail addresses and URLs in plain text, escaped or not; a zero-width space before the "@" and
# after the scheme or "www" breaks the pattern it looks for, and shows nothing.
_EMAIL_AT = re.compile(r"(?<=[\w.+-])@")
_URL_START = re.compile(r"(?i)\b(https?|ftp|www)(?=[:.])")


def _md(text: str, limit: int = MAX_NAME) -> str:
    unlinked = _URL_START.sub("\\1\u200b", _EMAIL_AT.sub("\u200b@", _cut(text, limit)))
    return escape(unlinked)


def markdown(check: CheckResult) -> str:
    """The result as GitHub Markdown: a headline, a table of every rule, the names behind each failure."""
    icon = {PASS: "✅ pass", FAIL: "❌ **fail**", NOT_EVALUATED: "➖ not evaluated"}
    against = f" against {_md(check.baseline)}" if check.baseline else ""
    lines = [f"### reportgen check: {_md(check.report)}{against}", "",
             *(f"> **Warning:** {_md(w, MARKDOWN_LIMIT)}\n" for w in check.warnings),
             f"**{_headline(check)}**" + (" (strict: rules not evaluated fail)" if check.strict else ""), "",
             "| Rule | Value | Threshold | Result | Detail |", "|---|---|---|---|---|"]
    for r in check.results:
        result = icon[r.status] + (" (fails with --strict)" if check.strict and r.status == NOT_EVALUATED else "")
        lines.append(f"| {escape(r.label)} | {escape(format_value(r.rule, r.value))} | {escape(_threshold(r))} | "
                     f"{result} | {_md(r.detail)} |")
    listed = [r for r in check.results if r.items and r.status == FAIL]
    for r in listed:
        lines += ["", f"**{escape(r.label)}**:", ""]
        lines += [f"- {_md(item)}" for item in r.items[:MAX_ITEMS]]
        if len(r.items) > MAX_ITEMS:
            lines.append(f"- and {len(r.items) - MAX_ITEMS} more")
    lines.append("")
    text = "\n".join(lines)
    if len(text.encode("utf-8")) > MARKDOWN_LIMIT:  # not reachable with the caps above; a guard all the same
        cut = text.encode("utf-8")[: MARKDOWN_LIMIT - 200].decode("utf-8", "ignore")
        text = cut[: cut.rfind("\n")] + "\n\n(cut at GitHub's 1 MiB limit; `--json` has every result)\n"
    return text


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def as_json(check: CheckResult) -> dict[str, Any]:
    """The result for machines: every rule with its value, threshold, status and every name behind it."""
    return {
        "passed": check.passed,
        "exit_code": check.exit_code,
        "strict": check.strict,
        "report": {"label": check.report, "path": check.report_path},
        "baseline": {"label": check.baseline, "path": check.baseline_path} if check.baseline_path else None,
        "counts": {PASS: check.count(PASS), FAIL: check.count(FAIL), NOT_EVALUATED: check.count(NOT_EVALUATED)},
        "warnings": list(check.warnings),
        "results": [{"rule": r.rule, "scope": r.scope, "source": r.source, "status": r.status,
                     "value": _json_number(r.value), "threshold": r.threshold, "comparison": r.comparison,
                     "detail": r.detail, "items": list(r.items)} for r in check.results],
    }
