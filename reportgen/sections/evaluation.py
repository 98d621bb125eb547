"""The `evaluation` section: the model over every labelled image of the set, from the dataset pass — accuracy,
per-class precision, recall, F1 and support, the confusion matrix, a reliability diagram with the expected
calibration error, and thumbnails of the most confident mistakes and least confident correct predictions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from reportgen import figures, sample_sizes
from reportgen.analysis import Analysis
from reportgen.report import Facts, Figure, FigureRow, Section, SectionResult, Table, Text
from reportgen.sections.predictions import prediction_plan
from reportgen.techniques.evaluation import Calibration
from reportgen.techniques.streaming import Ranked

KIND = "evaluation"
MAX_MATRIX_CLASSES = 30
THUMB = 96


def _caveat(minimum: sample_sizes.Minimum, n: int) -> str:
    text = sample_sizes.caveat(minimum, n)
    return f". {text}" if text else ""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def thumbnails(analysis: Analysis, ranked: tuple[Ranked, ...]) -> np.ndarray:
    """The ranked images as labelled thumbnails (`label -> prediction p`)."""
    names = analysis.class_names.names
    images = analysis.read_images([r.index for r in ranked])
    tiles, labels = [], []
    for entry, pixels in zip(ranked, images, strict=True):
        tiles.append(figures.fit_box(pixels, THUMB))
        label, predicted = entry.extra if entry.extra else (-1, -1)
        if label == predicted:
            labels.append(f"{names[label]}\n{entry.score:.0%}")
        else:
            labels.append(f"{names[label]} -> {names[predicted]}\n{entry.score:.0%}" if label >= 0 else
                          f"{entry.score:.0%}")
    return figures.fit_width(figures.tile_grid(tiles, columns=min(8, len(tiles)), labels=labels))


def build(analysis: Analysis, earlier: Mapping[str, SectionResult]) -> SectionResult:
    dataset = analysis.dataset
    if dataset is None:
        return SectionResult(())
    evaluation = dataset.evaluation
    names = analysis.class_names.names
    facts = [
        ("Images", f"{dataset.images} read ({dataset.listed - dataset.images} skipped), {evaluation.labelled} with a "
                   "label that is a class"),
        ("Dataset pass", "every image once, in batches: decoding, one forward pass and, for the class maps, one "
                         "backward pass to the CAM layer (timings in report.json: the page stays reproducible)"),
        ("Per-image figures", f"{len(analysis.detail_indices)} images (the detail sample: "
                              + ("chosen with --detail-images" if analysis.options.detail_images else
                                 "the most confident mistakes, then stratified over classes, from --seed") + ")"),
    ]
    data: dict[str, Any] = {"accuracy": evaluation.accuracy, "labelled": evaluation.labelled}
    blocks: list = []
    if not evaluation.labelled:
        blocks = [Facts(tuple(facts)), Text("No image has a label that is one of the model's classes, so there is "
                                            "nothing to evaluate (put images in folders named after their class).")]
        return SectionResult((Section(id=KIND, kind=KIND, title="Evaluation", blocks=tuple(blocks), data=data),),
                             manifest={"evaluation": data})
    calibration = evaluation.calibration
    facts += [("Accuracy", f"{evaluation.accuracy:.1%} ({int(np.trace(evaluation.confusion))} of "
                           f"{evaluation.labelled})" + _caveat(sample_sizes.ACCURACY, evaluation.labelled)),
              ("Expected calibration error", f"{calibration.ece:.3f} ({len(calibration.counts)} equal-width bins of "
                                             f"top-1 probability over {evaluation.labelled} images; Guo et al. 2017)"
                                             + _caveat(sample_sizes.CALIBRATION, evaluation.labelled))]
    blocks.append(Facts(tuple(facts)))
    occurring = [m for m in evaluation.per_class if m.support or m.predicted]
    plan = prediction_plan(analysis)
    links = {c: link for c in range(len(names)) if (link := plan.class_link(c, names))}
    blocks.append(Table(
        columns=("Class", "Support", "Predicted", "Precision", "Recall", "F1"),
        rows=tuple((names[m.class_index], str(m.support), str(m.predicted), _fmt(m.precision), _fmt(m.recall),
                    _fmt(m.f1)) for m in occurring),
        caption="Every class that occurs as a label or a prediction, over every labelled image. Precision: share "
                "of the images predicted as the class that are of it; recall: share of its images predicted as it.",
        row_links=tuple((links[m.class_index],) if m.class_index in links else () for m in occurring),
    ))
    shown = [m.class_index for m in occurring]
    matrix = evaluation.confusion[np.ix_(shown, shown)]
    if len(shown) <= MAX_MATRIX_CLASSES:
        labels = [names[c] for c in shown]
        confusion = Figure(key="evaluation-confusion", title="Confusion matrix",
                           caption="Rows: the label; columns: the top prediction; every labelled image of the set.",
                           pixels=analysis.plot(figures.plot_matrix, matrix, labels, labels, "Confusion matrix",
                                                "predicted class", "label"))
        reliability = _reliability_figure(analysis, calibration, evaluation.labelled)
        blocks.append(FigureRow((confusion, reliability)) if isinstance(reliability, Figure) else confusion)
        if not isinstance(reliability, Figure):
            blocks.append(reliability)
    else:
        pairs = [(names[shown[r]], names[shown[c]], int(matrix[r, c])) for r, c in zip(*np.nonzero(matrix),
                                                                                      strict=True) if r != c]
        pairs.sort(key=lambda row: (-row[2], row[0], row[1]))
        blocks.append(Table(columns=("Label", "Predicted", "Images"), rows=tuple(pairs[:50]),
                            caption=f"{len(shown)} classes occur, too many for a matrix: the 50 most frequent "
                                    "confusions; report.json holds the whole matrix."))
        blocks.append(_reliability_figure(analysis, calibration, evaluation.labelled))
    for ranked, key, title, caption in (
            (evaluation.confident_mistakes, "evaluation-mistakes", "Most confident mistakes",
             "The wrong predictions the model was surest of (label > prediction, probability)."),
            (evaluation.unsure_correct, "evaluation-unsure", "Least confident correct predictions",
             "The right predictions the model was least sure of.")):
        if ranked:
            blocks.append(Figure(key=key, title=title, caption=caption,
                                 pixels=analysis.encode(thumbnails(analysis, ranked))))
            rows = []
            row_links = []
            for entry in ranked:
                label, predicted = entry.extra
                rows.append((entry.name, names[label], names[predicted], f"{entry.score:.1%}"))
                anchor = f"prediction-{analysis.all_image_ids[entry.index]}"
                row_links.append((("prediction", f"#{anchor}"),))
            blocks.append(Table(columns=("Image", "Label", "Predicted", "Probability"), rows=tuple(rows),
                                caption=f"{title}; images of the detail sample link to their predictions and maps.",
                                row_links=tuple(row_links)))
    data.update({
        "per_class": [{"class_index": m.class_index, "class_name": names[m.class_index], "support": m.support,
                       "precision": m.precision, "recall": m.recall, "f1": m.f1} for m in evaluation.per_class],
        "confusion": evaluation.confusion.tolist(),
        "ece": calibration.ece,
        "calibration": {"edges": calibration.edges.tolist(), "counts": calibration.counts.tolist(),
                        "confidence": calibration.confidence.tolist(), "accuracy": calibration.accuracy.tolist()},
        "confident_mistakes": [_entry(analysis, r) for r in evaluation.confident_mistakes],
        "unsure_correct": [_entry(analysis, r) for r in evaluation.unsure_correct],
    })
    summary = {"accuracy": evaluation.accuracy, "ece": calibration.ece, "labelled": evaluation.labelled}
    return SectionResult((Section(id=KIND, kind=KIND, title="Evaluation", blocks=tuple(blocks), data=summary),),
                         manifest={"evaluation": data})


def _reliability_figure(analysis: Analysis, calibration: Calibration, labelled: int) -> Figure | Text:
    """The reliability diagram; from too few images (`sample_sizes.CALIBRATION`) a sentence instead: ten bars of a
    handful of images each would look like a finding."""
    if not sample_sizes.enough(sample_sizes.CALIBRATION, labelled):
        return Text(f"No reliability diagram: {sample_sizes.caveat(sample_sizes.CALIBRATION, labelled)} The bins' "
                    "numbers are in report.json.")
    return Figure(key="evaluation-reliability", title="Reliability diagram",
                  caption=(f"Accuracy against confidence per bin; dashed: perfect calibration; ECE "
                           f"{calibration.ece:.3f}. Below: the share of images per bin."),
                  pixels=analysis.plot(figures.plot_reliability, calibration.confidence, calibration.accuracy,
                                       calibration.counts, calibration.edges, "Reliability"))


def _entry(analysis: Analysis, ranked: Ranked) -> dict[str, Any]:
    label, predicted = ranked.extra
    return {"image": ranked.name, "id": analysis.all_image_ids[ranked.index], "label_index": label,
            "predicted_index": predicted, "probability": ranked.score}
