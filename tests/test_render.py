"""The output folder: self-contained HTML, escaping, anchors, atomic writes, replacing only earlier reports."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from reportgen.api import generate_report
from reportgen.config import ReportOptions
from reportgen.errors import OutputError
from reportgen.render import write_report

HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory, keras):
    """A model, class names and an image file whose names try to inject HTML."""
    folder = tmp_path_factory.mktemp("hostile")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name=HOSTILE)(inputs)
    x = keras.layers.Conv2D(4, 3, name='q"uote\'s & β')(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="out")(keras.layers.GlobalAveragePooling2D()(x))
    model_path = folder / "hostile.keras"
    keras.Model(inputs, outputs, name="m<b>odel").save(model_path)
    images = folder / "images" / "<script>alert('class')<%2Fscript>"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / '"><svg onload=alert(2)>.png'), np.full((16, 16, 3), 90, np.uint8))
    cv2.imwrite(str(images / "..\\..\\escape.png"), np.full((16, 16, 3), 160, np.uint8))  # a Windows path
    names = folder / "names.txt"
    names.write_text("</table><script>alert(3)</script>\n../../dog & cat\n")
    out = folder / "report"
    generate_report(model_path, [folder / "images"], out, ReportOptions(class_names=names, save_arrays=True,
                                                                        title="<h1>title</h1>"))
    return out


def test_hostile_names_are_escaped(hostile_report):
    html = (hostile_report / "index.html").read_text()
    for raw in (HOSTILE, "<script>alert", "<svg onload", "<h1>title</h1>", "</table><script>", "m<b>odel"):
        assert raw not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert "&lt;h1&gt;title&lt;/h1&gt;" in html
    # The only script element is the page's own.
    assert html.count("<script") == 1


def test_hostile_names_cannot_leave_the_output_folder(hostile_report):
    files = sorted(p.relative_to(hostile_report).as_posix() for p in hostile_report.rglob("*") if p.is_file())
    allowed = r"(figures/[a-z0-9-]+\.png|index\.html|report\.json|summary\.md|arrays\.npz)"
    assert all(re.fullmatch(allowed, f) for f in files)
    manifest = json.loads((hostile_report / "report.json").read_text())
    layers = [s.get("layer") for s in manifest["sections"] if s.get("layer")]
    assert HOSTILE in layers  # the manifest keeps the real name; only files and anchors are slugs


class _Elements(HTMLParser):
    """Collects every start tag and its attributes, as a browser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained(hostile_report):
    html = (hostile_report / "index.html").read_text()
    parser = _Elements()
    parser.feed(html)
    urls = [value for _, attrs in parser.tags for key, value in attrs.items()
            if key in ("src", "href", "action", "srcset", "poster", "data")]
    assert urls, "expected some links and images"
    for url in urls:
        assert url.startswith(("data:image/png;base64,", "data:image/webp;base64,", "#", "figures/")), url
        if url.startswith("figures/"):  # a linked figure: a plain file name inside figures/
            assert re.fullmatch(r"figures/[A-Za-z0-9._-]+\.png", url) and ".." not in url, url
    assert {tag for tag, _ in parser.tags}.isdisjoint({"link", "iframe", "object", "embed", "form", "svg"})
    assert not re.search(r"(?:https?|ftp|wss?)://", html, re.I)
    assert "@import" not in html and "url(" not in html
    csp = next(attrs["content"] for tag, attrs in parser.tags
               if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src data:" in csp and "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp and "connect-src" not in csp  # no eval, nothing sent anywhere
    script = html[html.index("<script>") + len("<script>"):html.index("</script>")]
    assert not re.search(r"\beval\s*\(|new\s+Function|setTimeout\s*\(\s*['\"]|innerHTML|fetch\s*\(", script)


def test_without_save_arrays_no_key_points_at_a_missing_file(plain_model, shared_images, tmp_path):
    out = tmp_path / "report"
    generate_report(plain_model, [shared_images], out, ReportOptions(
        sections=("weights", "feature_maps", "filter_patterns", "cam"), steps=2, filters=2))
    text = (out / "report.json").read_text()
    assert not (out / "arrays.npz").exists()
    assert json.loads(text)["arrays"] is None
    assert not re.search(r'"array_keys?": [^n]', text)  # every one is null


@pytest.mark.parametrize("name,slug", [("../../x", "x"), ("..\\..\\x", "x"), ("/etc/passwd", "etc-passwd"),
                                       ("Café 1/β", "cafe-1"), ("..", "item"), ("", "item")])
def test_slugs_are_safe_file_names(name, slug):
    from reportgen.report import slugify

    assert slugify(name) == slug


def test_manifest_has_the_documented_keys_and_real_array_keys(hostile_report):
    manifest = json.loads((hostile_report / "report.json").read_text())
    assert {"schema_version", "versions", "created", "model", "options", "images", "class_names", "sections",
            "warnings", "seconds"} <= set(manifest)
    assert {"reportgen", "tensorflow", "keras"} <= set(manifest["versions"])
    assert manifest["options"]["save-arrays"] is True and manifest["arrays"] == "arrays.npz"
    assert set(manifest["seconds"]) == set(manifest["options"]["sections"])
    assert [image["name"] for image in manifest["images"]] == [
        '<script>alert(\'class\')<%2Fscript>/"><svg onload=alert(2)>.png',
        "<script>alert('class')<%2Fscript>/..\\..\\escape.png"]
    for section in manifest["sections"]:
        assert {"id", "kind", "title", "figures"} <= set(section)

    # Every array key anywhere in report.json names an array that is really in arrays.npz.
    def keys(value):
        if isinstance(value, dict):
            for name, item in value.items():
                if name == "array_key" and item is not None:
                    yield item
                elif name == "array_keys" and item is not None:
                    yield from item.values()
                else:
                    yield from keys(item)
        elif isinstance(value, list):
            for item in value:
                yield from keys(item)

    named = set(keys(manifest))
    with np.load(hostile_report / "arrays.npz") as arrays:
        assert named and named <= set(arrays.files)


def test_every_figure_is_a_png_with_a_readable_name_and_inline(hostile_report):
    """figures/ holds lossless PNGs; the page embeds each figure as that PNG or, where it is much smaller, a WebP
    that decodes to nearly the same pixels."""
    import base64

    manifest = json.loads((hostile_report / "report.json").read_text())
    html = (hostile_report / "index.html").read_text()
    figures = [f for s in manifest["sections"] for f in s["figures"]]
    assert figures
    embedded = dict(re.findall(r'<figure class="figure" id="([^"]+)">\s*<img src="data:image/[a-z]+;base64,([^"]+)"',
                               html))
    for figure in figures:
        png = (hostile_report / figure["file"]).read_bytes()
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape[:2] == (figure["height"], figure["width"])
        assert figure["embedded"]
        page = cv2.imdecode(np.frombuffer(base64.b64decode(embedded[figure["key"]]), np.uint8), cv2.IMREAD_COLOR)
        assert page.shape == decoded.shape
        assert np.abs(page.astype(int) - decoded.astype(int)).mean() < 3


def test_figures_past_the_page_budget_are_linked_not_embedded(monkeypatch):
    from reportgen import render
    from reportgen.report import Figure, Report, Section

    rng = np.random.default_rng(0)
    noise = [Figure(f"noise-{i}", f"noise {i}", "", render.encode_image(rng.integers(0, 255, (64, 64, 3), np.uint8)))
             for i in range(6)]
    report = Report(title="t", created="", model={}, options={}, images=(), class_names=(), sections=(
        Section(id="s", kind="summary", title="s", blocks=tuple(noise)),), warnings=(), seconds={}, versions={})
    size = render.encode_figures(report)["noise-0"].page_bytes
    monkeypatch.setattr(render.page, "PAGE_BUDGET", int(3.5 * size))
    encoded = render.encode_figures(report)
    assert [f.embedded for f in encoded.values()] == [True, True, True, False, False, False]
    note = render.budget_note(encoded, report)
    assert note.startswith("page size: 3 figures") and "noise-3" in note and "10 MB" in note


def test_the_background_encoder_gives_the_same_bytes_and_bounds_its_backlog(monkeypatch):
    """Figures encoded on the pool equal those encoded in line; a page-less figure gets no WebP; a builder
    handing in figures faster than they are encoded waits once their pixels fill ENCODER_BACKLOG_BYTES, and a
    figure larger than that alone still gets in."""
    import threading
    import time

    from reportgen import render

    rng = np.random.default_rng(2)
    pictures = [rng.integers(0, 255, (96, 128, 3), np.uint8) for _ in range(6)]
    with render.FigureEncoder(workers=2) as encoder:
        pending = [encoder(p) for p in pictures] + [encoder(pictures[0], page=False)]
    done = [p.result() for p in pending]
    assert done[:6] == [render.encode_image(p) for p in pictures]
    assert done[6].png == done[0].png and done[6].page == done[6].png  # linked: its PNG only
    with pytest.raises(ValueError, match="uint8"):
        render.FigureEncoder(workers=1)(np.zeros((4, 4, 3), np.float32))

    release, encode = threading.Event(), render.encode_image

    def slow(pixels, page=True):
        release.wait(10)
        return encode(pixels, page)

    monkeypatch.setattr(render.encode, "encode_image", slow)
    monkeypatch.setattr(render.encode, "ENCODER_BACKLOG_BYTES", 5 * pictures[0].nbytes + 1)
    encoder = render.FigureEncoder(workers=1)
    handed = []
    feeder = threading.Thread(target=lambda: [handed.append(encoder(pictures[0])) for _ in range(40)])
    feeder.start()
    time.sleep(0.5)
    assert len(handed) == 5  # the rest wait for room
    release.set()
    feeder.join(10)
    large = np.concatenate(pictures)  # six times the bound
    assert encoder(large).result().png == encode(large).png
    encoder.close()
    assert len(handed) == 40 and all(p.result().png == done[0].png for p in handed)


def test_plots_drawn_by_the_worker_process_equal_inline_ones_and_its_errors_surface():
    """`FigureEncoder.plot` hands a plot to the plotting worker (another process) and returns at once; the figure
    encodes to the bytes of one drawn in line, a plot that fails raises where its figure is read, and only
    `figures.plot_*` functions can be asked for."""
    from reportgen import figures, render

    matrix, labels = np.array([[3, 1], [0, 4]]), ["cat", "dog <b>"]
    with render.FigureEncoder(workers=1, plots=True) as encoder:
        worker = encoder._plots._process
        assert worker is not None and worker.poll() is None
        pending = encoder.plot(figures.plot_matrix, matrix, labels, labels, "t", "x", "y")
        failing = encoder.plot(figures.plot_matrix, matrix, ["only one"], labels, "t", "x", "y")
        with pytest.raises(ValueError, match="plotting function"):
            encoder.plot(figures.fit_width, np.zeros((4, 4, 3), np.uint8))
        pending.result()
        assert not encoder._plots._local  # the worker answered: nothing fell back to drawing here
    assert worker.returncode == 0  # closed with the encoder
    assert pending.result() == render.encode_image(figures.plot_matrix(matrix, labels, labels, "t", "x", "y"))
    with pytest.raises(Exception):  # noqa: B017 - matplotlib's own error for a label list of the wrong length
        failing.result()


def test_large_requests_and_replies_never_deadlock_the_plotting_worker():
    """Requests and replies each larger than a pipe's buffer, submitted faster than the worker draws: the worker
    blocks writing a reply while the caller blocks writing the next request, and the reply reader must still
    drain the replies (MobileNetV2's weights section hung here, the caller holding the lock the reader needed)."""
    import threading

    from reportgen import figures
    from reportgen.plot_worker import PlotWorker

    edges = np.linspace(-1, 1, 8_001)  # 64 kB of arguments per request, a pipe's buffer
    series = [("a", np.arange(8_000, dtype=np.float64), "red")]
    worker = PlotWorker()
    futures: list = []

    def submit_all() -> None:
        for i in range(8):
            futures.append(worker.submit(figures.plot_histogram, edges, series, f"h{i}", size=(8.0, 4.0)))

    submitter = threading.Thread(target=submit_all, daemon=True)
    submitter.start()
    submitter.join(90)
    try:
        assert not submitter.is_alive(), "submitting to the plotting worker deadlocked"
        replies = [future.result(120) for future in futures]
        assert all(reply.shape == (400, 800, 3) for reply in replies)  # 1 MB replies, 15 pipe buffers each
        assert not worker._local  # the worker drew them all
    finally:
        worker.close(finish=False)


def test_plots_are_drawn_here_when_the_worker_is_gone():
    from reportgen import figures
    from reportgen.plot_worker import PlotWorker

    worker = PlotWorker()
    first = worker.submit(figures.plot_reliability, np.linspace(0.05, 0.95, 10), np.linspace(0, 1, 10),
                          np.arange(10), np.linspace(0, 1, 11), "r")
    first.result(60)
    worker._process.kill()
    worker._process.wait()
    worker._reader.join(10)
    later = worker.submit(figures.plot_histogram, np.linspace(-1, 1, 5), [("a", np.array([1, 2, 3, 4]), "red")], "h")
    expected = figures.plot_histogram(np.linspace(-1, 1, 5), [("a", np.array([1, 2, 3, 4]), "red")], "h")
    assert np.array_equal(later.result(60), expected)
    worker.close()


def test_a_prefetched_section_is_written_from_its_early_encoding(monkeypatch):
    """`FigureEncoder.prefetch` starts a built section's plots at once; the renderer uses those bytes and
    encodes only the figures that were never prefetched."""
    from reportgen import render
    from reportgen.report import Figure, Report, Section

    rng = np.random.default_rng(5)
    first = Figure("plot-a", "a", "", rng.integers(0, 255, (40, 60, 3), np.uint8))
    second = Figure("plot-b", "b", "", rng.integers(0, 255, (40, 60, 3), np.uint8))
    section = Section(id="s", kind="summary", title="S", blocks=(first,))
    with render.FigureEncoder(workers=1) as encoder:
        encoder.prefetch(section)
        expected = render.encode_image(first.pixels)
        calls = []
        monkeypatch.setattr(render.page, "encode_image", lambda pixels, page=True: calls.append(1) or expected)
        report = Report(title="t", created="2026-01-01T00:00:00Z", model={}, options={}, images=(),
                        class_names=(), sections=(section, Section(id="t", kind="summary", title="T",
                                                                  blocks=(second,))),
                        warnings=(), seconds={}, versions={})
        encoded = render.encode_figures(report, encoder)
    assert encoded["plot-a"].png == expected.png
    assert len(calls) == 1  # only the figure that was never prefetched


def test_anchors_for_sections_and_layers(hostile_report):
    html = (hostile_report / "index.html").read_text()
    manifest = json.loads((hostile_report / "report.json").read_text())
    ids = set(re.findall(r'id="([^"]+)"', html))
    for section in manifest["sections"]:
        assert section["id"] in ids
    for href in re.findall(r'href="#([^"]+)"', html):
        assert href in ids, href
    assert sum(1 for i in ids if i.startswith("layer-")) == len(manifest["sections"][0]["data"]["layers"])


def test_failed_write_leaves_nothing_and_keeps_the_old_report(hostile_report, tmp_path, monkeypatch):
    import shutil

    import reportgen.render as render

    old = tmp_path / "old"
    shutil.copytree(hostile_report, old)
    before = sorted(p.name for p in old.rglob("*"))

    def failing_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(render.write.np, "savez_compressed", failing_savez)
    report = _tiny_report()
    with pytest.raises(OSError, match="disk full"):
        write_report(report, old, save_arrays=True)
    assert sorted(p.name for p in old.rglob("*")) == before
    with pytest.raises(OSError):
        write_report(report, tmp_path / "new", save_arrays=True)
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["old"]  # no staging folder left behind


def test_an_earlier_report_is_replaced_as_a_whole(hostile_report, tmp_path):
    import shutil

    target = tmp_path / "report"
    shutil.copytree(hostile_report, target)
    (target / "figures" / "stale.png").write_bytes(b"old")
    write_report(_tiny_report(), target)
    assert not (target / "figures" / "stale.png").exists()
    assert not (target / "arrays.npz").exists()
    assert json.loads((target / "report.json").read_text())["title"] == "tiny"


def test_refusal_and_force(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="--force"):
        write_report(_tiny_report(), folder)
    assert (folder / "keep.txt").exists()
    write_report(_tiny_report(), folder, force=True)
    assert not (folder / "keep.txt").exists() and (folder / "index.html").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        write_report(_tiny_report(), a_file)


def _tiny_report():
    from reportgen.report import Figure, Report, Section

    figure = Figure(key="f", title="t", caption="c", pixels=np.zeros((4, 4, 3), np.uint8))
    section = Section(id="summary", kind="summary", title="Summary", blocks=(figure,),
                      arrays={"a": np.arange(3)})
    return Report(title="tiny", created="2026-01-01T00:00:00Z", model={"name": "m"}, options={"seed": 0},
                  images=(), class_names=(), sections=(section,), warnings=(), seconds={},
                  versions={"reportgen": "0", "tensorflow": "0", "keras": "0"})


def test_summary_links_each_layer_to_every_section_that_shows_it(residual_model, shared_images, tmp_path):
    out = tmp_path / "report"
    generate_report(residual_model, [shared_images], out, ReportOptions(
        sections=("summary", "weights", "feature_maps", "cam"), layers=("res_bn", "sep"), cam_methods=("gradcam",)))
    html = (out / "index.html").read_text()
    rows = {re.search(r"<td>(?:\u2003)*([^<]+)</td>", row).group(1): row
            for row in re.findall(r'<tr id="layer-[^"]+">(.*?)</tr>', html, re.S)}
    assert 'href="#feature-maps-res-bn"' in rows["res_bn"]  # chosen with --layers: not a conv or pooling layer
    assert 'href="#weights-sep"' in rows["sep"] and 'href="#feature-maps-sep"' in rows["sep"]
    assert 'href="#feature-maps-stem"' not in rows["stem"]  # not chosen this time: no link to nowhere
    manifest = json.loads((out / "report.json").read_text())
    target = next(s["layer"] for s in manifest["sections"] if s["kind"] == "cam" and s.get("layer"))
    assert f'href="#cam-{target.replace("_", "-")}-gradcam">Grad-CAM</a>' in rows[target]


_KILL_AT_SWAP = """
import os, signal, sys
import numpy as np
import reportgen.render as render
from reportgen.report import Figure, Report, Section

out, when, exchange = sys.argv[1], sys.argv[2], sys.argv[3]
real_exchange, real_rename = render.folder._exchange, render.folder.Path.rename

def exchanging(a, b):
    if exchange == "no":
        return False
    if when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    done = real_exchange(a, b)
    os.kill(os.getpid(), signal.SIGKILL)

def renaming(self, target):
    result = real_rename(self, target)
    if ".old-" in str(target) and when == "between":
        os.kill(os.getpid(), signal.SIGKILL)
    return result

render.folder._exchange = exchanging
render.folder.Path.rename = renaming
figure = Figure(key="f", title="t", caption="c", pixels=np.zeros((4, 4, 3), np.uint8))
section = Section(id="summary", kind="summary", title="Summary", blocks=(figure,))
report = Report(title="new", created="2026-01-01T00:00:00Z", model={"name": "m"}, options={"seed": 0}, images=(),
                class_names=(), sections=(section,), warnings=(), seconds={},
                versions={"reportgen": "0", "tensorflow": "0", "keras": "0"})
from pathlib import Path
render.write_report(report, Path(out))
"""


@pytest.mark.parametrize("when,exchange", [("before", "yes"), ("after", "yes"), ("between", "no")])
def test_sigkill_at_the_swap_leaves_the_old_or_the_new_report(tmp_path, when, exchange):
    import subprocess
    import sys

    from reportgen.render import sweep_leftovers

    out = tmp_path / "report"
    write_report(_tiny_report(), out)  # the earlier report, titled "tiny"
    run = subprocess.run([sys.executable, "-c", _KILL_AT_SWAP, str(out), when, exchange], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == -9, run.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "report"]
    assert leftovers  # the killed run left its staging or retired folder
    sweep_leftovers(out)  # what the next run does first
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
    title = json.loads((out / "report.json").read_text())["title"]
    assert title == ("new" if when == "after" else "tiny")


def test_a_signal_during_the_swap_is_held_until_it_is_done(tmp_path, monkeypatch):
    import os
    import signal

    import reportgen.render as render

    out = tmp_path / "report"
    write_report(_tiny_report(), out)
    real_exchange = render.folder._exchange

    def interrupted(a, b):
        os.kill(os.getpid(), signal.SIGINT)  # arrives between the steps of the swap
        return real_exchange(a, b)

    monkeypatch.setattr(render.folder, "_exchange", interrupted)
    with pytest.raises(KeyboardInterrupt, match="written"):
        write_report(_tiny_report(), out)
    assert json.loads((out / "report.json").read_text())["title"] == "tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_sigterm_is_handled_like_ctrl_c(tmp_path, saved_models, image_folder):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "reportgen", "generate", str(saved_models["plain"]),
                                str(image_folder), "-o", str(out), "--steps", "1000", "--sections",
                                "filter_patterns"], stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # wait until the long step has started
        if "filter_patterns: start" in line:
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Interrupted; nothing was written." in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.mark.parametrize("case", ["parent_is_a_file", "name_too_long", "read_only", "dot"])
def test_output_problems_are_found_before_the_work(cli, saved_models, image_folder, tmp_path, monkeypatch, case):
    import tempfile
    from pathlib import Path

    if case == "parent_is_a_file":
        (tmp_path / "file").write_text("x")
        out, message = tmp_path / "file" / "report", "is a file"
    elif case == "name_too_long":
        out, message = tmp_path / ("r" * 250), "too long"
    elif case == "read_only":
        (tmp_path / "locked").mkdir()
        out, message = tmp_path / "locked" / "report", "cannot create folders"
        real = tempfile.mkdtemp

        def refused(*args, **kwargs):  # root writes anywhere: refuse as a read-only file system would
            if str(kwargs.get("dir", "")).endswith("locked"):
                raise OSError(30, "Read-only file system")
            return real(*args, **kwargs)

        monkeypatch.setattr(tempfile, "mkdtemp", refused)
    else:
        (tmp_path / "cwd").mkdir()
        (tmp_path / "cwd" / "notes.txt").write_text("mine")
        monkeypatch.chdir(tmp_path / "cwd")
        out, message = ".", "--force"
    import reportgen.api

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(reportgen.api, "load_model", never)
    result = cli("generate", saved_models["plain"], image_folder, "-o", out, "--quiet")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    if case == "dot":
        assert [p.name for p in Path().iterdir()] == ["notes.txt"]


def test_a_full_disk_is_exit_2_and_leaves_nothing(tmp_path, monkeypatch, cli, saved_models, image_folder):
    import errno

    import reportgen.render as render

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(render.write.np, "savez_compressed", full)
    result = cli("generate", saved_models["plain"], image_folder, "-o", tmp_path / "out", "--quiet",
                 "--sections", "summary", "--save-arrays")
    assert result.exit_code == 2, result.output
    assert "no space left on device" in result.output and "Internal error" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_dot_as_output_replaces_the_report_it_is(tmp_path, monkeypatch):
    folder = tmp_path / "report"
    write_report(_tiny_report(), folder)
    monkeypatch.chdir(folder)
    (folder / "figures" / "stale.png").write_bytes(b"old")
    write_report(_tiny_report(), folder.relative_to(folder))  # "."
    assert not (folder / "figures" / "stale.png").exists() and (folder / "report.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_the_prestarted_plotting_worker_is_taken_over_once():
    from reportgen import figures, plot_worker

    plot_worker.prestart()
    started = plot_worker._prestarted[0]
    first, second = plot_worker.PlotWorker(), plot_worker.PlotWorker()
    try:
        assert first._process is started and second._process is not started and not plot_worker._prestarted
        pixels = first.submit(figures.plot_matrix, np.eye(2, dtype=int), ["a", "b"], ["a", "b"], "t", "x", "y")
        assert pixels.result(60).shape[2] == 3
    finally:
        first.close()
        second.close()
    assert started.returncode == 0
