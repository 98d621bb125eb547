"""A report inline in Jupyter: the page as an iframe's `srcdoc`, so its Content-Security-Policy still holds.

The iframe is sandboxed with scripts allowed but no same-origin access: the report's own script (theme switch)
runs, and nothing in the page can reach the notebook. `section_page` cuts one section (or several) out of the page
with the page's own head and script, so the CSP's hashes still match them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reportgen.errors import InputError

FRAME_HEIGHT = 800  # px; the page scrolls inside the frame
_SECTION_START = re.compile(r'\n<(section|details) id="')  # a folded section is a <details>
_SECTION_END = re.compile(r'\n(?:<section id="|<details id="|<footer>)')


@dataclass(frozen=True)
class InlineReport:
    """HTML that Jupyter shows inline (`_repr_html_`): a report page, or part of one, in an iframe."""

    page: str  # the complete HTML document
    height: int = FRAME_HEIGHT

    def _repr_html_(self) -> str:
        return inline_frame(self.page, self.height)


def inline_frame(page: str, height: int = FRAME_HEIGHT) -> str:
    """An iframe showing the HTML document `page` (escaped into `srcdoc`, the page's bytes otherwise unchanged)."""
    return (f'<iframe class="reportgen-report" srcdoc="{html.escape(page, quote=True)}" sandbox="allow-scripts" '
            f'style="width: 100%; height: {int(height)}px; border: 1px solid #ccc;" '
            'title="reportgen report"></iframe>')


def section_ids(manifest: Mapping[str, Any], section: str) -> list[str]:
    """The ids of the sections `section` names: a section id (`weights-conv1`), a kind (`cam`: every cam
    section) or a layer path (`conv1`: every section of that layer)."""
    sections = manifest.get("sections", [])
    # A kind first: the overview section of a kind has the kind's name as its id (`cam`), and `show("cam")` means
    # every cam section, not that one.
    for matches in ([s for s in sections if s["kind"] == section], [s for s in sections if s["id"] == section],
                    [s for s in sections if s.get("layer") == section]):
        if matches:
            return [s["id"] for s in matches]
    ids = [s["id"] for s in sections]
    kinds = list(dict.fromkeys(s["kind"] for s in sections))
    shown = ", ".join(ids[:20]) + (f", and {len(ids) - 20} more" if len(ids) > 20 else "")
    raise InputError(f"section {section!r} is not in the report; give a kind ({', '.join(kinds)}), a layer or a "
                     f"section id ({shown})")


def section_page(page: str, ids: Sequence[str]) -> str:
    """The page with only the sections `ids`: its head (style, CSP), those sections, and its script.

    The template writes every section as a top-level `<section id=...>` (or `<details id=...>`, folded) on a line
    of its own, followed by the next one or the footer; names inside are escaped, so those markers cannot come from
    a name. A folded section asked for by name is shown open."""
    head_end = page.index("<body>") + len("<body>")
    script = page[page.rindex("<script>"):page.rindex("</script>") + len("</script>")]
    parts = []
    for section_id in ids:
        found = re.compile(_SECTION_START.pattern + re.escape(html.escape(section_id, quote=True)) + '"').search(page)
        if found is None:
            raise InputError(f"section {section_id!r} is not in the page")
        start = found.start()
        end = _SECTION_END.search(page, start + 1)
        part = page[start:end.start() if end else page.index("</main>")]
        parts.append(part.replace("\n<details id=", "\n<details open id=", 1))
    return page[:head_end] + '\n<main id="main">' + "".join(parts) + "\n</main>\n" + script + "\n</body>\n</html>\n"
