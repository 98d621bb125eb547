"""Section builders: turn technique results into report sections. One module per section kind.

Each builder takes the shared `Analysis` and returns sections; the order here is the order in the report.
"""

from __future__ import annotations

from collections.abc import Callable

from reportgen.analysis import Analysis
from reportgen.report import Section
from reportgen.sections import (
    cams,
    classes,
    dataset_examples,
    evaluation,
    feature_maps,
    filter_patterns,
    predictions,
    summary,
    weights,
)

SectionBuilder = Callable[[Analysis], list[Section]]

BUILDERS: dict[str, SectionBuilder] = {
    "summary": summary.build,
    "weights": weights.build,
    "feature_maps": feature_maps.build,
    "filter_patterns": filter_patterns.build,
    "dataset_examples": dataset_examples.build,
    "predictions": predictions.build,
    "evaluation": evaluation.build,
    "cam": cams.build,
    "class": classes.build,
}


def available_sections() -> tuple[str, ...]:
    return tuple(BUILDERS)
