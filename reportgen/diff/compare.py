"""The arithmetic of a diff between two reports: pure functions of arrays and manifest entries, no files.

Two reports are matched by name, never by position: images by their name below the images folder, weights by
(layer path, tensor), heatmaps by (image, class, method), filter patterns by (layer, filter, direction). What
matches is compared; what does not is listed.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np

from reportgen.report_folder.facts import ImagePrediction
from reportgen.report_folder.schema import Heatmap

if TYPE_CHECKING:  # the weights' statistics import Keras; `check` pairs predictions and maps without it
    from reportgen.techniques.weights import WeightStats

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Matching:
    """Keys found in both reports (in the new report's order) and those found in one only."""

    both: tuple[Any, ...]
    only_old: tuple[Any, ...]
    only_new: tuple[Any, ...]


def match_keys(old: Iterable[K], new: Iterable[K]) -> Matching:
    old_keys, new_keys = list(dict.fromkeys(old)), list(dict.fromkeys(new))
    old_set, new_set = set(old_keys), set(new_keys)
    return Matching(tuple(k for k in new_keys if k in old_set), tuple(k for k in old_keys if k not in new_set),
                    tuple(k for k in new_keys if k not in old_set))


# -------------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class TensorChange:
    """One weight tensor in both versions, with shared histogram bins."""

    layer: str
    tensor: str
    layer_type: str
    old: np.ndarray
    new: np.ndarray
    old_stats: WeightStats
    new_stats: WeightStats
    bin_edges: np.ndarray
    old_counts: np.ndarray
    new_counts: np.ndarray

    @property
    def same_shape(self) -> bool:
        return self.old.shape == self.new.shape

    @property
    def relative_change(self) -> float:
        """||new - old|| / ||old||: how far the new version moved this tensor (NaN when shapes differ)."""
        if not self.same_shape:
            return float("nan")
        old_norm = float(np.linalg.norm(self.old.astype(np.float64)))
        diff = float(np.linalg.norm(self.new.astype(np.float64) - self.old))
        return diff / old_norm if old_norm > 0 else (0.0 if diff == 0 else float("inf"))

    @property
    def max_abs_change(self) -> float:
        if not self.same_shape:
            return float("nan")
        return float(np.max(np.abs(self.new.astype(np.float64) - self.old), initial=0.0))


def compare_tensor(layer: str, tensor: str, layer_type: str, old: np.ndarray, new: np.ndarray) -> TensorChange:
    from reportgen.techniques.weights import histogram, weight_stats

    old, new = np.asarray(old, np.float32), np.asarray(new, np.float32)
    edges, old_counts, new_counts = histogram(old, new)
    return TensorChange(layer, tensor, layer_type, old, new, weight_stats(old), weight_stats(new), edges,
                        old_counts, new_counts)


# ---------------------------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class PredictionChange:
    """One image's top prediction in both versions."""

    name: str  # image name (the match key)
    image: str  # image id in the new report
    label: str | None
    old: ImagePrediction
    new: ImagePrediction

    @property
    def flipped(self) -> bool:
        """The top class changed."""
        return self.old.predicted != self.new.predicted

    @property
    def verdict(self) -> str:
        """fixed (wrong -> right), broken (right -> wrong), changed (another class) or the empty string."""
        if not self.flipped:
            return ""
        if self.old.correct is False and self.new.correct is True:
            return "fixed"
        if self.old.correct is True and self.new.correct is False:
            return "broken"
        return "changed"


def compare_predictions(old: Mapping[str, ImagePrediction], new: Mapping[str, ImagePrediction],
                        old_names: Mapping[str, str], new_names: Mapping[str, str]) -> list[PredictionChange]:
    """Pair the predictions of images present in both reports (by image name), in the new report's order. A name
    that more than one image of either report has pairs nothing (`report_folder.facts.ambiguous_names`)."""
    unclear = _repeated(old_names.values()) | _repeated(new_names.values())
    old_by_name = {name: p for image, p in old.items() if (name := old_names.get(image, image)) not in unclear}
    changes = []
    for image, prediction in new.items():
        name = new_names.get(image, image)
        if name in old_by_name:
            label = prediction.label if prediction.label is not None else old_by_name[name].label
            changes.append(PredictionChange(name, image, label, old_by_name[name], prediction))
    return changes


# ------------------------------------------------------------------------------------------------- heatmaps


def _repeated(names: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    return {name for name in names if name in seen or seen.add(name)}  # type: ignore[func-returns-value]


def keyed_maps(names: Mapping[str, str], entries: Iterable[Heatmap]) -> dict[tuple[str, str, str], Heatmap]:
    """The "heatmaps" entries of a report by match key; entries without a key, or of an image whose name another
    image of the report has too, are left out (they cannot be paired)."""
    unclear = _repeated(names.values())
    return {k: e for e in entries if (k := map_key(names, e)) is not None and k[0] not in unclear}


def map_key(names: Mapping[str, str], entry: Heatmap) -> tuple[str, str, str] | None:
    """A "heatmaps" entry's match key: (image name, class index or else name, method); None when the entry has
    neither class. `names` maps the report's image ids to their names."""
    klass = entry.class_index if entry.class_index is not None else entry.class_name
    if klass is None:
        return None
    return names.get(entry.image, entry.image), str(klass), entry.method


def as_map(array: np.ndarray | None) -> np.ndarray | None:
    """A heatmap as a 2-D float array: channel axes of size 1 dropped, several channels averaged."""
    if array is None:
        return None
    values = np.asarray(array, np.float32)
    values = np.squeeze(values)
    if values.ndim == 3:
        values = values.mean(axis=-1)
    return values if values.ndim == 2 and values.size else None


def common_size(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps at the larger of their sizes (bilinear), so maps of different layers or resolutions compare."""
    height, width = max(old.shape[0], new.shape[0]), max(old.shape[1], new.shape[1])

    def resized(m: np.ndarray) -> np.ndarray:
        m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
        return m if m.shape == (height, width) else cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)

    return resized(old), resized(new)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps of the same shape; NaN when either is constant (nothing to correlate)."""
    a = np.asarray(a, np.float64).ravel() - float(np.mean(a))
    b = np.asarray(b, np.float64).ravel() - float(np.mean(b))
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


@dataclass(frozen=True)
class MapChange:
    """One class activation map (image, class, method) in both versions, at a common size."""

    name: str  # image name
    image: str  # image id in the new report
    class_index: int | None
    class_name: str
    method: str
    old_layer: str | None
    new_layer: str | None
    old: np.ndarray
    new: np.ndarray

    @property
    def correlation(self) -> float:
        return correlation(self.old, self.new)


def unit_range(values: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1]; a constant map becomes zeros."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)
