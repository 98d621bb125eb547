"""Render a Report to a folder: index.html (self-contained), figures/*.png, report.json, summary.md, arrays.npz.

This is the only module that encodes images or writes output files (the published site's too). Writing is
atomic: everything is built in a hidden folder beside OUT and moved into place at the end, so a failure leaves
OUT as it was. The same report gives the same bytes: nothing time-dependent but `created` (which
SOURCE_DATE_EPOCH pins) reaches index.html, summary.md or arrays.npz; report.json also holds `seconds`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import jinja2
import numpy as np
from markupsafe import Markup

from reportgen.diff.manifest import GENERATOR, MANIFEST, SCHEMA_VERSION, read_manifest
from reportgen.errors import OutputError
from reportgen.report import EncodedImage, Report, Section, SlugRegistry
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


def encode_png(pixels: np.ndarray) -> bytes:
    """RGB uint8 -> PNG bytes (OpenCV; deterministic for the same pixels)."""
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(pixels[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def is_report_dir(path: Path) -> bool:
    """True when `path` holds a report written by reportgen (its manifest says so)."""
    return read_manifest(path) is not None


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an OUT that would lose someone's files: it exists, is not empty and is not an earlier report."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"-o/--output-dir: {out} exists and is a file; choose a folder name")
    if force or is_report_dir(out) or not any(out.iterdir()):
        return
    raise OutputError(
        f"-o/--output-dir: {out} exists, is not empty and is not a reportgen report; choose another folder or "
        "pass --force to replace it"
    )


def _json_safe(value: Any) -> Any:
    """NaN and Inf become null (JSON has neither); numpy scalars and tuples become plain JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


# The page embeds a lossy WebP of a figure when it is at most this share of the PNG. Measured on the example
# report: heat-map overlays and feature-map grids are 3-4x smaller as WebP at quality 90 with no visible change,
# while plots, kernel grids and tables of flat colour are smaller as PNG (and stay exact). Lossless WebP was
# 25% smaller than PNG but 7x slower to encode. Chromium, Firefox and Safari decode WebP data URIs.
WEBP_QUALITY = 90
WEBP_SHARE = 0.8
# What the page may embed, in bytes of base64: figures past it are linked from figures/ instead, and the
# report says which. GitHub refuses files over 100 MB and browsers struggle with pages of 80 MB; with the tables
# and text this keeps index.html under 10 MB.
PAGE_BUDGET = int(7.5 * 1024 * 1024)
# Which figures the budget serves first: what the model does on the data before how its insides look. Within a
# kind, report order.
EMBED_PRIORITY = ("summary", "evaluation", "predictions", "cam", "class", "dataset_examples", "filter_patterns",
                  "feature_maps", "weights")


def encode_webp(pixels: np.ndarray, quality: int = WEBP_QUALITY) -> bytes | None:
    """RGB uint8 -> lossy WebP bytes, or None when this OpenCV has no WebP encoder."""
    try:
        ok, buffer = cv2.imencode(".webp", np.ascontiguousarray(pixels[:, :, ::-1]), [cv2.IMWRITE_WEBP_QUALITY,
                                                                                      quality])
    except cv2.error:
        return None
    return buffer.tobytes() if ok else None


def encode_image(pixels: np.ndarray) -> EncodedImage:
    """A figure's pixels as PNG for figures/ and, for the page, the smaller of that PNG and a WebP
    (`Analysis.encode` hands every figure here as it is drawn)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"figure pixels must be (H, W, 3) uint8, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    png = encode_png(pixels)
    webp = encode_webp(pixels)
    if webp is not None and len(webp) <= WEBP_SHARE * len(png):
        return EncodedImage(png, width, height, webp, "image/webp")
    return EncodedImage(png, width, height, png, "image/png")


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


def _encode_figures(report: Report) -> dict[str, EncodedFigure]:
    files = SlugRegistry()
    encoded: dict[str, EncodedFigure] = {}
    for section in report.sections:
        for figure in section.figures():
            if figure.key in encoded:
                raise ValueError(f"two figures share the key {figure.key!r}")
            image = figure.pixels if isinstance(figure.pixels, EncodedImage) else encode_image(figure.pixels)
            name = files.take(figure.key, "figure") + ".png"  # slug again: a key can never leave figures/
            page, page_type = (image.page, image.page_type) if image.page else (image.png, "image/png")
            encoded[figure.key] = EncodedFigure(name, image.width, image.height, image.png, page, page_type,
                                                figure.embed)
    kinds = {figure.key: section.kind for section in report.sections for figure in section.figures()}
    return _within_budget(encoded, kinds)


def _within_budget(encoded: dict[str, EncodedFigure], kinds: dict[str, str] | None = None,
                   budget: int | None = None) -> dict[str, EncodedFigure]:
    """Embed figures by section priority (EMBED_PRIORITY, then report order) until the page budget is spent;
    the rest are linked, not embedded."""
    budget = PAGE_BUDGET if budget is None else budget
    kinds = kinds or {}
    rank = {kind: i for i, kind in enumerate(EMBED_PRIORITY)}
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


def _manifest(report: Report, figures: dict[str, EncodedFigure], arrays_file: str | None) -> dict:
    def section_entry(section: Section) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": section.id, "kind": section.kind, "title": section.title}
        if section.layer is not None:
            entry["layer"] = section.layer
        if section.class_name is not None:
            entry["class"] = section.class_name
        entry["figures"] = [
            {"key": f.key, "file": f"figures/{figures[f.key].file}", "title": f.title, "caption": f.caption,
             "width": figures[f.key].width, "height": figures[f.key].height, "embedded": figures[f.key].embedded}
            for f in section.figures()
        ]
        if section.data:
            entry["data"] = section.data
        if section.arrays and arrays_file:
            entry["arrays"] = sorted(section.arrays)
        return entry

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "generator": GENERATOR,
        "versions": report.versions,
        "created": report.created,
        "title": report.title,
        "model": report.model,
        "options": report.options,
        "images": [
            {"id": image.id, "name": image.name, "path": image.path, "label": image.label,
             "original_size": list(image.original_size), "conversion": image.conversion,
             "prediction": image.prediction, "detail": image.detail}
            for image in report.images
        ],
        "class_names": list(report.class_names),
        "sections": [section_entry(section) for section in report.sections],
        "warnings": list(report.warnings),
        "seconds": report.seconds,
        "arrays": arrays_file,
    }
    for key, value in report.extra.items():
        manifest.setdefault(key, value)
    return _json_safe(manifest)


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


def write_report(report: Report, out: Path, force: bool = False, save_arrays: bool = False) -> Path:
    """Write the report folder atomically; an earlier report at `out` is replaced as a whole."""
    out = Path(out)
    check_output_dir(out, force)
    figures = _encode_figures(report)
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
    summary = summary_markdown(manifest)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        (staging / "figures").mkdir()
        for encoded in figures.values():
            (staging / "figures" / encoded.file).write_bytes(encoded.png)
        render_html(report, figures, staging / "index.html")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                                        encoding="utf-8")
        (staging / SUMMARY_MD).write_text(summary, encoding="utf-8")
        if arrays_file:
            np.savez_compressed(staging / arrays_file, **arrays)
        staging.chmod(0o755)  # mkdtemp makes it private; a report is meant to be read
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _replace(staging: Path, out: Path) -> None:
    """Move `staging` to `out`; an existing `out` is moved aside first and deleted only once the new one is in."""
    if not out.exists():
        staging.rename(out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    retired.rmdir()
    out.rename(retired)
    try:
        staging.rename(out)
    except BaseException:
        retired.rename(out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


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
            shutil.copytree(report, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
            staging.chmod(0o755)
            _replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _write_if_changed(site / "index.html", index_html.encode("utf-8"))
    _write_if_changed(site / ".nojekyll", b"")
