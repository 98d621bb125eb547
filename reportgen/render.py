"""Render a Report to a folder: index.html (self-contained), figures/*.png, report.json, summary.md, arrays.npz.

This is the only module that encodes images or writes output files (the published site's too). Writing is
atomic: everything is built in a hidden folder beside OUT and moved into place at the end, so a failure leaves
OUT as it was. The same report gives the same bytes: nothing time-dependent but `created` (which
SOURCE_DATE_EPOCH pins) reaches index.html, summary.md or arrays.npz; report.json also holds `seconds`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import io
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import jinja2
import numpy as np
from markupsafe import Markup

from reportgen import registry, watchdog
from reportgen.errors import OutputError
from reportgen.plot_worker import BACKGROUND_NICENESS, PlotWorker, plot_function
from reportgen.report import EncodedImage, Figure, PendingImage, Report, Section, SlugRegistry
from reportgen.report_folder import write
from reportgen.report_folder.read import read_manifest
from reportgen.report_folder.schema import Report as ReportJson
from reportgen.summary_md import summary_markdown

SUMMARY_MD = "summary.md"
SITE_GENERATOR = "reportgen site"  # the site index's <meta name="generator">: marks an index.html we may replace


def templates_dir() -> Path:
    """Templates ship inside the wheel as `reportgen/templates`; in a source checkout they sit at the top level."""
    packaged = Path(str(resources.files("reportgen"))) / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def _block_kind(block: object) -> str:
    return type(block).__name__.lower()


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
    )
    env.filters["block_kind"] = _block_kind
    return env


# OpenCVs older than the `IMWRITE_PNG_FILTER` key (reportgen allows them) let libpng choose each row's filter.
PNG_PARAMETERS = [cv2.IMWRITE_PNG_COMPRESSION, 6] + (
    [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP] if hasattr(cv2, "IMWRITE_PNG_FILTER") else [])


def encode_png(pixels: np.ndarray) -> bytes:
    """RGB uint8 -> PNG bytes (OpenCV; deterministic for the same pixels).

    One row filter, "up", instead of libpng's per-row choice among all five: the figures are tiles enlarged by
    repeating rows and pixels, which "up" predicts best, so the files come out as small (within 4%, smaller on
    the demo) for half the encoding time, the largest CPU cost of a small model's report after the model's own.
    """
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(pixels[:, :, ::-1]), PNG_PARAMETERS)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def is_report_dir(path: Path) -> bool:
    """True when `path` holds a report written by reportgen (its manifest says so)."""
    return read_manifest(path) is not None


STAGING_SUFFIX = 8  # characters tempfile.mkdtemp adds to a prefix
LEFTOVER_KINDS = ("building", "old", "publishing")  # `.OUT.building-*`: staging and retired folders of a run


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_writable_target(out: Path, flag: str) -> Path:
    """`out` made absolute (so `-o .` has a name and a parent), checked to be writable as a folder beside which
    a staging folder fits: no ancestor is a file, the nearest existing one accepts new folders, and the staging
    name (`.OUT.publishing-XXXXXXXX`, the longest) is not too long. Returns the absolute path."""
    resolved = Path(out).resolve()
    if resolved.parent == resolved:
        raise OutputError(f"{flag}: {out} is the file system's root; choose a folder for the report")
    existing = resolved.parent
    while not existing.exists():
        if existing.is_symlink():  # a dangling link
            raise OutputError(f"{flag}: {existing} is a broken symbolic link; choose another folder")
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag}: {existing} is a file, so {out} cannot be created inside it; choose a folder "
                          "whose parent is a folder")
    longest = f".{resolved.name}.publishing-" + "x" * STAGING_SUFFIX
    limit = _name_max(existing)
    if len(os.fsencode(longest)) > limit:
        room = limit - len(os.fsencode(longest)) + len(os.fsencode(resolved.name))
        raise OutputError(f"{flag}: the folder name {resolved.name[:40]!r}... is too long "
                          f"({len(os.fsencode(resolved.name))} bytes; at most {room} leave room for the staging "
                          "folder beside it); choose a shorter name")
    try:
        probe = tempfile.mkdtemp(prefix=".reportgen-probe-", dir=existing)
    except OSError as exc:
        raise OutputError(f"{flag}: cannot create folders in {existing} ({exc.strerror or exc}); choose a "
                          "writable location") from None
    Path(probe).rmdir()
    return resolved


def check_output_dir(out: Path, force: bool) -> Path:
    """Refuse an OUT that would lose someone's files (it exists, is not empty and is not an earlier report) or
    that cannot be written (see `check_writable_target`), before any work. Returns OUT as an absolute path."""
    flag = "-o/--output-dir"
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag}: {out} exists and is a file; choose a folder name")
    resolved = check_writable_target(out, flag)
    if not resolved.exists():
        return resolved
    if force or is_report_dir(resolved) or not any(resolved.iterdir()):
        return resolved
    raise OutputError(
        f"{flag}: {out} exists, is not empty and is not a reportgen report; choose another folder or "
        "pass --force to replace it"
    )


def _leftovers(out: Path) -> list[Path]:
    if not out.parent.is_dir():
        return []
    prefixes = tuple(f".{out.name}.{kind}-" for kind in LEFTOVER_KINDS)
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(prefixes)
                  and len(p.name) == len(next(x for x in prefixes if p.name.startswith(x))) + STAGING_SUFFIX
                  and p.is_dir() and not p.is_symlink())


def sweep_leftovers(out: Path) -> list[Path]:
    """Remove what an earlier run killed mid-write left beside `out` (`.OUT.building-*`, `.OUT.old-*`,
    `.OUT.publishing-*`). When `out` itself is missing and a retired copy is a report, that copy is the earlier
    report caught between the two moves of a swap: it is put back at `out` first. Returns what was removed."""
    out = Path(out)
    leftovers = _leftovers(out)
    if not out.exists():
        retired = [p for p in leftovers if p.name.startswith(f".{out.name}.old-") and is_report_dir(p)]
        if retired:
            newest = max(retired, key=lambda p: p.stat().st_mtime)
            newest.rename(out)
            leftovers.remove(newest)
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    return leftovers


# The page embeds a lossy WebP of a figure when it is at most this share of the PNG. Measured on the example
# report: heat-map overlays and feature-map grids are 3-4x smaller as WebP at quality 90 with no visible change,
# while plots, kernel grids and tables of flat colour are smaller as PNG (and stay exact). Lossless WebP was
# 25% smaller than PNG but 7x slower to encode. Chromium, Firefox and Safari decode WebP data URIs.
WEBP_QUALITY = 90
WEBP_SHARE = 0.8
# libwebp's effort (0-6): encoding was the largest share of a small model's report (1.4 s of CPU for the 119
# figures of a 3-conv CNN's, against 5 s for everything else); 2 takes half the time of the default 4 for 6% more
# WebP bytes (2% more page). Pillow's encoder releases the GIL, as OpenCV's does.
WEBP_METHOD = 2
# What the page may embed, in bytes of base64: figures past it are linked from figures/ instead, and the
# report says which. GitHub refuses files over 100 MB and browsers struggle with pages of 80 MB; with the tables
# and text this keeps index.html under 10 MB.
PAGE_BUDGET = int(7.5 * 1024 * 1024)


def encode_webp(pixels: np.ndarray, quality: int = WEBP_QUALITY) -> bytes | None:
    """RGB uint8 -> lossy WebP bytes (libwebp through Pillow, `WEBP_METHOD`), or None without a WebP encoder."""
    from PIL import Image, features

    if not features.check("webp"):
        return None
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "WEBP", quality=quality, method=WEBP_METHOD)
    return buffer.getvalue()


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"figure pixels must be (H, W, 3) uint8, got {pixels.dtype} {pixels.shape}")


def encode_image(pixels: np.ndarray, page: bool = True) -> EncodedImage:
    """A figure's pixels as PNG for figures/ and, for the page, the smaller of that PNG and a WebP. `page=False`
    for a figure the page only links to: no WebP is made for it."""
    _check_pixels(pixels)
    height, width = pixels.shape[:2]
    png = encode_png(pixels)
    webp = encode_webp(pixels) if page else None
    if webp is not None and len(webp) <= WEBP_SHARE * len(png):
        return EncodedImage(png, width, height, webp, "image/webp")
    return EncodedImage(png, width, height, png, "image/png")


# Raw pixels handed to the encoder and not yet compressed, at most: beyond it, the builder handing in one more
# figure waits, so pixels never pile up faster than they are compressed. In bytes, not figures: a small model's
# section hands in dozens of small figures at once and goes on to the next section while they compress.
ENCODER_BACKLOG_BYTES = 64 * 1024 * 1024
# What a plot counts for in that backlog before it is drawn: the pixels of a 6.4 x 3.2 inch plot at 100 dpi, and
# room for its data.
PLOT_BACKLOG_BYTES = 1024 * 1024


class _Backlog:
    """Bytes held by figures waiting to be compressed, bounded by `limit`: `take` waits for room (a figure alone is
    always let in, however large), `give_back` makes it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._room = threading.Condition()

    def take(self, size: int) -> None:
        with self._room:
            self._room.wait_for(lambda: self._held == 0 or self._held + size <= self._limit)
            self._held += size

    def give_back(self, size: int) -> None:
        with self._room:
            self._held -= size
            self._room.notify_all()


def _yield_to_the_model() -> None:
    """Lower the calling (encoder) thread's scheduling priority to `plot_worker.BACKGROUND_NICENESS` (Linux)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority
        pass


class FigureEncoder:
    """`Analysis.encode`: compresses each figure on a small thread pool while the builders compute the next ones
    (the PNG and WebP encoders release the GIL, so encoding overlaps the model's work and Python's). Returns a
    `PendingImage` at once; the renderer waits for each. The pixels passed in must not be changed afterwards."""

    def __init__(self, workers: int | None = None, plots: bool = False) -> None:
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="reportgen-encode",
                                        initializer=_yield_to_the_model)
        self._backlog = _Backlog(ENCODER_BACKLOG_BYTES)
        self._prefetched: dict[str, tuple[np.ndarray, PendingImage]] = {}
        # Started now, so the worker imports matplotlib while the model loads.
        self._plots = PlotWorker() if plots else None

    def __call__(self, pixels: np.ndarray, page: bool = True) -> PendingImage:
        _check_pixels(pixels)  # a wrong figure fails where it is made, not at render time
        self._backlog.take(pixels.nbytes)
        future = self._pool.submit(encode_image, pixels, page)
        future.add_done_callback(lambda _: self._backlog.give_back(pixels.nbytes))
        return PendingImage(future)

    def plot(self, draw: Callable[..., np.ndarray], *args: Any, page: bool = True, **kwargs: Any) -> PendingImage:
        """`Analysis.plot`: `draw(*args, **kwargs)`, a plotting function of `figures`, drawn by the plotting
        worker process (`plot_worker`) and then encoded here; returns at once. Without a worker it is drawn
        now, in this process."""
        if self._plots is None:
            return self(draw(*args, **kwargs), page)
        plot_function(draw.__name__)  # only figures.plot_*: refused here, before it takes a place in the backlog
        self._backlog.take(PLOT_BACKLOG_BYTES)
        encoded: Future[EncodedImage] = Future()

        def finish(drawn: Future[np.ndarray]) -> None:
            try:
                pixels = drawn.result()
                _check_pixels(pixels)
                encoded.set_result(encode_image(pixels, page))
            except BaseException as exc:  # the renderer's result() raises it where the figure is written
                encoded.set_exception(exc)
            finally:
                self._backlog.give_back(PLOT_BACKLOG_BYTES)

        self._plots.submit(draw, *args, **kwargs).add_done_callback(lambda drawn: self._pool.submit(finish, drawn))
        return PendingImage(encoded)

    def prefetch(self, section: Section) -> None:
        """Start encoding a built section's figures that still hold raw pixels (plots, small grids), so they are
        compressed while the next section computes; `write_report` picks them up by key."""
        for figure in section.figures():
            if isinstance(figure.pixels, np.ndarray) and figure.key not in self._prefetched:
                self._prefetched[figure.key] = (figure.pixels, self(figure.pixels, figure.embed))

    def prefetched(self, key: str, pixels: np.ndarray) -> EncodedImage | None:
        """The encoding `prefetch` started for the figure `key` with these very pixels, or None."""
        entry = self._prefetched.get(key)
        return entry[1].result() if entry is not None and entry[0] is pixels else None

    def close(self) -> None:
        """Wait for every figure handed in, then stop the threads and the plotting worker."""
        if self._plots is not None:
            self._plots.close()
            self._plots = None
        self._pool.shutdown(wait=True)

    def __enter__(self) -> FigureEncoder:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and self._plots is not None:
            self._plots.close(finish=False)  # the report failed: its plots are not wanted
        self.close()


@dataclass(frozen=True)
class EncodedFigure:
    file: str  # its name in figures/
    width: int
    height: int
    png: bytes
    page: bytes
    page_type: str
    embedded: bool

    @property
    def uri(self) -> str:
        """The data: URI for the page, built when the page is streamed out, one figure at a time."""
        return f"data:{self.page_type};base64," + base64.b64encode(self.page).decode("ascii")

    @property
    def page_bytes(self) -> int:
        return 4 * -(-len(self.page) // 3)  # base64


def _encoded(figure: Figure, encoder: FigureEncoder | None) -> EncodedImage:
    if isinstance(figure.pixels, EncodedImage):
        return figure.pixels
    if isinstance(figure.pixels, PendingImage):
        return figure.pixels.result()
    early = encoder.prefetched(figure.key, figure.pixels) if encoder is not None else None
    return early if early is not None else encode_image(figure.pixels, figure.embed)


def _encode_figures(report: Report, encoder: FigureEncoder | None = None) -> dict[str, EncodedFigure]:
    files = SlugRegistry()
    encoded: dict[str, EncodedFigure] = {}
    for section in report.sections:
        watchdog.beat("render", f"the figures of section {section.id}")  # each waits for its encoder or plot
        for figure in section.figures():
            if figure.key in encoded:
                raise ValueError(f"two figures share the key {figure.key!r}")
            image = _encoded(figure, encoder)
            name = files.take(figure.key, "figure") + ".png"  # slug again: a key can never leave figures/
            page, page_type = (image.page, image.page_type) if image.page else (image.png, "image/png")
            encoded[figure.key] = EncodedFigure(name, image.width, image.height, image.png, page, page_type,
                                                figure.embed)
    kinds = {figure.key: section.kind for section in report.sections for figure in section.figures()}
    return _within_budget(encoded, kinds)


def _within_budget(encoded: dict[str, EncodedFigure], kinds: dict[str, str] | None = None,
                   budget: int | None = None) -> dict[str, EncodedFigure]:
    """Embed figures by section priority (`registry.SectionKind.embed_rank`: what the model does on the data
    before how its insides look; within a kind, report order) until the page budget is spent; the rest are
    linked, not embedded."""
    budget = PAGE_BUDGET if budget is None else budget
    kinds = kinds or {}
    rank = {kind.name: kind.embed_rank for kind in registry.SECTIONS}
    keys = list(encoded)
    order = sorted(range(len(keys)), key=lambda i: (rank.get(kinds.get(keys[i], ""), len(rank)), i))
    spent = 0
    decided: dict[str, bool] = {}
    for i in order:
        figure = encoded[keys[i]]
        fits = figure.embedded and spent + figure.page_bytes <= budget
        spent += figure.page_bytes if fits else 0
        decided[keys[i]] = fits
    return {key: figure if decided[key] == figure.embedded else dataclasses.replace(figure, embedded=decided[key])
            for key, figure in encoded.items()}


def budget_note(encoded: dict[str, EncodedFigure], report: Report) -> str | None:
    """The warning for figures the page budget left out (not those a builder chose to link)."""
    wanted = {figure.key for section in report.sections for figure in section.figures() if figure.embed}
    left = [key for key, figure in encoded.items() if key in wanted and not figure.embedded]
    if not left:
        return None
    size = sum(encoded[key].page_bytes for key in left) / 1e6
    return (f"page size: {len(left)} figures ({size:.1f} MB) are linked from figures/ instead of embedded, to keep "
            f"index.html under 10 MB: {', '.join(left[:5])}"
            + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            + "; use --sections, --layers or fewer --detail images for a page that holds them all")


def _toc(report: Report) -> list[dict[str, Any]]:
    """Contents: one entry per section kind (its first section), per-layer and per-class sections below it."""
    groups: list[dict[str, Any]] = []
    by_kind: dict[str, dict[str, Any]] = {}
    for section in report.sections:
        group = by_kind.get(section.kind)
        if group is None:
            group = {"anchor": section.id, "title": section.title, "children": []}
            by_kind[section.kind] = group
            groups.append(group)
            if section.layer is None and section.class_name is None:
                continue
        # "Weights: conv1" -> "conv1"; titles without a kind prefix ("Grad-CAM at conv3") stay whole.
        label = section.title.split(": ", 1)[1] if ": " in section.title else section.title
        group["children"].append({"anchor": section.id, "title": label})
    return groups


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
        warnings=report.warnings, seconds=report.seconds, arrays=arrays_file, extra=report.extra,
    )


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _page_assets() -> tuple[str, str, str]:
    """(css, js, csp): our stylesheet and script, inlined, and a CSP that allows only them (by hash) and data:
    images, so a page can load nothing from anywhere."""
    css = (templates_dir() / "style.css").read_text(encoding="utf-8")
    js = (templates_dir() / "report.js").read_text(encoding="utf-8")
    csp = (f"default-src 'none'; img-src data:; style-src {_csp_hash(css)}; script-src {_csp_hash(js)}; "
           "base-uri 'none'; form-action 'none'")
    return css, js, csp


def render_html(report: Report, figures: dict[str, EncodedFigure], path: Path) -> None:
    """Write the self-contained page to `path`, streamed: the page is as large as all its figures together, so it
    is never held in memory whole. The CSP allows only this page's own style and script (by hash) and data:
    images."""
    env = environment()
    css, js, csp = _page_assets()
    # Every section, figure and table row with an id is a link target (`#fm-conv1-cat-1-png`,
    # `#prediction-cat-1-png`); links to anything else are dropped rather than left dangling.
    anchors = {section.id for section in report.sections}
    anchors |= {figure.key for section in report.sections for figure in section.figures()}
    layer_anchors: dict[str, str] = {}
    for section in report.sections:
        for table in (b for b in section.blocks if _block_kind(b) == "table"):
            for row, row_id in zip(table.rows, table.row_ids, strict=False):
                anchors.add(row_id)
                if section.kind == "summary":
                    layer_anchors[str(row[0]).lstrip("\u2003")] = row_id

    def layer_anchor(path: str) -> str:
        return layer_anchors.get(path, "summary")

    template = env.get_template("report.html.j2")
    template.stream(
        report=report,
        versions=report.versions,
        css=Markup(css),  # our own stylesheet, not user data
        js=Markup(js),
        csp=csp,
        toc=_toc(report),
        figure_uris=figures,
        anchors=anchors,
        layer_anchor=layer_anchor,
    ).dump(str(path), encoding="utf-8")


def write_report(report: Report, out: Path, force: bool = False, save_arrays: bool = False,
                 encoder: FigureEncoder | None = None) -> Path:
    """Write the report folder atomically; an earlier report at `out` is replaced as a whole."""
    out = check_output_dir(Path(out), force)
    figures = _encode_figures(report, encoder)
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
        _replace(staging, out)
        watchdog.staging(None)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise_if_disk_full(exc, out)
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def raise_if_disk_full(exc: OSError, path: Path) -> None:
    """A full disk (or quota) is the user's to fix: OutputError naming where, instead of an internal error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise OutputError(f"no space left on device at {path}; free some space or write elsewhere (nothing was "
                          "written)") from None


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): at no moment is either missing. False when
    the system or file system does not support it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM arriving inside the block are held until it ends (recorded in the yielded list), so a
    swap of folders is never cut between its steps. Only the main thread can install handlers; elsewhere the
    block runs as it is."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _replace(staging: Path, out: Path) -> None:
    """Move `staging` to `out`, replacing an earlier `out` so that, whatever signal arrives (SIGKILL included),
    `out` holds either the old or the new folder: one atomic exchange where the system has it, else two renames
    with signals held between them (after a SIGKILL there, the next run's `sweep_leftovers` puts the old one
    back). The old folder is deleted once the new one is in; a Ctrl-C or SIGTERM during the swap is raised
    after it, saying the report was written."""
    with _signals_held() as received:
        if not out.exists():
            staging.rename(out)
            retired = None
        elif _exchange(staging, out):
            retired = staging  # now holds the old folder
        else:
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            retired.rmdir()
            out.rename(retired)
            try:
                staging.rename(out)
            except BaseException:
                retired.rename(out)
                raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    if received:
        raise KeyboardInterrupt(f"after {out} was written")


# ------------------------------------------------------------------------------------------ published site


def render_site_index(title: str, models: list[dict[str, Any]]) -> str:
    """The site's index.html: every published model and version, with the report's own CSS and CSP.

    `models`: [{slug, name, versions: [{label, href, summary, title, date, images, accuracy, params}]}], hrefs
    relative to the site root.
    """
    from reportgen import __version__

    css, js, csp = _page_assets()
    template = environment().get_template("site_index.html.j2")
    return template.render(title=title, models=models, css=Markup(css), js=Markup(js), csp=csp,
                           generator=SITE_GENERATOR, version=__version__)


def is_site_index(path: Path) -> bool:
    """True when `path` is an index.html that `write_site` wrote (so publishing may replace it)."""
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:2000]
    except OSError:
        return False
    return f'<meta name="generator" content="{SITE_GENERATOR}' in head


def _write_if_changed(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, leaving it untouched when it already holds exactly that."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with open(handle, "wb") as stream:
            stream.write(data)
        Path(temporary).chmod(0o644)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_site(site: Path, index_html: str, report: Path | None = None, target: Path | None = None) -> None:
    """Copy the report folder `report` to `target` inside `site` (atomically, replacing what is there), then
    write the site's index.html and .nojekyll (GitHub Pages would otherwise run Jekyll over the reports).
    Files whose bytes would not change are left alone, so publishing the same thing twice changes nothing."""
    site.mkdir(parents=True, exist_ok=True)
    if report is not None and target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.publishing-", dir=target.parent))
        try:
            _copy_plain_tree(report, staging)
            staging.chmod(0o755)
            _replace(staging, target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise_if_disk_full(exc, target)
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    try:
        _write_if_changed(site / "index.html", index_html.encode("utf-8"))
        _write_if_changed(site / ".nojekyll", b"")
    except OSError as exc:
        raise_if_disk_full(exc, site)
        raise


def _copy_plain_tree(source: Path, destination: Path) -> None:
    """Copy the folders and regular files of `source` (hidden ones aside) into the existing `destination`,
    stopping at the first error. Links are never followed (publish refuses reports holding any beforehand)."""
    for root, dirs, files in os.walk(source, followlinks=False):
        here = Path(root)
        relative = here.relative_to(source)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here / d).is_symlink())
        (destination / relative).mkdir(exist_ok=True)
        for name in sorted(files):
            file = here / name
            if name.startswith(".") or file.is_symlink() or not file.is_file():
                continue
            shutil.copy2(file, destination / relative / name, follow_symlinks=False)
