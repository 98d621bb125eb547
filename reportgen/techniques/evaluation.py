"""Dataset-level evaluation, streamed: confusion counts, per-class precision / recall / F1, calibration (ECE), and
the most confident mistakes and least confident correct predictions.

Each statistic is an accumulator (`update` a batch, `merge` another's state, `result`), so one pass over any
number of images, split in any way, gives the same numbers as computing them at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen.techniques.streaming import Ranked, TopK

CALIBRATION_BINS = 15  # Guo et al. 2017 use 15 equal-width confidence bins
EXTREMES = 8  # most confident mistakes, least confident correct predictions shown


@dataclass(frozen=True)
class ClassMetrics:
    class_index: int
    support: int  # labelled images of this class
    predicted: int  # images predicted as this class
    precision: float  # NaN when nothing was predicted as this class
    recall: float  # NaN without support
    f1: float


@dataclass(frozen=True)
class Calibration:
    """Reliability diagram bins and the expected calibration error."""

    edges: np.ndarray  # (bins + 1,)
    counts: np.ndarray  # (bins,)
    confidence: np.ndarray  # (bins,) mean top-1 probability per bin (NaN where empty)
    accuracy: np.ndarray  # (bins,) share correct per bin (NaN where empty)
    ece: float  # sum over bins of count / n * |accuracy - confidence|


@dataclass(frozen=True)
class Evaluation:
    labelled: int
    accuracy: float | None
    confusion: np.ndarray  # (classes, classes): rows label, columns prediction
    per_class: tuple[ClassMetrics, ...]
    calibration: Calibration
    confident_mistakes: tuple[Ranked, ...]  # score: top-1 probability; extra: (label, predicted)
    unsure_correct: tuple[Ranked, ...]


def per_class_metrics(confusion: np.ndarray) -> tuple[ClassMetrics, ...]:
    """Precision, recall and F1 of every class from confusion counts (rows label, columns prediction)."""
    confusion = np.asarray(confusion, np.int64)
    out = []
    for c in range(confusion.shape[0]):
        hits, support, predicted = int(confusion[c, c]), int(confusion[c].sum()), int(confusion[:, c].sum())
        precision = hits / predicted if predicted else float("nan")
        recall = hits / support if support else float("nan")
        f1 = (2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0) \
            if predicted and support else float("nan")
        out.append(ClassMetrics(c, support, predicted, precision, recall, f1))
    return tuple(out)


class ConfusionAccumulator:
    def __init__(self, classes: int) -> None:
        self.counts = np.zeros((classes, classes), np.int64)

    def update(self, labels: np.ndarray, predicted: np.ndarray) -> None:
        """Count the labelled images of a batch (label -1: unlabelled, skipped)."""
        labels, predicted = np.asarray(labels), np.asarray(predicted)
        known = labels >= 0
        np.add.at(self.counts, (labels[known], predicted[known]), 1)

    def merge(self, other: ConfusionAccumulator) -> None:
        self.counts += other.counts

    def result(self) -> np.ndarray:
        return self.counts.copy()


class CalibrationAccumulator:
    def __init__(self, bins: int = CALIBRATION_BINS) -> None:
        self.edges = np.linspace(0.0, 1.0, bins + 1)
        self.counts = np.zeros(bins, np.int64)
        self.confidence_sums = np.zeros(bins, np.float64)
        self.correct = np.zeros(bins, np.int64)

    def update(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        """Top-1 probabilities and whether they were right, for the labelled images of a batch."""
        confidence = np.clip(np.asarray(confidence, np.float64), 0.0, 1.0)
        # Bins are (lo, hi], the first also holds 0: the convention of Guo et al.'s reference code.
        bins = np.clip(np.searchsorted(self.edges, confidence, side="left") - 1, 0, len(self.counts) - 1)
        np.add.at(self.counts, bins, 1)
        np.add.at(self.confidence_sums, bins, confidence)
        np.add.at(self.correct, bins, np.asarray(correct, np.int64))

    def merge(self, other: CalibrationAccumulator) -> None:
        self.counts += other.counts
        self.confidence_sums += other.confidence_sums
        self.correct += other.correct

    def result(self) -> Calibration:
        total = int(self.counts.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            confidence = np.where(self.counts > 0, self.confidence_sums / self.counts, np.nan)
            accuracy = np.where(self.counts > 0, self.correct / self.counts, np.nan)
        gaps = np.abs(np.nan_to_num(accuracy) - np.nan_to_num(confidence)) * self.counts
        ece = float(gaps.sum() / total) if total else float("nan")
        return Calibration(self.edges.copy(), self.counts.copy(), confidence, accuracy, ece)


class EvaluationAccumulator:
    """Everything the `evaluation` section shows, from top-1 predictions, their probabilities and the labels."""

    def __init__(self, classes: int, extremes: int = EXTREMES) -> None:
        self.confusion = ConfusionAccumulator(classes)
        self.calibration = CalibrationAccumulator()
        self.mistakes = TopK(extremes, largest=True)
        self.unsure = TopK(extremes, largest=False)

    def update(self, indices: np.ndarray, names: list[str], labels: np.ndarray, probabilities: np.ndarray) -> None:
        """A batch: image indices and names, labels (-1 unknown), class probabilities (B, classes)."""
        labels = np.asarray(labels, np.int64)
        predicted = np.argmax(probabilities, axis=1)
        confidence = probabilities[np.arange(len(labels)), predicted]
        known = labels >= 0
        self.confusion.update(labels, predicted)
        self.calibration.update(confidence[known], predicted[known] == labels[known])
        extras = [(int(label), int(p)) for label, p in zip(labels, predicted, strict=True)]
        wrong = known & (predicted != labels)
        right = known & (predicted == labels)
        self.mistakes.update(np.where(wrong, confidence, np.nan), names, indices, extras)
        self.unsure.update(np.where(right, confidence, np.nan), names, indices, extras)

    def merge(self, other: EvaluationAccumulator) -> None:
        self.confusion.merge(other.confusion)
        self.calibration.merge(other.calibration)
        self.mistakes.merge(other.mistakes)
        self.unsure.merge(other.unsure)

    def result(self) -> Evaluation:
        confusion = self.confusion.result()
        labelled = int(confusion.sum())
        accuracy = float(np.trace(confusion) / labelled) if labelled else None
        return Evaluation(labelled, accuracy, confusion, per_class_metrics(confusion), self.calibration.result(),
                          self.mistakes.result(), self.unsure.result())
