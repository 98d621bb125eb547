"""Section builders: turn technique results into report sections. One module per section kind.

Each kind's builder (named in `registry.SECTIONS`, which also gives the report order) takes the shared `Analysis`
and the results of the kinds it names in `after`, and returns a `report.SectionResult`: its sections, warnings and
report.json entries. A builder computes nothing itself and changes nothing it is given.
"""

from __future__ import annotations

from reportgen.registry import section_names


def available_sections() -> tuple[str, ...]:
    """Every section kind, in report order."""
    return section_names()
