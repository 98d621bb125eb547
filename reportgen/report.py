"""The report model: sections made of figures, tables and text, as plain frozen dataclasses.

Section builders produce these; `render` turns them into files. A figure holds its pixels, or the PNG the renderer
already made of them: builders that make hundreds of figures hand each one to the renderer's encoder as they go
(`Analysis.encode`), so a report's memory holds compressed figures, not every figure's raw pixels at once; the
encoder compresses them on a thread pool while the next figures are computed (a `PendingImage` until then).
Encoding is the renderer's job either way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EncodedImage:
    """A figure's pixels as the renderer encoded them: PNG for figures/, and what the page embeds (the smaller of
    the PNG and a WebP, `page_type` says which)."""

    png: bytes
    width: int
    height: int
    page: bytes = b""
    page_type: str = "image/png"


class PendingImage:
    """A figure the renderer's encoder is still compressing (on its thread pool); `result()` waits for it."""

    def __init__(self, future: Future[EncodedImage]) -> None:
        self._future = future

    def result(self) -> EncodedImage:
        return self._future.result()


@dataclass(frozen=True)
class Figure:
    """An image for the page and for `figures/<key>.png`."""

    key: str  # unique, file-name safe (see `slugify`)
    title: str
    caption: str
    pixels: np.ndarray | EncodedImage | PendingImage  # (H, W, 3) uint8 RGB, encoded, or being encoded
    embed: bool = True  # False: only in figures/, the page links to it (detail a reader rarely needs inline)

    def __post_init__(self) -> None:
        if isinstance(self.pixels, (EncodedImage, PendingImage)):
            return
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 3 or self.pixels.shape[2] != 3:
            raise ValueError(f"figure {self.key}: pixels must be (H, W, 3) uint8, got {self.pixels.shape}")


@dataclass(frozen=True)
class FigureRow:
    """Figures shown side by side (e.g. trained and freshly initialised)."""

    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    caption: str = ""
    row_ids: tuple[str, ...] = ()  # optional anchor per row
    row_links: tuple[tuple[tuple[str, str], ...], ...] = ()  # per row: (label, #anchor) links


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Facts:
    """Label-value pairs, shown as a definition list."""

    items: tuple[tuple[str, str], ...]


Block = Figure | FigureRow | Table | Text | Facts


@dataclass(frozen=True)
class Section:
    id: str  # page anchor, unique
    kind: str  # one of `registry.section_names()`
    title: str
    blocks: tuple[Block, ...]
    layer: str | None = None
    class_name: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # extra fields for report.json (statistics)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # for arrays.npz, keys unique across the report

    def figures(self) -> list[Figure]:
        out: list[Figure] = []
        for block in self.blocks:
            if isinstance(block, Figure):
                out.append(block)
            elif isinstance(block, FigureRow):
                out.extend(block.figures)
        return out


@dataclass(frozen=True)
class SectionResult:
    """What one section kind's builder returns: its sections, the warnings it raises, the top-level report.json
    entries it contributes (`manifest`) and what later kinds may use (`shared`, read by the kinds that name it in
    `registry.SectionKind.after`)."""

    sections: tuple[Section, ...]
    warnings: tuple[str, ...] = ()
    manifest: Mapping[str, Any] = field(default_factory=dict)
    shared: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageEntry:
    id: str
    name: str
    path: str
    label: str | None
    original_size: tuple[int, int]
    conversion: str = ""  # what was done to the pixels besides resizing (e.g. "RGB to grey (Rec. 601 luma)")
    prediction: dict[str, Any] | None = None  # top-1 class and probability, from the dataset pass
    detail: bool = True  # in the detail sample (per-image figures)


@dataclass(frozen=True)
class Report:
    title: str
    created: str  # ISO 8601, UTC
    model: dict[str, Any]
    options: dict[str, Any]
    images: tuple[ImageEntry, ...]
    class_names: tuple[str, ...]
    sections: tuple[Section, ...]
    warnings: tuple[str, ...]
    seconds: dict[str, float]  # per section kind
    versions: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)  # technique lists for report.json
    verdict: tuple[Any, ...] = ()  # `verdict.Finding`s, problems first: the top of the page and of summary.md


def slugify(text: str, fallback: str = "item") -> str:
    """A lower-case ASCII slug safe for anchors and file names: `../../x` -> `x`, `Café 1/β` -> `cafe-1`."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:80] or fallback


class SlugRegistry:
    """Hands out unique slugs: a second `conv` becomes `conv-2`."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def take(self, text: str, fallback: str = "item") -> str:
        base = slugify(text, fallback)
        slug, n = base, 1
        while slug in self._used:
            n += 1
            slug = f"{base}-{n}"
        self._used.add(slug)
        return slug
