"""Read finished report folders: report.json and arrays.npz, defensively.

Every section kind is optional and reports from other reportgen versions may name a field differently, so each
reader looks in the few places a value can be, accepts the spellings in use, and returns None or an empty result
instead of failing: a summary, a site index or a diff shows what is there and says what is not.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import InputError

MANIFEST = "report.json"
GENERATOR = "reportgen"
SCHEMA_VERSION = 1  # the report.json layout render writes, and the newest this code reads
CAM_KINDS = ("cam", "cams", "class", "classes")


class ReportFolder:
    """A report folder on disk: its manifest, and its arrays read one key at a time when asked for."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray | None] = {}

    @property
    def arrays_file(self) -> Path | None:
        name = self.manifest.get("arrays")
        return self.path / name if isinstance(name, str) and "/" not in name and name != ".." else None

    def array(self, key: str | None) -> np.ndarray | None:
        """The array stored under `key` in arrays.npz, or None when there is none."""
        if not key or self.arrays_file is None:
            return None
        if key not in self._arrays:
            try:
                with np.load(self.arrays_file, allow_pickle=False) as npz:
                    self._arrays[key] = np.asarray(npz[key]) if key in npz.files else None
            except (OSError, ValueError, zipfile.BadZipFile):
                self._arrays[key] = None
        return self._arrays[key]

    @property
    def label(self) -> str:
        """How the report is named to a reader: model name and version."""
        model = self.manifest.get("model") or {}
        version = model.get("version")
        return f"{model.get('name') or self.path.name}" + (f" {version}" if version else "")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """report.json of the folder `path` when it is a reportgen report, else None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    return manifest


def read_report(path: str | Path, role: str = "REPORT", need_arrays: bool = False) -> ReportFolder:
    """Open the report folder `path`; `role` names the argument in error messages (OLD, NEW, REPORT)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{role}: {path} is not a folder; give a report folder written by reportgen generate")
    manifest = read_manifest(path)
    if manifest is None:
        raise InputError(f"{role}: {path} is not a reportgen report (no readable report.json written by reportgen)")
    schema = manifest.get("schema_version")
    if isinstance(schema, int) and schema > SCHEMA_VERSION:
        raise InputError(f"{role}: {path} was written by a newer reportgen (report.json schema {schema}); "
                         "upgrade reportgen to read it")
    folder = ReportFolder(path, manifest)
    if need_arrays and (folder.arrays_file is None or not folder.arrays_file.is_file()):
        raise InputError(f"{role}: {path} has no arrays.npz; regenerate the report with --save-arrays (a diff "
                         "compares the raw weights, maps and patterns)")
    return folder


# ----------------------------------------------------------------------------------------- manifest readers


def sections_of(manifest: Mapping[str, Any], *kinds: str) -> list[dict[str, Any]]:
    return [s for s in manifest.get("sections") or [] if isinstance(s, dict) and s.get("kind") in kinds]


def entries(manifest: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """A top-level report.json list such as "heatmaps" or "filter_patterns" (dict entries only)."""
    value = manifest.get(name)
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def images(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [i for i in manifest.get("images") or [] if isinstance(i, dict) and isinstance(i.get("id"), str)]


def image_names(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Image id -> its name (the path below the images folder), the key two reports are matched on."""
    return {i["id"]: str(i.get("name") or i["id"]) for i in images(manifest)}


def class_names(manifest: Mapping[str, Any]) -> list[str]:
    return [str(name) for name in manifest.get("class_names") or []]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _first(entry: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if entry.get(key) is not None:
            return entry[key]
    return None


@dataclass(frozen=True)
class ImagePrediction:
    """The top prediction for one image, as a report recorded it."""

    image: str  # image id
    label: str | None
    predicted: str | None  # class name
    predicted_index: int | None
    probability: float | None  # of the predicted class
    correct: bool | None  # None when the image has no label that is a class name


def _top(entry: Mapping[str, Any], names: list[str]) -> tuple[int | None, str | None, float | None]:
    """(index, name, probability) of an entry's top prediction, whichever way the entry spells it."""
    index = name = probability = None
    top = _first(entry, "top", "top_k", "top_predictions", "predictions", "top_indices")
    if isinstance(top, list) and top:
        first = top[0]
        if isinstance(first, dict):
            index = _first(first, "class_index", "index", "class_id")
            name = _first(first, "class", "class_name", "name")
            probability = _number(_first(first, "probability", "p", "score"))
        elif isinstance(first, int):
            index = first
    index = _first(entry, "predicted_index", "class_index", "top_class_index") if index is None else index
    predicted = _first(entry, "predicted", "prediction", "predicted_class", "top_class")
    if isinstance(predicted, int) and not isinstance(predicted, bool) and index is None:
        index = predicted
    elif isinstance(predicted, str) and name is None:
        name = predicted
    if probability is None:
        probability = _number(_first(entry, "probability", "predicted_probability", "confidence"))
        tops = entry.get("top_probabilities")
        if probability is None and isinstance(tops, list) and tops:
            probability = _number(tops[0])
    index = int(index) if isinstance(index, int) and not isinstance(index, bool) else None
    if name is None and index is not None and 0 <= index < len(names):
        name = names[index]
    if index is None and name in names:
        index = names.index(name)
    return index, (str(name) if name is not None else None), probability


def _prediction_entries(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = entries(manifest, "predictions")
    if found:
        return found
    for section in sections_of(manifest, "predictions"):
        data = section.get("data") or {}
        for key in ("images", "predictions", "per_image"):
            value = data.get(key)
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                return value
    return []


def predictions(manifest: Mapping[str, Any]) -> dict[str, ImagePrediction]:
    """Image id -> top prediction, from the "predictions" list or the predictions section; {} when neither."""
    names = class_names(manifest)
    by_name = {name: image_id for image_id, name in image_names(manifest).items()}
    labels = {i["id"]: i.get("label") for i in images(manifest)}
    out: dict[str, ImagePrediction] = {}
    for entry in _prediction_entries(manifest):
        image = _first(entry, "image", "image_id", "id")
        if not isinstance(image, str) or (image not in labels and image in by_name):
            image = by_name.get(str(_first(entry, "name", "image_name", "image")), image)
        if not isinstance(image, str):
            continue
        index, name, probability = _top(entry, names)
        label = _first(entry, "label", "true_label", "label_name")
        label_index = _first(entry, "label_index", "true_index")
        if label is None and isinstance(label_index, int) and 0 <= label_index < len(names):
            label = names[label_index]
        if isinstance(label, int) and not isinstance(label, bool):
            label = names[label] if 0 <= label < len(names) else None
        if label is None:
            label = labels.get(image)
        label = str(label) if label is not None else None
        correct = entry.get("correct")
        if not isinstance(correct, bool) and "correct" not in entry:
            correct = (label == name) if label in names and name is not None else None
        out[image] = ImagePrediction(image, label, name, index, probability,
                                     correct if isinstance(correct, bool) else None)
    return out


@dataclass(frozen=True)
class Accuracy:
    value: float
    correct: int | None  # None when the report gave only the share
    labelled: int | None

    def text(self) -> str:
        share = f"{self.value:.1%}"
        if self.correct is not None and self.labelled:
            return f"{share} ({self.correct} of {self.labelled})"
        return share


def accuracy(manifest: Mapping[str, Any]) -> Accuracy | None:
    """Top-1 accuracy on the report's labelled images, or None when the report holds no predictions or labels."""
    per_image = [p for p in predictions(manifest).values() if p.correct is not None]
    if per_image:
        correct = sum(1 for p in per_image if p.correct)
        return Accuracy(correct / len(per_image), correct, len(per_image))
    for section in sections_of(manifest, "predictions"):
        data = section.get("data") or {}
        value = _number(data.get("accuracy"))
        if value is not None:
            labelled = _first(data, "labelled", "labelled_images", "labeled")
            labelled = labelled if isinstance(labelled, int) and not isinstance(labelled, bool) else None
            correct = round(value * labelled) if labelled else None
            return Accuracy(value, correct, labelled)
    return None


@dataclass(frozen=True)
class LayerCount:
    layer: str
    count: int
    total: int


def dead_filters(manifest: Mapping[str, Any]) -> list[LayerCount]:
    """Per layer, filters no input switched on (filter-pattern search), in report order."""
    seen: dict[str, dict[Any, bool]] = {}
    for entry in entries(manifest, "filter_patterns"):
        layer = entry.get("layer")
        if isinstance(layer, str):
            filters = seen.setdefault(layer, {})
            filters[entry.get("filter")] = filters.get(entry.get("filter"), False) or bool(entry.get("dead"))
    return [LayerCount(layer, sum(f.values()), len(f)) for layer, f in seen.items()]


def dead_channels(manifest: Mapping[str, Any]) -> list[LayerCount]:
    """Per layer, feature-map channels that are zero on every image."""
    out = []
    for entry in entries(manifest, "feature_maps"):
        count, total = entry.get("dead_channels"), entry.get("channels")
        if isinstance(entry.get("layer"), str) and isinstance(count, int) and isinstance(total, int):
            out.append(LayerCount(entry["layer"], count, total))
    return out


@dataclass(frozen=True)
class SanityResult:
    """The model-randomisation check of one CAM method: do its maps change when the weights are random?"""

    method: str
    passed: bool
    correlation: float | None


def _dicts(value: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    if depth > 4:
        return
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _dicts(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts(item, depth + 1)


def _sanity_of(item: Mapping[str, Any]) -> tuple[bool, float | None] | None:
    """(passed, correlation) of a dict naming a method, with its result flat or under "sanity"; else None."""
    nested = item.get("sanity")
    for place, prefix in ((item, ""), (item, "sanity_"), (nested if isinstance(nested, dict) else {}, "")):
        flagged, passed = place.get(prefix + "flagged"), place.get(prefix + "passed")
        if isinstance(flagged, bool) or isinstance(passed, bool):
            ok = not flagged if isinstance(flagged, bool) else bool(passed)
            return ok, _number(_first(place, prefix + "correlation", prefix + "rank_correlation"))
    return None


def cam_sanity(manifest: Mapping[str, Any]) -> list[SanityResult]:
    """Model-randomisation results of the CAM methods, wherever the cam sections or lists keep them."""
    places: list[Any] = [s.get("data") for s in sections_of(manifest, *CAM_KINDS)]
    places += [manifest.get(name) for name in ("cam_sanity", "sanity", "sanity_checks")]
    results: dict[str, SanityResult] = {}
    for place in places:
        for item in _dicts(place):
            method = item.get("method")
            if not isinstance(method, str) or method in results:
                continue
            found = _sanity_of(item)
            if found is not None:
                results[method] = SanityResult(method, *found)
    return list(results.values())


@dataclass(frozen=True)
class TensorEntry:
    layer: str
    tensor: str
    layer_type: str
    shape: tuple[int, ...]
    array_key: str | None


def weight_tensors(manifest: Mapping[str, Any]) -> dict[tuple[str, str], TensorEntry]:
    """(layer, tensor) -> where the trained weights are in arrays.npz, from the per-layer weights sections."""
    out: dict[tuple[str, str], TensorEntry] = {}
    for section in sections_of(manifest, "weights"):
        layer, data = section.get("layer"), section.get("data") or {}
        if not isinstance(layer, str):
            continue
        for tensor in data.get("tensors") or []:
            if not isinstance(tensor, dict) or not isinstance(tensor.get("tensor"), str):
                continue
            keys = tensor.get("array_keys") or {}
            key = keys.get("trained") if isinstance(keys, dict) else None
            shape = tuple(int(d) for d in tensor.get("shape") or [])
            out[(layer, tensor["tensor"])] = TensorEntry(layer, tensor["tensor"], str(data.get("type") or ""),
                                                         shape, key if isinstance(key, str) else None)
    return out


def entry_array(report: ReportFolder, entry: Mapping[str, Any]) -> np.ndarray | None:
    """The array of one list entry: `array_key`, indexed by `array_index` when the key holds a stack."""
    array = report.array(entry.get("array_key"))
    index = entry.get("array_index")
    if array is not None and isinstance(index, int) and not isinstance(index, bool):
        array = array[index] if 0 <= index < len(array) else None
    return array
