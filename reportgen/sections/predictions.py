"""The `predictions` section: top-k per image, accuracy and a confusion matrix when the images are labelled.

It also owns what the `cam` and `class` sections share: the predictions, the classes to explain per image, and
the anchor of every class section. `shared` computes each once per report, whichever section asks first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from reportgen import figures
from reportgen.analysis import Analysis
from reportgen.report import Facts, Figure, Section, SectionResult, SlugRegistry, Table, Text
from reportgen.sections.anchors import image_maps_id
from reportgen.techniques.predictions import (
    UNIFORM_SPREAD,
    Predictions,
    Probabilities,
    Target,
    compute_predictions,
    convert,
    final_layer,
    image_targets,
    predict_raw,
    probability_method,
    resolve_classes,
)

T = TypeVar("T")
# Beyond this many classes a confusion matrix plot is unreadable; the table lists the confused pairs instead.
MAX_MATRIX_CLASSES = 30
# The classes overview lists every class (each row an anchor) up to this many; beyond, only those that occur.
MAX_LISTED_CLASSES = 100


def shared(analysis: Analysis, key: str, compute: Callable[[], T]) -> T:
    """Compute once per report: the predictions and maps feed three section kinds, in any selection."""
    return analysis.shared(key, compute)


@dataclass(frozen=True)
class PredictionPlan:
    """The predictions, each image's classes to explain, and the section anchor of every class that occurs."""

    predictions: Predictions
    to_probabilities: Callable[[np.ndarray], np.ndarray]  # raw model outputs -> probabilities, as decided here
    targets: list[tuple[Target, ...]]
    requested: tuple[int, ...]
    class_ids: dict[int, str]  # class index -> its anchor "class-<slug>", for every class
    occurring: tuple[int, ...]  # classes with a section: a top prediction, a label or asked for
    unmatched_labels: tuple[str, ...]  # image labels that are not class names

    def anchored(self, index: int) -> bool:
        """A class has an anchor: its section, or its row of the classes overview."""
        return index in self.occurring or len(self.class_ids) <= MAX_LISTED_CLASSES

    def class_link(self, index: int, names: tuple[str, ...]) -> tuple[str, str] | None:
        return (names[index], f"#{self.class_ids[index]}") if self.anchored(index) else None


PLAN_KEY = "predictions"  # the plan's key in `Analysis.shared`


def prediction_plan(analysis: Analysis) -> PredictionPlan:
    return shared(analysis, PLAN_KEY, lambda: _plan(analysis))


def _plan(analysis: Analysis) -> PredictionPlan:
    names = analysis.class_names.names
    requested = resolve_classes(analysis.options.classes, names)  # fail on a bad --classes before any work
    analysis.progress("predictions", f"{len(analysis.inputs)} images")
    raw = predict_raw(analysis.model, analysis.inputs, analysis.options.batch_size or 32, analysis.image_flops)
    activation = final_layer(analysis.model).activation
    method, description = probability_method(raw, activation)
    probabilities = Probabilities(convert(raw, method), method, description)
    labels = [analysis.class_names.index_of(source.label) for source in analysis.images.sources]
    unmatched = sorted({s.label for s, index in zip(analysis.images.sources, labels, strict=True)
                        if s.label is not None and index is None})
    predictions = compute_predictions(probabilities, labels, analysis.options.top_k)
    targets = image_targets(predictions.predicted, predictions.labels, requested)
    occurring = tuple(sorted({t.class_index for row in targets for t in row}))
    registry = SlugRegistry()
    # Slugs over every class in class order, so a class keeps its anchor whichever classes occur.
    class_ids = {index: f"class-{registry.take(name, str(index))}" for index, name in enumerate(names)}
    return PredictionPlan(predictions, lambda values: convert(values, method), targets, requested, class_ids,
                          occurring, tuple(unmatched))


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    plan = prediction_plan(analysis)
    warnings: list[str] = []
    predictions = plan.predictions
    names = analysis.class_names.names
    n = len(predictions.labels)
    k = predictions.top_indices.shape[1]
    if plan.unmatched_labels:
        shown = ", ".join(plan.unmatched_labels[:5]) + (", ..." if len(plan.unmatched_labels) > 5 else "")
        warnings.append(f"predictions: image labels {shown} are not class names of the model; those images count "
                        "as unlabelled (give --class-names to match them)")

    facts = [
        ("Probabilities", predictions.probabilities.description),
        ("Class names", f"{len(names)} classes, names from {analysis.class_names.source}"),
        ("Images", f"{n} ({predictions.labelled} with a label that is a class name)"),
    ]
    if analysis.dataset is not None and analysis.dataset.images > n:
        facts[-1] = ("Images", f"the {n} images of the detail sample ({predictions.labelled} labelled) of "
                               f"{analysis.dataset.images}; the evaluation section and report.json's images cover "
                               "every one")
    if predictions.accuracy is not None:
        correct = round(predictions.accuracy * predictions.labelled)
        facts.append(("Accuracy (top-1)", f"{_percent(predictions.accuracy)} ({correct} of {predictions.labelled})"))
        facts.append((f"Accuracy (top-{k})", _percent(predictions.top_k_accuracy or 0.0)))

    uniform = predictions.uniform
    if uniform.any():
        warnings.append(
            f"predictions: {int(uniform.sum())} of {n} images get a uniform output (every class within "
            f"{UNIFORM_SPREAD:.0%} of the same probability): the model tells no class apart on them, so their "
            "'top' class and its maps mean nothing")
        facts.append(("Uniform outputs", f"{int(uniform.sum())} of {n} images: no class preferred"))
    rows, row_ids, row_links, manifest = [], [], [], []
    for i, (image_id, source) in enumerate(zip(analysis.image_ids, analysis.images.sources, strict=True)):
        label = int(predictions.labels[i])
        tops = [(int(c), float(p)) for c, p in zip(predictions.top_indices[i], predictions.top_probabilities[i],
                                                     strict=True)]
        correct = None if label < 0 else tops[0][0] == label
        cells = [source.name, names[label] if label >= 0 else (source.label or "")]
        if uniform[i]:  # no class is preferred: listing one first would be an accident of class order
            cells += [f"uniform: every class {_percent(tops[0][1])}"] + [""] * (k - 1)
        else:
            cells += [f"{names[c]} ({_percent(p)})" for c, p in tops]
        cells.append("" if correct is None else ("yes" if correct else "no"))
        rows.append(tuple(cells))
        row_ids.append(f"prediction-{image_id}")
        links = [plan.class_link(c, names) for c in dict.fromkeys([tops[0][0], *([label] if label >= 0 else [])])]
        row_links.append((*(link for link in links if link), ("maps", f"#{image_maps_id(analysis, i)}")))
        manifest.append({
            "image": image_id, "name": source.name, "label": source.label, "label_index": label if label >= 0 else None,
            "top_k": [{"class_index": c, "class_name": names[c], "probability": p} for c, p in tops],
            "correct": correct, "uniform": bool(uniform[i]),
        })
    blocks: list = [Facts(tuple(facts)), Table(
        columns=("Image", "Label", *[f"Top {j + 1}" for j in range(k)], "Correct"),
        rows=tuple(rows),
        caption=f"The {k} most probable classes of every image; links go to the class sections.",
        row_ids=tuple(row_ids),
        row_links=tuple(row_links),
    )]
    data: dict[str, Any] = {"probabilities": predictions.probabilities.method, "top_k": k, "images": n,
                            "labelled": predictions.labelled, "accuracy": predictions.accuracy,
                            "top_k_accuracy": predictions.top_k_accuracy, "uniform_outputs": int(uniform.sum())}
    sections = analysis.options.sections
    evaluated = analysis.dataset is not None and analysis.dataset.evaluation.labelled > 0 and (
        sections is None or "evaluation" in sections)
    if evaluated:  # the evaluation section draws the confusion matrix over every image: once per page
        blocks.append(Text("Accuracy, the confusion matrix and calibration over every labelled image are in the "
                           "evaluation section."))
    elif predictions.confusion is not None:
        blocks.extend(_confusion_blocks(predictions, names, data, analysis.plot))
    else:
        blocks.append(Text("No image has a label that is one of the model's classes, so there is no accuracy or "
                           "confusion matrix (put images in folders named after their class)."))
    return SectionResult((Section(id="predictions", kind="predictions", title="Predictions", blocks=tuple(blocks),
                                  data=data),), tuple(warnings), manifest={"predictions": manifest})


def _confusion_blocks(predictions: Predictions, names: tuple[str, ...], data: dict[str, Any],
                      plot: Callable[..., Any]) -> list:
    """The confusion matrix over the classes that occur (as a label or a top prediction), as a plot (`plot`,
    `Analysis.plot`) and a table."""
    confusion = predictions.confusion
    assert confusion is not None
    labelled = predictions.labels >= 0
    shown = sorted(set(predictions.labels[labelled].tolist()) | set(predictions.predicted[labelled].tolist()))
    matrix = confusion[np.ix_(shown, shown)]
    data["confusion"] = {"classes": shown, "names": [names[c] for c in shown], "matrix": matrix.tolist()}
    if len(shown) > MAX_MATRIX_CLASSES:
        pairs = [(names[t], names[p], int(confusion[t, p])) for t, p in zip(*np.nonzero(confusion), strict=True)]
        pairs.sort(key=lambda row: (-row[2], row[0], row[1]))
        return [Table(columns=("Label", "Predicted", "Images"), rows=tuple(pairs),
                      caption=f"{len(shown)} classes occur, too many for a matrix: every (label, prediction) pair "
                              "with its number of images, most frequent first.")]
    labels = [names[c] for c in shown]
    caption = ("Rows: the label; columns: the top prediction; the diagonal counts correct predictions. Only classes "
               "that occur as a label or a prediction are shown.")
    return [Figure(key="predictions-confusion", title="Confusion matrix", caption=caption + " The counts are in "
                   "report.json (this section's data).",
                   pixels=plot(figures.plot_matrix, matrix, labels, labels, "Confusion matrix (labelled images)",
                               "predicted class", "label"))]
