"""Read finished report folders: report.json and arrays.npz.

There is one report.json layout, schema_version 1, written by `reportgen.render` from the section builders, and
the readers here read exactly its fields. The top-level lists "predictions" (sections/predictions.py), "heatmaps"
(cams.py), "filter_patterns" and "feature_maps" are there only when their section ran, as are the cam sections'
`data["sanity"]` and the weights sections' `data["tensors"]`; a reader of an absent one returns an empty result or
None, so a summary, a site index or a diff shows what is there and says what is not.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import InputError

MANIFEST = "report.json"
GENERATOR = "reportgen"
SCHEMA_VERSION = 1  # the report.json layout render writes, and the newest this code reads


class ReportFolder:
    """A report folder on disk: its manifest, and its arrays read one key at a time when asked for."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray | None] = {}

    @property
    def arrays_file(self) -> Path | None:
        """arrays.npz of the report, or None when it was made without --save-arrays."""
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


MAX_MANIFEST_BYTES = 256 << 20  # report.json of tens of thousands of images is a few MB


def read_manifest(path: Path) -> dict[str, Any] | None:
    """report.json of the folder `path` when it is a reportgen report, else None. A report.json that is a link,
    not a regular file, too large or nested too deep for the JSON reader is no report."""
    import stat

    file = path / MANIFEST
    try:
        info = file.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            return None
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    return manifest


MAX_LISTED_LINKS = 5


def check_plain_tree(path: Path, role: str) -> None:
    """Refuse a report folder holding symbolic links or anything but folders and regular files (FIFOs, devices):
    a report is data from elsewhere, and a link to /etc/passwd or to a folder outside it must never be copied or
    read as part of it. InputError names them."""
    import stat

    odd: list[str] = []
    for root, dirs, files in os.walk(path, followlinks=False):
        here = Path(root)
        for name in [*dirs, *files]:
            entry = here / name
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                odd.append(f"{entry.relative_to(path)} (a symbolic link)")
            elif not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                odd.append(f"{entry.relative_to(path)} (not a regular file)")
    if odd:
        shown = ", ".join(odd[:MAX_LISTED_LINKS]) + (f" and {len(odd) - MAX_LISTED_LINKS} more"
                                                      if len(odd) > MAX_LISTED_LINKS else "")
        raise InputError(f"{role}: {path} holds {shown}; a report folder holds only folders and regular files, "
                         "so nothing outside it is read. Remove them or regenerate the report")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def validate_manifest(manifest: dict[str, Any], where: str) -> None:
    """Check that the fields the readers here use have report.json's types (InputError naming the first that
    does not), so a hand-edited or hostile report.json is a message, never a crash deep in a diff or publish."""
    def fail(field: str, expected: str, value: Any) -> None:
        raise InputError(f"{where}: report.json field {field} should be {expected}, got {_kind(value)}; the file "
                         "was not written by this reportgen or was edited; regenerate the report")

    def need(value: Any, types: Any, field: str, expected: str) -> None:
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            fail(field, expected, value)

    optional_text = (str, type(None))
    for field in ("title", "created"):
        need(manifest.get(field), optional_text, field, "a string")
    need(manifest.get("model", {}), (dict, type(None)), "model", "an object")
    need(manifest.get("options", {}), (dict, type(None)), "options", "an object")
    need(manifest.get("arrays"), optional_text, "arrays", "a file name")
    need(manifest.get("class_names", []), list, "class_names", "an array of strings")
    for name in manifest.get("class_names", []):
        need(name, str, "class_names[]", "a string")
    for field, required in (("images", ("id", "name")), ("sections", ("id", "kind")), ("predictions", ("image",)),
                            ("heatmaps", ("method", "image")), ("filter_patterns", ("layer", "direction")),
                            ("feature_maps", ("layer",))):
        items = manifest.get(field, [])
        need(items, list, field, "an array of objects")
        for item in items:
            need(item, dict, f"{field}[]", "an object")
            for key in required:
                need(item.get(key), str, f"{field}[].{key}", "a string")
    for entry in manifest.get("images", []):
        need(entry.get("path"), optional_text, "images[].path", "a string")
        need(entry.get("label"), optional_text, "images[].label", "a string")
    for section in manifest.get("sections", []):
        need(section.get("data", {}), dict, "sections[].data", "an object")
        need(section.get("figures", []), list, "sections[].figures", "an array")
    for entry in manifest.get("predictions", []):
        need(entry.get("top_k"), list, "predictions[].top_k", "an array")
        if not entry["top_k"]:
            fail("predictions[].top_k", "a non-empty array", entry["top_k"])
        for top in entry["top_k"]:
            need(top, dict, "predictions[].top_k[]", "an object")
    for entry in manifest.get("filter_patterns", []):
        need(entry.get("filter"), int, "filter_patterns[].filter", "an integer")


def _as_tuple(types: Any) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def read_report(path: str | Path, role: str = "REPORT", need_arrays: bool = False) -> ReportFolder:
    """Open the report folder `path`; `role` names the argument in error messages (OLD, NEW, REPORT). A folder
    with links or special files in it, or a report.json of the wrong layout, is refused (InputError)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise InputError(f"{role}: {path} is not a folder; give a report folder written by reportgen generate")
    check_plain_tree(path, role)
    manifest = read_manifest(path)
    if manifest is None:
        raise InputError(f"{role}: {path} is not a reportgen report (no readable report.json written by reportgen)")
    schema = manifest.get("schema_version")
    if isinstance(schema, int) and schema > SCHEMA_VERSION:
        raise InputError(f"{role}: {path} was written by a newer reportgen (report.json schema {schema}); "
                         "upgrade reportgen to read it")
    validate_manifest(manifest, f"{role}: {path}")
    folder = ReportFolder(path, manifest)
    if need_arrays and (folder.arrays_file is None or not folder.arrays_file.is_file()):
        raise InputError(f"{role}: {path} has no arrays.npz; regenerate the report with --save-arrays (a diff "
                         "compares the raw weights, maps and patterns)")
    return folder


# ----------------------------------------------------------------------------------------- manifest readers


def sections_of(manifest: Mapping[str, Any], *kinds: str) -> list[dict[str, Any]]:
    """The report's sections of the given kinds, in report order."""
    return [s for s in manifest.get("sections", []) if s["kind"] in kinds]


def entries(manifest: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """A top-level report.json list such as "heatmaps" or "filter_patterns"; [] when its section did not run."""
    return list(manifest.get(name, []))


def images(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The report's image entries (id, name, path, label, original_size)."""
    return list(manifest.get("images", []))


def image_names(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Image id -> its name (the path below the images folder), the key two reports are matched on."""
    return {i["id"]: i["name"] for i in images(manifest)}


def class_names(manifest: Mapping[str, Any]) -> list[str]:
    """The model's class names, by class index."""
    return list(manifest.get("class_names", []))


@dataclass(frozen=True)
class ImagePrediction:
    """The top prediction for one image, as a report recorded it."""

    image: str  # image id
    label: str | None
    predicted: str | None  # class name
    predicted_index: int | None
    probability: float | None  # of the predicted class
    correct: bool | None  # None when the image has no label that is a class name


def predictions(manifest: Mapping[str, Any]) -> dict[str, ImagePrediction]:
    """Image id -> top prediction of every image of the set (`images[].prediction`, from the dataset pass), else
    of the images in the "predictions" list; {} when the report has neither."""
    out: dict[str, ImagePrediction] = {}
    names = [n for n in manifest.get("class_names", []) if isinstance(n, str)]
    for entry in images(manifest):
        top = entry.get("prediction")
        if not isinstance(top, dict) or not isinstance(top.get("class_index"), int):
            continue
        label = entry.get("label")
        correct = None if label not in names else names.index(label) == top["class_index"]
        out[entry["id"]] = ImagePrediction(entry["id"], label, top.get("class_name"), top["class_index"],
                                           top.get("probability"), correct)
    if out:
        return out
    for entry in entries(manifest, "predictions"):
        top = entry["top_k"][0]
        out[entry["image"]] = ImagePrediction(entry["image"], entry["label"], top["class_name"], top["class_index"],
                                              top["probability"], entry["correct"])
    return out


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy: the share of labelled images whose top prediction is the label."""

    value: float
    correct: int
    labelled: int

    def text(self) -> str:
        """The accuracy as a reader sees it, e.g. "75.0% (9 of 12)"."""
        return f"{self.value:.1%} ({self.correct} of {self.labelled})"


def accuracy(manifest: Mapping[str, Any]) -> Accuracy | None:
    """Top-1 accuracy on the report's labelled images, or None when the report holds no predictions or labels."""
    verdicts = [p.correct for p in predictions(manifest).values() if p.correct is not None]
    if not verdicts:
        return None
    correct = sum(verdicts)
    return Accuracy(correct / len(verdicts), correct, len(verdicts))


@dataclass(frozen=True)
class LayerCount:
    """How many of a layer's `total` filters or channels are dead."""

    layer: str
    count: int
    total: int


def dead_filters(manifest: Mapping[str, Any]) -> list[LayerCount]:
    """Per layer, filters no input switched on (filter-pattern search), in report order.

    There is one entry per (filter, direction); a filter counts as dead when an entry of it says so."""
    seen: dict[str, dict[int, bool]] = {}
    for entry in entries(manifest, "filter_patterns"):
        filters = seen.setdefault(entry["layer"], {})
        filters[entry["filter"]] = filters.get(entry["filter"], False) or entry["dead"]
    return [LayerCount(layer, sum(f.values()), len(f)) for layer, f in seen.items()]


def dead_channels(manifest: Mapping[str, Any]) -> list[LayerCount]:
    """Per layer, feature-map channels that are zero on every image."""
    return [LayerCount(e["layer"], e["dead_channels"], e["channels"]) for e in entries(manifest, "feature_maps")]


@dataclass(frozen=True)
class SanityResult:
    """The model-randomisation check of one CAM method: do its maps change when the weights are random?"""

    method: str
    passed: bool
    correlation: float | None
    status: str  # "passes", "flagged", "empty maps" or "undetermined"


def cam_sanity(manifest: Mapping[str, Any]) -> list[SanityResult]:
    """Model-randomisation results of the CAM methods, from each method section's `data["sanity"]`.

    The cam overview section has no "sanity", and a method's is null when its check did not run."""
    results = []
    for section in sections_of(manifest, "cam"):
        data = section.get("data", {})
        sanity = data.get("sanity")
        if sanity is not None:
            status = sanity.get("status") or ("flagged" if sanity["flagged"] else "passes")
            results.append(SanityResult(data["method"], not sanity["flagged"], sanity["correlation"], status))
    return results


def cam_faithfulness(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per CAM method, deletion / insertion against random maps, from the cam overview's `data["methods"]` (rows
    with `margin_over_random`, `beats_random` and `same_maps_as`; reports older than those keys give none)."""
    for section in sections_of(manifest, "cam"):
        rows = section.get("data", {}).get("methods")
        if rows is not None:
            return [row for row in rows if "beats_random" in row]
    return []


@dataclass(frozen=True)
class TensorEntry:
    """One weight tensor of a layer, and its key in arrays.npz (None without --save-arrays)."""

    layer: str
    tensor: str
    layer_type: str
    shape: tuple[int, ...]
    array_key: str | None


def weight_tensors(manifest: Mapping[str, Any]) -> dict[tuple[str, str], TensorEntry]:
    """(layer, tensor) -> where the trained weights are in arrays.npz, from the per-layer weights sections."""
    out: dict[tuple[str, str], TensorEntry] = {}
    for section in sections_of(manifest, "weights"):
        if "layer" not in section:  # the overview
            continue
        layer, data = section["layer"], section["data"]
        for tensor in data["tensors"]:
            keys = tensor["array_keys"]
            out[(layer, tensor["tensor"])] = TensorEntry(layer, tensor["tensor"], data["type"], tuple(tensor["shape"]),
                                                         keys["trained"] if keys else None)
    return out


def entry_array(report: ReportFolder, entry: Mapping[str, Any]) -> np.ndarray | None:
    """The array of one list entry: `array_key`, indexed by `array_index` when the key holds a stack (patterns)."""
    array = report.array(entry["array_key"])
    index = entry.get("array_index")
    return array[index] if array is not None and index is not None else array
