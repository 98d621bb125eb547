"""index.html: the figures within the page budget (the rest linked from figures/), the table of contents, the
Content-Security-Policy, and the template."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from reportgen import registry, watchdog
from reportgen.render.encode import FigureEncoder, encode_image
from reportgen.report import EncodedImage, Figure, PendingImage, Report, SlugRegistry


def templates_dir() -> Path:
    """Templates ship inside the wheel as `reportgen/templates`; in a source checkout they sit at the top level."""
    packaged = Path(str(resources.files("reportgen"))) / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "templates"


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


# What the page may embed, in bytes of base64: figures past it are linked from figures/ instead, and the
# report says which. GitHub refuses files over 100 MB and browsers struggle with pages of 80 MB; with the tables
# and text this keeps index.html under 10 MB.
PAGE_BUDGET = int(7.5 * 1024 * 1024)


DISPLAY_WIDTH = 1000  # px a figure is drawn at, at most, when its pixels are fewer (the text column is ~1100 px)
DISPLAY_ZOOM = 2.0  # never more than this many page pixels per figure pixel


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
    def display_width(self) -> int:
        """The width the page draws it at: narrow figures (a few tiles) up to twice their pixels, so they use the
        page's width instead of a third of it; the browser shrinks any figure wider than the page, and a click
        shows it at full size."""
        return round(self.width * min(DISPLAY_ZOOM, max(1.0, DISPLAY_WIDTH / max(self.width, 1))))

    @property
    def display_height(self) -> int:
        return round(self.height * self.display_width / max(self.width, 1))

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


def encode_figures(report: Report, encoder: FigureEncoder | None = None) -> dict[str, EncodedFigure]:
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


SEVERITY_LABELS = {"problem": "Problem", "caution": "Caution", "ok": "OK"}


def folded_sections(report: Report) -> set[str]:
    """The sections the page shows folded (`<details>`): every section after the first of its kind (a layer's, a
    class's, a method's), so the first screen holds the verdict and each kind's overview, and a reader opens the
    detail they want."""
    seen: set[str] = set()
    folded = set()
    for section in report.sections:
        if section.kind in seen:
            folded.add(section.id)
        seen.add(section.kind)
    return folded


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def page_assets() -> tuple[str, str, str]:
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
    css, js, csp = page_assets()
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

    anchors |= {"verdict"} if report.verdict else set()
    anchors |= {"warnings"} if report.warnings else set()

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
        folded_sections=folded_sections(report),
        severity_labels=SEVERITY_LABELS,
    ).dump(str(path), encoding="utf-8")
