"""The published site's index page and the copy of a report into it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from markupsafe import Markup

from reportgen.render.folder import raise_if_disk_full, swap_into_place
from reportgen.render.page import environment, page_assets

SITE_GENERATOR = "reportgen site"  # the site index's <meta name="generator">: marks an index.html we may replace


def render_site_index(title: str, models: list[dict[str, Any]]) -> str:
    """The site's index.html: every published model and version, with the report's own CSS and CSP.

    `models`: [{slug, name, versions: [{label, href, summary, title, date, images, accuracy, params}]}], hrefs
    relative to the site root.
    """
    from reportgen import __version__

    css, js, csp = page_assets()
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
            swap_into_place(staging, target)
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
