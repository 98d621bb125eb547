"""`reportgen publish`: a versioned static site whose links resolve, that never loses a published version and
gives the same bytes when run twice; and summary.md, the Markdown summary beside every report."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.errors import InputError
from reportgen.publish import publish_report, version_slug
from reportgen.report_folder import facts, read
from reportgen.report_folder.schema import Report
from reportgen.summary_md import escape, summary_markdown

FAST = ReportOptions(sections=("summary", "predictions"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory, keras, saved_models, shared_images) -> dict[str, Path]:
    """Two versions of two models (the second plain version is another model file: other weights)."""
    from conftest import build_plain_model

    folder = tmp_path_factory.mktemp("publish")
    other = folder / "plain-v2.keras"
    build_plain_model(keras, seed=5).save(other)
    out = {}
    for key, model, version in (("plain-1", saved_models["plain"], "1.0"), ("plain-2", other, "2.0"),
                                ("nested-1", saved_models["nested"], "1.0"), ("nested-2", saved_models["nested"],
                                                                              "2.0")):
        out[key] = folder / key
        generate_report(model, [shared_images], out[key], ReportOptions(sections=FAST.sections, model_version=version))
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.meta: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "meta" and "http-equiv" in attrs:
            self.meta[attrs["http-equiv"]] = attrs["content"]


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _snapshot(site: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(site).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in site.rglob("*")
            if p.is_file()}


def test_site_of_two_models_and_two_versions_links_resolve(reports, tmp_path):
    site = tmp_path / "site"
    for key, report in reports.items():
        result = publish_report(report, site)
        assert result.changed and result.target == site / key.split("-")[0] / f"{key.split('-')[1]}.0"
    assert (site / ".nojekyll").is_file()
    links = _parse(site / "index.html")
    pages = [h for h in links.hrefs if not h.startswith("#")]
    assert len([h for h in pages if h.endswith("/index.html")]) == 4
    for href in links.hrefs:
        parts = urlsplit(href)
        assert not parts.scheme and not parts.netloc and not href.startswith("/"), href  # relative only
        if parts.path:
            target = (site / unquote(parts.path)).resolve()
            assert target.is_relative_to(site.resolve()) and target.is_file(), href
        if parts.fragment:
            assert parts.fragment in (_parse(site / parts.path).ids if parts.path else links.ids), href
    # The index lists each version with its accuracy from its own report.json, newest first.
    html = (site / "index.html").read_text()
    for report in reports.values():
        accuracy = facts.accuracy(read.read_report(report).report)
        assert accuracy is not None and accuracy.text() in html
        # Its row: version link, creation date, images, accuracy and parameters, from its own report.json.
        manifest = json.loads((report / "report.json").read_text())
        version = manifest["model"]["version"]
        href = f"{manifest['model']['name']}/{version}/index.html"
        [row] = [r for r in re.findall(r"<tr[ >](.*?)</tr>", html, re.S) if f'href="{href}"' in r]
        assert f"<td>{manifest['created'][:10]}</td>" in row and f"<td>{len(manifest['images'])}</td>" in row
        assert f"<td>{accuracy.text()}</td>" in row or accuracy.text() in row
        assert f"<td>{manifest['model']['params']:,}</td>" in row
    assert html.index('href="plain/2.0/index.html"') < html.index('href="plain/1.0/index.html"')
    # Self-contained like a report: inline style and script allowed by hash, nothing else.
    csp = links.meta["Content-Security-Policy"]
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert "default-src 'none'" in csp and f"'sha256-{digest}'" in csp
    assert not re.search(r"(?:https?|ftp|wss?)://", html, re.I)


def test_publishing_twice_changes_nothing(reports, tmp_path, cli):
    site = tmp_path / "site"
    publish_report(reports["plain-1"], site)
    publish_report(reports["nested-1"], site, name="My Nested", version="v1 beta")
    before = _snapshot(site)
    assert "my-nested/v1-beta/index.html" in before
    again = publish_report(reports["nested-1"], site, name="My Nested", version="v1 beta")
    assert not again.changed
    result = cli("publish", reports["plain-1"], site, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(site / "index.html")
    assert _snapshot(site) == before  # same bytes, not even rewritten


def test_a_published_version_is_replaced_only_with_force(reports, tmp_path, cli):
    site = tmp_path / "site"
    publish_report(reports["plain-1"], site)
    before = _snapshot(site)
    result = cli("publish", reports["plain-2"], site, "--version", "1.0")
    assert result.exit_code == 2 and "--force" in result.output and "Traceback" not in result.output
    assert _snapshot(site) == before
    result = cli("publish", reports["plain-2"], site, "--version", "1.0", "--force", "--quiet")
    assert result.exit_code == 0, result.output
    copied = json.loads((site / "plain" / "1.0" / "report.json").read_text())
    assert copied == json.loads((reports["plain-2"] / "report.json").read_text())
    assert [p.name for p in (site / "plain").iterdir()] == ["1.0"]  # no staging or retired folder left


def test_names_cannot_leave_the_site(reports, tmp_path):
    site = tmp_path / "site"
    result = publish_report(reports["plain-1"], site, name="../../<b>evil", version="../..")
    assert result.target.resolve().is_relative_to(site.resolve())
    assert result.target.relative_to(site).as_posix() == "b-evil/version"
    assert "<b>" not in (site / "index.html").read_text()
    assert version_slug("V1.2 rc/1") == "v1.2-rc-1" and version_slug("...") == "version"
    assert version_slug(".hidden") == "hidden"


def test_bad_sites_and_reports_are_refused(reports, tmp_path, cli):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my own page</h1>")
    result = cli("publish", reports["plain-1"], site)
    assert result.exit_code == 2 and "index.html" in result.output
    assert (site / "index.html").read_text() == "<h1>my own page</h1>"
    with pytest.raises(InputError, match="not a reportgen report"):
        publish_report(tmp_path, tmp_path / "elsewhere")
    with pytest.raises(InputError, match="inside the report"):
        publish_report(reports["plain-1"], reports["plain-1"] / "site")


def test_summary_md_lists_model_accuracy_and_links_the_report(reports):
    text = (reports["plain-1"] / "summary.md").read_text()
    manifest = json.loads((reports["plain-1"] / "report.json").read_text())
    accuracy = facts.accuracy(Report.from_dict(manifest))
    assert f"| Accuracy on these images | {accuracy.text() if accuracy else 'n/a'} |" in text
    assert "[Full report](index.html)" in text and "version 1.0" in text
    assert text == summary_markdown(Report.from_dict(manifest))


def test_summary_md_reports_the_cam_sanity_check_and_dead_filters(plain_model, shared_images, tmp_path):
    options = ReportOptions(sections=("predictions", "filter_patterns", "cam"), steps=3, filters=2,
                            cam_methods=("gradcam", "saliency"))
    result = generate_report(plain_model, [shared_images], tmp_path / "report", options)
    manifest = json.loads(result.manifest.read_text())
    text = (tmp_path / "report" / "summary.md").read_text()
    checks = {s["data"]["method"]: s["data"]["sanity"] for s in manifest["sections"]
              if s["kind"] == "cam" and s.get("data", {}).get("sanity")}
    assert set(checks) == {"gradcam", "saliency"}
    line = next(line for line in text.splitlines() if "randomised model" in line)
    for method, check in checks.items():
        verdict = "**flagged**" if check["flagged"] else "passed"
        assert f"{escape(method)} {verdict} (rank correlation {check['correlation']:.2f}" in line
    dead = sum(e["dead"] for e in manifest["filter_patterns"] if e["direction"] == "ascent")
    patterns_line = next(line for line in text.splitlines() if "filter patterns:" in line)
    assert (f"none of {len(manifest['filter_patterns']) // 2} filters" in patterns_line) == (dead == 0)


def test_summary_md_escapes_names():
    hostile = "*bold* [link](http://x) <script>|`code`_@user"
    # What Markdown reads as markup comes out backslash-escaped, and nothing else: a CommonMark renderer gives
    # the name back as literal text, and `gradcam++` stays as it is.
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").render(escape(hostile))
    assert rendered == f"<p>{html.escape(hostile, quote=False)}</p>\n"
    assert escape("gradcam++") == "gradcam++"
    manifest = {"title": hostile, "model": {"name": hostile, "version": "1\n# heading"}, "images": [],
                "created": "2023-11-14T22:13:20Z", "versions": {"reportgen": "0"},
                "filter_patterns": [{"layer": hostile, "filter": 0, "direction": "ascent", "dead": True,
                                     "array_key": None}]}
    text = summary_markdown(Report.from_dict(manifest))
    for raw in ("<script>", "*bold*", "[link]", "`code`", "|`", "\n# heading"):
        assert raw not in text
    assert text.count(escape(hostile)) == 3  # title, model name and layer name, each escaped whole
    assert "Dead filters" in text and "1 of 1" in text


def test_published_copy_is_the_report(reports, tmp_path):
    site = tmp_path / "site"
    result = publish_report(reports["nested-2"], site)
    assert sorted(p.relative_to(result.target) for p in result.target.rglob("*")) == sorted(
        p.relative_to(reports["nested-2"]) for p in reports["nested-2"].rglob("*"))


@pytest.mark.parametrize("kind", ["file", "folder", "fifo"])
def test_links_in_a_report_are_refused_and_nothing_outside_is_read(reports, tmp_path, cli, kind):
    import os
    import shutil

    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "key.txt").write_text("SECRET-CONTENT-42")
    report = tmp_path / "report"
    shutil.copytree(reports["plain-1"], report)
    if kind == "file":
        (report / "figures" / "x.png").symlink_to(secret / "key.txt")
    elif kind == "folder":
        (report / "extra").symlink_to(secret, target_is_directory=True)
    else:
        os.mkfifo(report / "figures" / "pipe.png")
    site = tmp_path / "site"
    result = cli("publish", report, site)
    assert result.exit_code == 2, result.output
    assert ("link" in result.output or "not a regular file" in result.output) and "Traceback" not in result.output
    assert ("x.png" in result.output) or ("extra" in result.output) or ("pipe.png" in result.output)
    for path in site.rglob("*") if site.exists() else []:
        if path.is_file():
            assert b"SECRET-CONTENT-42" not in path.read_bytes()


def test_site_index_hrefs_are_safe_relative_paths(reports, tmp_path):
    import shutil

    site = tmp_path / "site"
    publish_report(reports["plain-1"], site)
    hostile = site / "javascript:alert(7)" / "1.0"
    shutil.copytree(reports["nested-1"], hostile)
    publish_report(reports["plain-2"], site)
    links = _Links()
    links.feed((site / "index.html").read_text())
    assert links.hrefs
    for href in links.hrefs:
        parts = urlsplit(href)
        assert not parts.scheme and not parts.netloc and not href.startswith("/"), href
        if not href.startswith("#"):
            assert (site / unquote(parts.path)).exists(), href


def test_a_malformed_report_in_the_site_is_skipped_with_a_warning(reports, tmp_path, cli):
    site = tmp_path / "site"
    publish_report(reports["plain-1"], site)
    broken = site / "broken" / "1.0"
    broken.mkdir(parents=True)
    (broken / "report.json").write_text(json.dumps({"generator": "reportgen", "model": "x", "images": 5,
                                                    "created": 7}))
    result = cli("publish", reports["plain-2"], site)
    assert result.exit_code == 0, result.output
    assert "broken/1.0" in result.output and "skipped" in result.output
    assert "plain" in (site / "index.html").read_text()


@pytest.mark.parametrize("content", ["nested", "typed"])
def test_deeply_nested_or_wrongly_typed_report_json_is_exit_2(reports, tmp_path, cli, content):
    import shutil

    report = tmp_path / "report"
    shutil.copytree(reports["plain-1"], report)
    if content == "nested":
        text = '{"generator": "reportgen", "model": ' + "[" * 100000 + "]" * 100000 + "}"
    else:
        manifest = json.loads((report / "report.json").read_text())
        manifest["images"] = [{"id": 3, "name": None}]
        manifest["sections"] = "all"
        text = json.dumps(manifest)
    (report / "report.json").write_text(text)
    for args in (["publish", report, tmp_path / "site"], ["diff", report, reports["plain-2"], "-o", tmp_path / "d"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "report.json" in result.output and "Traceback" not in result.output


def test_publish_on_a_full_disk_is_one_short_message(reports, tmp_path, cli, monkeypatch):
    import errno
    import shutil

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copy2", full)
    result = cli("publish", reports["plain-1"], tmp_path / "site")
    assert result.exit_code == 2, result.output
    assert "no space left on device" in result.output and len(result.output) < 500
    assert not any(p.is_file() for p in (tmp_path / "site").rglob("*") if "plain" in str(p))
