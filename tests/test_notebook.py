"""Reports in a notebook: `ReportResult._repr_html_` is an iframe whose srcdoc is the page, rendered in headless
Chromium (as tests/test_browser.py launches it) exactly as the page itself, with its CSP still in force;
`show(section=...)` is that section alone; `manifest_data` is report.json."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from reportgen.api import ReportResult, generate_report
from reportgen.config import ReportOptions
from reportgen.errors import InputError

WIDTH, HEIGHT = 1000, 700


@pytest.fixture(scope="module")
def report(tmp_path_factory, plain_model, shared_images) -> ReportResult:
    out = tmp_path_factory.mktemp("notebook") / "report"
    options = ReportOptions(sections=("summary", "weights", "predictions", "cam"), cam_methods=("gradcam",),
                            title='A <b>"notebook"</b> & report')
    return generate_report(plain_model, [shared_images], out, options)


def test_manifest_data_is_report_json(report):
    assert report.manifest_data == json.loads(report.manifest.read_text())
    assert report.manifest_data["predictions"][0]["top_k"]


def test_repr_html_is_an_iframe_whose_srcdoc_is_the_page(report):
    frame = report._repr_html_()
    assert frame.startswith("<iframe ") and frame.endswith("</iframe>")
    srcdoc = re.search(r'srcdoc="([^"]*)"', frame)
    assert srcdoc is not None
    assert html.unescape(srcdoc.group(1)) == report.index_html.read_text(encoding="utf-8")
    assert 'sandbox="allow-scripts"' in frame  # the page's script runs, but cannot reach the notebook


def test_show_picks_sections_by_id_kind_or_layer(report):
    page = report.show("predictions")._repr_html_()
    assert 'id="predictions"' in html.unescape(page) and 'id="summary"' not in html.unescape(page)
    by_layer = html.unescape(report.show("conv1")._repr_html_())
    assert 'id="weights-conv1"' in by_layer and 'id="predictions"' not in by_layer
    with pytest.raises(InputError, match="predictions"):
        report.show("no-such-section")


def test_show_a_kind_whose_overview_has_its_name_shows_every_section_of_it(report):
    """The weights overview's id is `weights`: `show("weights")` is still every weights section (issue 26)."""
    ids = [s["id"] for s in report.manifest_data["sections"] if s["kind"] == "weights"]
    assert "weights" in ids and len(ids) > 1
    page = html.unescape(report.show("weights")._repr_html_())
    assert all(f'id="{section_id}"' in page for section_id in ids) and 'id="predictions"' not in page


# ------------------------------------------------------------------------------------------------- Chromium


def _notebook(tmp_path: Path, *cells: str) -> Path:
    """A page standing in for a notebook: each cell's HTML output, the frames sized like the direct page."""
    path = tmp_path / "notebook.html"
    style = (f"body {{margin: 0}} iframe {{width: {WIDTH}px !important; height: {HEIGHT}px !important; "
             "border: 0 !important; display: block}")
    path.write_text(f"<!DOCTYPE html><html><head><style>{style}</style></head><body>{''.join(cells)}</body></html>",
                    encoding="utf-8")
    return path


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    events: list[str] = []
    page.on("console", lambda m: events.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: events.append(f"pageerror: {error}"))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
               else (events.append(f"blocked: {route.request.url}"), route.abort()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, events


def _pixels(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)


@pytest.mark.slow
def test_repr_html_renders_the_same_page_in_chromium(browser, report, tmp_path):
    direct, direct_events = _open(browser, report.index_html)
    inline, inline_events = _open(browser, _notebook(tmp_path, report._repr_html_()))
    frame = inline.frames[1]
    assert frame.evaluate("location.href") == "about:srcdoc"
    # The same document: the same markup after parsing and running the page's script, the same pixels.
    assert frame.content() == direct.content()
    sections = frame.evaluate("document.querySelectorAll('.section').length")
    assert sections == len(report.manifest_data["sections"])
    assert frame.evaluate("getComputedStyle(document.querySelector('.layout')).display") == "grid"  # its CSS ran
    assert frame.inner_text("#theme-toggle") in ("Dark", "Light")  # and its script
    shot_direct, shot_inline = _pixels(direct.screenshot()), _pixels(inline.locator("iframe").screenshot())
    assert shot_direct.shape == shot_inline.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(shot_direct - shot_inline).max() <= 2

    # The page's CSP still holds inside the frame: loading anything from elsewhere is refused.
    violation = frame.evaluate("""() => new Promise(resolve => {
        document.addEventListener('securitypolicyviolation', e => resolve(e.violatedDirective));
        const img = document.createElement('img'); img.src = 'https://example.com/x.png';
        document.body.appendChild(img);
        setTimeout(() => resolve(null), 3000);
    })""")
    assert violation == "img-src"
    # The frame is sandboxed without same-origin: the page cannot reach the notebook around it.
    assert frame.evaluate("(() => { try { return window.parent.document !== null; } catch (e) { return false; } })()") \
        is False

    # Contents links scroll inside the frame instead of loading the notebook's address into it.
    link = frame.eval_on_selector_all(".toc a", "links => links.map(a => a.getAttribute('href'))")[-1]
    frame.click(f".toc a[href='{link}']")
    frame.wait_for_function(
        "id => { const e = document.getElementById(id); const r = e.getBoundingClientRect();"
        " return window.scrollY > 0 && r.top < window.innerHeight && r.bottom > 0; }", arg=link[1:], timeout=5000)
    assert frame.evaluate("location.href") == "about:srcdoc"
    assert direct_events == []
    # Nothing went wrong in the frame but what the probes above provoked.
    assert [e for e in inline_events if "example.com" not in e and "Blocked a frame" not in e] == []
    direct.close()
    inline.close()


@pytest.mark.slow
def test_show_section_renders_that_section_alone(browser, report, tmp_path):
    page, events = _open(browser, _notebook(tmp_path, report.show(section="predictions")._repr_html_()))
    frame = page.frames[1]
    assert frame.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)") == ["predictions"]
    rows = frame.evaluate("document.querySelectorAll('#predictions tbody tr').length")
    assert rows >= len(report.manifest_data["predictions"])
    # Styled by the page's own stylesheet (allowed by its hash, as in the full page).
    assert frame.evaluate("getComputedStyle(document.querySelector('table')).borderCollapse") == "collapse"
    assert events == []
    page.close()
