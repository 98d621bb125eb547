"""The demo report in a real browser (Debian's Chromium, headless, network blocked).

Checks what a reader would notice: failed requests, console errors, images that do not decode, contents links that
go nowhere, and a Content-Security-Policy that blocks the page's own style or script. Skips, saying why, where
Chromium or Playwright is missing. REPORTGEN_UPDATE_SCREENSHOT=1 also refreshes the README's screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    from reportgen.api import generate_report
    from reportgen.config import ReportOptions
    from reportgen.example import example_images_dir, example_metadata, example_model_path

    out = tmp_path_factory.mktemp("browser") / "demo"
    generate_report(example_model_path(), [example_images_dir()], out, ReportOptions(),
                    class_names=example_metadata()["class_names"])
    return out


def _open(browser, report: Path, width: int = 1280, height: int = 900, color_scheme: str = "light"):
    # Reduced motion: links jump instead of scrolling smoothly (the page honours the setting), so a check that a
    # target is on screen does not wait on an animation that a loaded machine (the zoo runs beside) can starve.
    page = browser.new_page(viewport={"width": width, "height": height}, color_scheme=color_scheme,
                            reduced_motion="reduce")
    events: dict[str, list[str]] = {"blocked": [], "failed": [], "console": []}

    def route(route):
        url = route.request.url
        if url.startswith(("file://", "data:")):
            route.continue_()
        else:  # the network is blocked: anything leaving the page is a bug
            events["blocked"].append(url)
            route.abort()

    page.route("**/*", route)
    page.on("requestfailed", lambda request: events["failed"].append(request.url))
    page.on("console", lambda message: events["console"].append(f"{message.type}: {message.text}")
            if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: events["console"].append(f"pageerror: {error}"))
    page.goto((report / "index.html").as_uri())
    page.wait_for_load_state("load")
    return page, events


def test_demo_report_in_chromium(browser, demo_report, tmp_path):
    page, events = _open(browser, demo_report)
    # Lazy images load once scrolled to: open every folded section, bring every image into view, then check it
    # decoded.
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    for image in page.query_selector_all("img"):
        image.scroll_into_view_if_needed()
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    broken = page.evaluate("Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.alt)")
    assert page.evaluate("document.images.length") > 5
    assert broken == []

    # The stylesheet and the script ran despite the strict CSP (they are allowed by hash).
    assert page.evaluate("getComputedStyle(document.querySelector('.layout')).display") == "grid"
    assert page.inner_text("#theme-toggle") in ("Dark", "Light")
    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.getAttribute('data-theme')") in ("dark", "light")

    # Every contents link leads to an element that exists and is scrolled into view.
    links = page.eval_on_selector_all(".toc a", "links => links.map(a => a.getAttribute('href'))")
    assert len(links) >= 3
    for href in links:
        page.click(f".toc a[href='{href}']")
        # Scrolling is smooth: wait until the target is on screen.
        page.wait_for_function(
            "id => { const e = document.getElementById(id); if (!e) return false;"
            " const r = e.getBoundingClientRect(); return r.top < window.innerHeight && r.bottom > 0; }",
            arg=href[1:], timeout=15000,
        )

    assert events["blocked"] == [] and events["failed"] == []
    assert events["console"] == []

    shot = tmp_path / "screenshot.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("REPORTGEN_UPDATE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "example_reports" / "shapes-screenshot.png")
    page.close()


def test_phone_width_and_dark_theme(browser, demo_report):
    page, events = _open(browser, demo_report, width=390, height=844, color_scheme="dark")
    # No horizontal scrolling of the page itself on a phone (wide tables scroll inside their own box).
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != "rgb(255, 255, 255)"  # the dark palette applied
    assert events["console"] == [] and events["blocked"] == []
    page.close()


# The goal for the demo's page at 1,400 px: everything a reader needs, sections folded.
DEMO_PAGE_HEIGHT = 20_000


def test_verdict_first_each_figure_once_folded_sections_and_a_lightbox(browser, demo_report):
    html = (demo_report / "index.html").read_text(encoding="utf-8")
    uris = re.findall(r'src="(data:[^"]+)"', html)
    assert uris and len(uris) == len(set(uris)), "a figure appears twice on the page"

    page, events = _open(browser, demo_report, width=1400, height=900)
    assert page.evaluate("document.documentElement.scrollHeight") <= DEMO_PAGE_HEIGHT
    # The first screen shows the verdict and the contents.
    assert page.evaluate("document.getElementById('verdict').getBoundingClientRect().bottom") < 900
    assert page.evaluate("document.querySelector('.toc').getBoundingClientRect().top") < 200

    # A link to a folded section opens it.
    target = page.evaluate("document.querySelector('details.section').id")
    assert not page.evaluate("id => document.getElementById(id).open", target)
    page.click(f".toc a[href='#{target}']")
    page.wait_for_function("id => document.getElementById(id).open", arg=target)

    # A click on a figure shows it at its full size over the page; Escape closes it.
    image = page.query_selector("section.section img.zoomable")
    image.scroll_into_view_if_needed()
    image.click()
    page.wait_for_selector("#lightbox:not([hidden]) img")
    shown = page.evaluate("document.querySelector('#lightbox img').getBoundingClientRect().width")
    assert shown == pytest.approx(page.evaluate("document.querySelector('#lightbox img').naturalWidth"), abs=1)
    page.keyboard.press("Escape")
    assert page.evaluate("document.getElementById('lightbox').hidden")
    assert events["console"] == [] and events["blocked"] == []
    page.close()
