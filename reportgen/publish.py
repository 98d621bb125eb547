"""`publish_report`: add a report folder to a static site of every model and version (GitHub Pages ready).

SITE/<model>/<version>/ holds a copy of the report; SITE/index.html lists every published version, rebuilt each
time from the report.json files found in SITE, so it always matches the folders and the same site gives the same
bytes. Reading and deciding happen here; `render.write_site` does the writing.
"""

from __future__ import annotations

import filecmp
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

from reportgen.errors import InputError
from reportgen.outlock import output_lock
from reportgen.render import (
    SUMMARY_MD,
    check_writable_target,
    is_site_index,
    render_site_index,
    sweep_leftovers,
    write_site,
)
from reportgen.report import slugify
from reportgen.report_folder import facts, read
from reportgen.report_folder.schema import MANIFEST, Report

SITE_TITLE = "Model reports"


@dataclass(frozen=True)
class PublishResult:
    site: Path
    target: Path  # SITE/<model>/<version>
    changed: bool  # False when exactly this report was already published there
    warnings: tuple[str, ...] = ()  # e.g. reports in SITE whose report.json could not be listed

    @property
    def index_html(self) -> Path:
        return self.site / "index.html"

    @property
    def report_html(self) -> Path:
        return self.target / "index.html"


def version_slug(text: str, fallback: str = "version") -> str:
    """A version as one safe path segment: lower-case letters, digits, dots and dashes (`V1.2 rc/1` ->
    `v1.2-rc-1`); never empty, never `.` or `..`, never starting with a dot."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9.]+", "-", ascii_text)
    slug = re.sub(r"\.{2,}", ".", slug).strip(".-")[:80].strip(".-")
    return slug or fallback


def _default_version(report: Report) -> str:
    if report.model.version:
        return report.model.version
    return (report.created or "")[:10] or "unversioned"


def _files(folder: Path) -> list[str]:
    """Regular files below `folder`, hidden ones aside; a link is listed (so two trees differ) but never read."""
    return sorted(p.relative_to(folder).as_posix() + ("@" if p.is_symlink() else "") for p in folder.rglob("*")
                  if (p.is_symlink() or p.is_file())
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def same_tree(a: Path, b: Path) -> bool:
    """True when the two folders hold the same files (hidden ones aside) with the same bytes."""
    if not (a.is_dir() and b.is_dir()):
        return False
    files = _files(a)
    return (files == _files(b) and not any(f.endswith("@") for f in files)
            and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files))


_PAGE = "index.html"
_FIGURE_FILE = re.compile(r"figures/[^/\\]+\.png")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Every source a report page's Content-Security-Policy may allow: nothing to fetch, data: images, and its own style
# and script by hash. A page whose policy allows anything else (or has none) is not a page generate wrote.
_CSP_SOURCE = re.compile(r"'none'|data:|'sha(?:256|384|512)-[A-Za-z0-9+/_=-]+'")
_PAGE_HEAD_BYTES = 64 * 1024


def report_files(folder: read.ReportFolder) -> list[str]:
    """The files `generate` (or `diff`) writes in a report folder, as report.json names them: the page, the
    manifest, summary.md, arrays.npz and every figure. Publishing copies a report only when it holds these and
    nothing else (InputError otherwise), and only when its page carries the report's strict CSP."""
    where = f"REPORT: {folder.path}"
    expected = {_PAGE, MANIFEST}
    if (folder.path / SUMMARY_MD).exists():
        expected.add(SUMMARY_MD)
    arrays = folder.report.arrays
    if arrays is not None:
        if not re.fullmatch(r"[\w.-]+\.npz", arrays):
            raise InputError(f"{where}: report.json names the arrays file {arrays[:80]!r}, not a file "
                             "generate writes; regenerate the report")
        expected.add(arrays)
    for section in folder.report.sections:
        for figure in section.figures:
            if not (_FIGURE_FILE.fullmatch(figure.file) and ".." not in figure.file):
                raise InputError(f"{where}: report.json names the figure file {figure.file[:80]!r}, not a file "
                                 "generate writes (figures/NAME.png); regenerate the report")
            expected.add(figure.file)
    present = {p.relative_to(folder.path).as_posix() for p in folder.path.rglob("*") if not p.is_dir()}
    missing, extra = sorted(expected - present), sorted(present - expected)
    for label, names, advice in (("lacks", missing, "regenerate the report"),
                                 ("holds files generate does not write", extra,
                                  "publish copies only a report's own files: remove them or regenerate the report")):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise InputError(f"{where} {label}: {shown}; {advice}")
    for file in sorted(f for f in expected if f.startswith("figures/")):
        with open(folder.path / file, "rb") as handle:
            if handle.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
                raise InputError(f"{where}: {file} is not a PNG image; regenerate the report")
    _check_page(folder.path / _PAGE, where)
    return sorted(expected)


class _PageHead(HTMLParser):
    """Reads a page's start up to its Content-Security-Policy <meta>; anything that could run or load before it
    (a script, a link, an iframe, a base) is noted."""

    ALLOWED_BEFORE = frozenset({"html", "head", "meta", "title"})

    def __init__(self) -> None:
        super().__init__()
        self.policy: str | None = None
        self.before: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.policy is not None:
            return
        values = dict(attrs)
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "content-security-policy":
            self.policy = values.get("content") or ""
        elif tag not in self.ALLOWED_BEFORE or (tag == "meta" and values.get("http-equiv")):
            self.before.append(tag)


def _check_page(page: Path, where: str) -> None:
    """InputError unless `page` starts with a Content-Security-Policy that allows only hashed scripts and styles
    and data: images, before anything else that could run."""
    with open(page, "rb") as handle:
        head = handle.read(_PAGE_HEAD_BYTES).decode("utf-8", "replace")
    parser = _PageHead()
    parser.feed(head)
    policy = parser.policy
    problem = None
    if policy is None or parser.before:
        problem = "has no Content-Security-Policy before its first " + (parser.before[0] if parser.before else
                                                                          "script")
    else:
        directives = {}
        for part in policy.split(";"):
            words = part.split()
            if words:
                directives[words[0].lower()] = words[1:]
        loose = sorted({w for words in directives.values() for w in words if not _CSP_SOURCE.fullmatch(w)})
        if directives.get("default-src") != ["'none'"]:
            problem = "has a Content-Security-Policy without default-src 'none'"
        elif loose:
            problem = f"has a Content-Security-Policy that allows {', '.join(loose[:3])}"
    if problem:
        raise InputError(f"{where}: its {_PAGE} {problem}, so it is not a page reportgen generate wrote (whose "
                         "policy runs only its own script); regenerate the report")


def _entry(model_slug: str, version: str, report: Report, has_summary: bool) -> dict[str, Any]:
    model = report.model
    accuracy = facts.accuracy(report)
    params = model.params
    # Only the folder names go into the link, each percent-encoded (`javascript:x` -> `javascript%3Ax`),
    # so a link is always a relative path inside the site (no scheme, no host), whatever a folder is called.
    href = f"{quote(model_slug, safe='')}/{quote(version, safe='')}/"
    return {
        "model": model_slug, "name": model.name or "", "label": version,
        "href": href + "index.html", "summary": href + SUMMARY_MD if has_summary else None,
        "title": report.title or "", "created": report.created or "",
        "date": (report.created or "")[:10] or "n/a", "images": len(report.images),
        "accuracy": accuracy.text() if accuracy else "n/a",
        "params": f"{params:,}" if params is not None else "n/a",
    }


def site_entries(site: Path, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """Every report published in `site` (SITE/<model>/<version>/report.json written by reportgen). A report
    whose report.json cannot be listed is skipped, with a warning appended to `warnings`; links are not
    followed."""
    found = []
    if not site.is_dir():
        return found

    def folders(parent: Path) -> list[Path]:
        return sorted(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))

    for model_dir in folders(site):
        for version_dir in folders(model_dir):
            manifest = read.read_manifest(version_dir)
            if manifest is None:
                continue
            where = f"{model_dir.name}/{version_dir.name}"
            try:
                found.append(_entry(model_dir.name, version_dir.name, Report.from_dict(manifest, where),
                                    (version_dir / SUMMARY_MD).is_file()))
            except InputError as exc:
                if warnings is not None:
                    warnings.append(f"skipped {where} in the site index: its report.json is malformed ({exc})")
    return found


def group_models(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries grouped per model (by slug), newest version first; a fixed order, so the same site gives the same
    page."""
    models: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        models.setdefault(entry["model"], []).append(entry)
    out = []
    for slug in sorted(models):
        versions = sorted(models[slug], key=lambda e: (e["created"], e["label"]), reverse=True)
        names = sorted({e["name"] for e in versions if e["name"] and e["name"] != slug})
        out.append({"slug": slug, "names": names, "versions": versions})
    return out


def publish_report(report: str | Path, site: str | Path, *, name: str | None = None, version: str | None = None,
                   force: bool = False) -> PublishResult:
    """Copy the report folder `report` to SITE/<model>/<version>/ and rebuild SITE/index.html.

    `name` defaults to the model's name in report.json, `version` to its version or else the creation date.
    A different report already published under the same model and version is replaced only with `force`.
    """
    folder = read.read_report(report, "REPORT")
    report_files(folder)
    site = Path(site)
    if site.exists() and not site.is_dir():
        raise InputError(f"SITE: {site} is a file; give a folder for the site")
    if site.resolve().is_relative_to(folder.path.resolve()):
        raise InputError(f"SITE: {site} is inside the report {folder.path}; choose a folder outside it")
    index = site / "index.html"
    if index.exists() and not is_site_index(index) and not force:
        raise InputError(f"SITE: {index} exists and was not written by reportgen publish; choose another folder or "
                         "pass --force to replace that index.html")
    model_slug = slugify(name or folder.report.model.name or "", "model")
    version_text = version or _default_version(folder.report)
    version_dir = version_slug(version_text)
    target = site / model_slug / version_dir
    resolved = check_writable_target(target, "SITE")
    # One publish at a time into this version; the lock also removes SITE/NAME/ (and SITE) again when this run
    # created them and fails before anything is in them (a full disk).
    with output_lock(resolved, "SITE"):
        return _publish(folder, site, target, model_slug, version_dir, force)


def _publish(folder: read.ReportFolder, site: Path, target: Path, model_slug: str, version_dir: str,
             force: bool) -> PublishResult:
    sweep_leftovers(target)

    already_there = target.resolve() == folder.path.resolve() or same_tree(folder.path, target)
    if target.exists() and not already_there and not force:
        raise InputError(f"{model_slug}/{version_dir} is already published in {site} with other content; pass "
                         "--force to replace it, or publish under another --version")
    warnings: list[str] = []
    entries = [e for e in site_entries(site, warnings) if (e["model"], e["label"]) != (model_slug, version_dir)]
    entries.append(_entry(model_slug, version_dir, folder.report, (folder.path / SUMMARY_MD).is_file()))
    html = render_site_index(SITE_TITLE, group_models(entries))
    write_site(site, html, None if already_there else folder.path, target)
    return PublishResult(site, target, changed=not already_there, warnings=tuple(warnings))
