"""Per-class statistics over a whole image set, streamed: accuracy, the class-average Grad-CAM map, the images
the model is most and least sure of, and which filters of the CAM layer each class uses.

An image belongs to its labelled class, or to its predicted class when it has no label. Each image's map is scaled
to its own maximum before it is averaged, so every image weighs the same in its class's average.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen.techniques.streaming import Ranked, TopK

CLASS_EXTREMES = 4


@dataclass(frozen=True)
class ClassSummary:
    class_index: int
    images: int
    labelled: int
    correct: int
    mean_map: np.ndarray | None  # (h, w) mean of the images' unit-scaled Grad-CAM maps; None without a CAM layer
    filter_means: np.ndarray | None  # (channels,) mean activation of each CAM-layer channel over its images
    most_confident: tuple[Ranked, ...]  # by the probability of this class
    least_confident: tuple[Ranked, ...]

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


class ClassAccumulator:
    def __init__(self, classes: int, map_shape: tuple[int, int] | None, channels: int | None,
                 k: int = CLASS_EXTREMES) -> None:
        self.classes = classes
        self.counts = np.zeros(classes, np.int64)
        self.labelled = np.zeros(classes, np.int64)
        self.correct = np.zeros(classes, np.int64)
        self.map_sums = np.zeros((classes, *map_shape), np.float64) if map_shape else None
        self.filter_sums = np.zeros((classes, channels), np.float64) if channels else None
        self.most = [TopK(k, largest=True) for _ in range(classes)]
        self.least = [TopK(k, largest=False) for _ in range(classes)]

    def update(self, indices: np.ndarray, names: list[str], labels: np.ndarray, probabilities: np.ndarray,
               maps: np.ndarray | None = None, channel_means: np.ndarray | None = None) -> None:
        """labels (B,) with -1 unknown; probabilities (B, classes); maps (B, h, w) of each image's own class;
        channel_means (B, channels) of the CAM layer."""
        labels = np.asarray(labels, np.int64)
        predicted = np.argmax(probabilities, axis=1)
        owner = np.where(labels >= 0, labels, predicted)
        np.add.at(self.counts, owner, 1)
        np.add.at(self.labelled, labels[labels >= 0], 1)
        np.add.at(self.correct, labels[(labels >= 0) & (predicted == labels)], 1)
        if self.map_sums is not None and maps is not None:
            peaks = maps.reshape(len(maps), -1).max(axis=1)
            unit = maps / np.where(peaks > 0, peaks, 1.0)[:, None, None]
            np.add.at(self.map_sums, owner, unit.astype(np.float64))
        if self.filter_sums is not None and channel_means is not None:
            np.add.at(self.filter_sums, owner, channel_means.astype(np.float64))
        own = probabilities[np.arange(len(owner)), owner]
        for c in np.unique(owner):
            members = np.flatnonzero(owner == c)
            picked = [names[i] for i in members]
            self.most[c].update(own[members], picked, np.asarray(indices)[members])
            self.least[c].update(own[members], picked, np.asarray(indices)[members])

    def merge(self, other: ClassAccumulator) -> None:
        self.counts += other.counts
        self.labelled += other.labelled
        self.correct += other.correct
        if self.map_sums is not None and other.map_sums is not None:
            self.map_sums += other.map_sums
        if self.filter_sums is not None and other.filter_sums is not None:
            self.filter_sums += other.filter_sums
        for mine, theirs in zip(self.most + self.least, other.most + other.least, strict=True):
            mine.merge(theirs)

    def result(self) -> list[ClassSummary]:
        out = []
        for c in range(self.classes):
            n = int(self.counts[c])
            mean_map = self.map_sums[c] / n if self.map_sums is not None and n else None
            filter_means = self.filter_sums[c] / n if self.filter_sums is not None and n else None
            out.append(ClassSummary(c, n, int(self.labelled[c]), int(self.correct[c]),
                                    None if mean_map is None else mean_map.astype(np.float32),
                                    None if filter_means is None else filter_means.astype(np.float32),
                                    self.most[c].result(), self.least[c].result()))
        return out
