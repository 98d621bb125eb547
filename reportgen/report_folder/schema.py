"""report.json, schema_version 1, as typed frozen dataclasses: the one place its layout and its rules are written.

`Report.from_dict` checks every field a command reads (check, diff, publish, summary.md) against what
`report_folder.write` writes, and the bounds between them (a dead count at most its total), and raises InputError
naming the first that does not; a consumer holding a `Report` never checks a field again. The top-level lists
"predictions", "heatmaps", "filter_patterns" and "feature_maps" are there only when their section ran (empty
tuples here otherwise), as are the cam sections' `sanity` and the weights sections' `tensors`.

Fields no command reads stay in the `raw` dicts (the report's, a section's `data`, a model's), unchecked. The
"diff" object of a diff report is read only by summary.md while the diff is written (never from disk), so it stays
raw too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reportgen.errors import InputError

MANIFEST = "report.json"
GENERATOR = "reportgen"
SCHEMA_VERSION = 1  # the report.json layout `write` writes, and the newest this code reads
MAX_COUNT = 2**53  # counts and indices in report.json: an integer JSON readers agree on (10**400 is no count)

# ---------------------------------------------------------------------------------------------------- rules

_MISSING = object()

# What each field read must be: "text", "count" (an integer from 0 to MAX_COUNT), "number" (finite), "flag"
# (true/false), "list", "object", "shape" (an array of counts); "?" allows null; "!" the key must be there.
_ITEM_FIELDS: dict[str, dict[str, str]] = {
    "images": {"id": "text!", "name": "text!", "path": "text?", "label": "text?", "original_size": "shape?",
               "prediction": "object?"},
    "predictions": {"image": "text!", "label": "text?!", "correct": "flag?!", "top_k": "list!"},
    "heatmaps": {"method": "text!", "image": "text!", "class_index": "count?", "class_name": "text?",
                 "layer": "text?", "array_key": "text?!", "array_index": "count?", "deletion_auc": "number?",
                 "shape": "shape?"},
    "filter_patterns": {"layer": "text!", "filter": "count!", "direction": "text!", "dead": "flag!",
                        "activation": "number?", "array_key": "text?!", "array_index": "count?"},
    "feature_maps": {"layer": "text!", "channels": "count!", "dead_channels": "count!"},
    "sections": {"id": "text!", "kind": "text!", "layer": "text?", "data": "object", "figures": "list"},
    "verdict": {"check": "text!", "severity": "text!", "title": "text!", "evidence": "text!", "link": "text?"},
}
VERDICT_SEVERITIES = ("problem", "caution", "ok")  # a finding's severity, in the order readers see them
_REPORT_FIELDS = {"title": "text?", "created": "text?", "model": "object?", "options": "object?", "arrays": "text?",
                  "class_names": "list", "schema_version": "count?", "versions": "object?", "warnings": "list?",
                  "evaluation": "object?", "data_health": "object?"}
# The dataset pass (`dataset`, there when a section needed every image): `seconds` is the whole pass, of which
# `engine_startup_seconds` is the engine's start-up (the step's trace and first call; on Ray also joining the cluster
# and the workers' model load), and `images_per_second` is images over the rest. On Ray, each worker's own images/s
# and the driver's seconds spent fetching and merging the workers' states.
_DATASET_FIELDS = {"images": "count!", "listed": "count?", "seconds": "number?", "images_per_second": "number?",
                   "engine_startup_seconds": "number?", "engine": "text?", "workers": "count?",
                   "worker_images_per_second": "list?", "merge_seconds": "number?"}
_MODEL_FIELDS = {"name": "text?", "version": "text?", "sha256": "text?", "params": "count?", "preprocess": "text?"}
_PREDICTION_FIELDS = {"class_index": "count!", "class_name": "text?", "probability": "number?"}
_SANITY_FIELDS = {"flagged": "flag!", "correlation": "number?", "status": "text?"}
_TENSOR_FIELDS = {"tensor": "text!", "shape": "shape!", "array_keys": "object?"}
_FAITHFULNESS_FIELDS = {"method": "text!", "beats_random": "flag!", "same_maps_as": "list!",
                        "margin_over_random": "number?"}
_EXPECTED = {"text": "a string", "count": f"an integer from 0 to {MAX_COUNT}", "number": "a finite number",
             "flag": "true or false", "list": "an array", "object": "an object",
             "shape": "an array of at most 8 integers (a shape)"}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _is(value: Any, kind: str) -> bool:
    if value is None:
        return kind.endswith("?")
    base = kind.rstrip("?")
    if base == "text":
        return isinstance(value, str)
    if base == "count":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT
    if base == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if base == "flag":
        return isinstance(value, bool)
    if base == "list":
        return isinstance(value, list)
    if base == "object":
        return isinstance(value, dict)
    if base == "shape":
        return isinstance(value, list) and len(value) <= 8 and all(_is(n, "count") for n in value)
    raise AssertionError(kind)  # pragma: no cover - every kind is listed above


class _Check:
    """The field checks of one report.json, naming `where` (the folder and its role) in every message."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, at: str, expected: str, value: Any) -> None:
        got = "no such key" if value is _MISSING else _kind(value)
        raise InputError(f"{self.where}: report.json field {at} should be {expected}, got {got}; the file "
                         "was not written by this reportgen or was edited; regenerate the report")

    def fields(self, item: Mapping[str, Any], spec: Mapping[str, str], at: str) -> None:
        for key, kind in spec.items():
            value = item.get(key, _MISSING)
            if value is _MISSING:
                if kind.endswith("!"):
                    self.fail(f"{at}.{key}", _EXPECTED[kind.strip("?!")], value)
                continue
            if not _is(value, kind.rstrip("!")):
                self.fail(f"{at}.{key}", _EXPECTED[kind.strip("?!")] + (" or null" if "?" in kind else ""), value)

    def need(self, value: Any, kind: str, at: str) -> None:
        if not _is(value, kind):
            self.fail(at, _EXPECTED[kind.rstrip("?")] + (" or null" if kind.endswith("?") else ""), value)


def _validate(manifest: Mapping[str, Any], where: str) -> None:
    """Every rule of the layout, in report order: InputError naming the first field that breaks one."""
    check = _Check(where)
    check.fields(manifest, _REPORT_FIELDS, "report")
    for i, name in enumerate(manifest.get("class_names", [])):
        check.need(name, "text", f"class_names[{i}]")
    for i, warning in enumerate(manifest.get("warnings") or []):
        check.need(warning, "text", f"warnings[{i}]")
    if manifest.get("model") is not None:
        check.fields(manifest["model"], _MODEL_FIELDS, "model")
    if manifest.get("dataset") is not None:
        check.need(manifest["dataset"], "object", "dataset")
        check.fields(manifest["dataset"], _DATASET_FIELDS, "dataset")
        for i, rate in enumerate(manifest["dataset"].get("worker_images_per_second") or []):
            check.need(rate, "number", f"dataset.worker_images_per_second[{i}]")
    if manifest.get("evaluation") is not None:
        check.fields(manifest["evaluation"], {"ece": "number?"}, "evaluation")
    for list_name, spec in _ITEM_FIELDS.items():
        items = manifest.get(list_name, [])
        check.need(items, "list", list_name)
        for i, item in enumerate(items):
            at = f"{list_name}[{i}]"
            check.need(item, "object", at)
            check.fields(item, spec, at)
    for i, entry in enumerate(manifest.get("images", [])):
        if entry.get("prediction") is not None:
            check.fields(entry["prediction"], _PREDICTION_FIELDS, f"images[{i}].prediction")
    for i, entry in enumerate(manifest.get("predictions", [])):
        if not entry["top_k"]:
            check.fail(f"predictions[{i}].top_k", "a non-empty array", entry["top_k"])
        for k, top in enumerate(entry["top_k"]):
            check.need(top, "object", f"predictions[{i}].top_k[{k}]")
            check.fields(top, _PREDICTION_FIELDS, f"predictions[{i}].top_k[{k}]")
    for i, entry in enumerate(manifest.get("feature_maps", [])):
        if entry["dead_channels"] > entry["channels"]:
            check.fail(f"feature_maps[{i}].dead_channels", f"at most its channels ({entry['channels']})",
                       entry["dead_channels"])
    for i, section in enumerate(manifest.get("sections", [])):
        _validate_section(check, section, i)


def _validate_section(check: _Check, section: Mapping[str, Any], i: int) -> None:
    data = section.get("data") or {}
    at = f"sections[{i}].data"
    for k, figure in enumerate(section.get("figures") or []):
        check.need(figure, "object", f"sections[{i}].figures[{k}]")
        check.fields(figure, {"file": "text!"}, f"sections[{i}].figures[{k}]")
    if section["kind"] == "cam":
        check.fields(data, {"methods": "list?", "sanity": "object?"}, at)
        for k, row in enumerate(data.get("methods") or []):
            check.need(row, "object", f"{at}.methods[{k}]")
            if "beats_random" in row:
                check.fields(row, _FAITHFULNESS_FIELDS, f"{at}.methods[{k}]")
                for n, name in enumerate(row["same_maps_as"]):
                    check.need(name, "text", f"{at}.methods[{k}].same_maps_as[{n}]")
        if data.get("sanity") is not None:
            check.fields(data, {"method": "text!"}, at)
            check.fields(data["sanity"], _SANITY_FIELDS, f"{at}.sanity")
    if section["kind"] == "weights" and section.get("layer") is not None:
        check.fields(data, {"type": "text!", "tensors": "list!"}, at)
        for k, tensor in enumerate(data["tensors"]):
            check.need(tensor, "object", f"{at}.tensors[{k}]")
            check.fields(tensor, _TENSOR_FIELDS, f"{at}.tensors[{k}]")
            if tensor.get("array_keys") is not None:
                check.fields(tensor["array_keys"], {"trained": "text?"}, f"{at}.tensors[{k}].array_keys")


# ---------------------------------------------------------------------------------------------------- types


def _shape(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


@dataclass(frozen=True)
class TopClass:
    """One predicted class: `images[].prediction` and each of `predictions[].top_k`."""

    class_index: int
    class_name: str | None
    probability: float | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TopClass:
        return cls(d["class_index"], d.get("class_name"), d.get("probability"))


@dataclass(frozen=True)
class Image:
    """One image of the set (`images[]`); `prediction` is its top class from the dataset pass."""

    id: str
    name: str  # the path below the images folder: the key two reports are matched on
    path: str | None
    label: str | None
    original_size: tuple[int, ...] | None
    prediction: TopClass | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Image:
        top = d.get("prediction")
        return cls(d["id"], d["name"], d.get("path"), d.get("label"), _shape(d.get("original_size")),
                   None if top is None else TopClass.from_dict(top), d)


@dataclass(frozen=True)
class Prediction:
    """The predictions section's entry of one image (`predictions[]`)."""

    image: str  # image id
    label: str | None
    correct: bool | None
    top_k: tuple[TopClass, ...]  # never empty

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prediction:
        return cls(d["image"], d["label"], d["correct"], tuple(TopClass.from_dict(t) for t in d["top_k"]))


@dataclass(frozen=True)
class Heatmap:
    """One class activation map (`heatmaps[]`), stored in arrays.npz under `array_key`."""

    method: str
    image: str  # image id
    class_index: int | None
    class_name: str | None
    layer: str | None
    array_key: str | None
    array_index: int | None
    deletion_auc: float | None
    shape: tuple[int, ...] | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Heatmap:
        return cls(d["method"], d["image"], d.get("class_index"), d.get("class_name"), d.get("layer"),
                   d["array_key"], d.get("array_index"), d.get("deletion_auc"), _shape(d.get("shape")))


@dataclass(frozen=True)
class FilterPattern:
    """One filter pattern (`filter_patterns[]`): entry `array_index` of the stack `array_key` in arrays.npz."""

    layer: str
    filter: int
    direction: str
    dead: bool
    activation: float | None
    array_key: str | None
    array_index: int | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FilterPattern:
        return cls(d["layer"], d["filter"], d["direction"], d["dead"], d.get("activation"), d["array_key"],
                   d.get("array_index"))


@dataclass(frozen=True)
class FeatureMap:
    """One feature-map layer (`feature_maps[]`): how many of its channels are zero on every image."""

    layer: str
    channels: int
    dead_channels: int  # at most `channels`

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureMap:
        return cls(d["layer"], d["channels"], d["dead_channels"])


@dataclass(frozen=True)
class Figure:
    """One figure of a section; `file` is its path in the report folder (figures/NAME.png)."""

    file: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Sanity:
    """A cam method section's model-randomisation check (`data.sanity`)."""

    flagged: bool
    correlation: float | None
    status: str | None


@dataclass(frozen=True)
class Faithfulness:
    """A row of the cam overview's `data.methods` with deletion / insertion against random maps."""

    method: str
    beats_random: bool
    same_maps_as: tuple[str, ...]
    margin_over_random: float | None


@dataclass(frozen=True)
class CamData:
    """What a cam section's data holds that commands read: the method (and its sanity check) of a method section,
    the faithfulness rows of the overview."""

    method: str | None
    sanity: Sanity | None
    methods: tuple[Mapping[str, Any], ...] | None  # the overview's rows; None in a method section
    faithfulness: tuple[Faithfulness, ...]  # the rows with `beats_random` (older reports give none)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CamData:
        sanity = d.get("sanity")
        rows = d.get("methods")
        return cls(
            d.get("method"),
            None if sanity is None else Sanity(sanity["flagged"], sanity.get("correlation"), sanity.get("status")),
            None if rows is None else tuple(rows),
            tuple(Faithfulness(r["method"], r["beats_random"], tuple(r["same_maps_as"]), r.get("margin_over_random"))
                  for r in rows or () if "beats_random" in r),
        )


@dataclass(frozen=True)
class WeightTensor:
    """One weight tensor of a layer's weights section; `trained_key` is its key in arrays.npz."""

    tensor: str
    shape: tuple[int, ...]
    trained_key: str | None


@dataclass(frozen=True)
class WeightsData:
    """A per-layer weights section's data: the layer's type and its tensors."""

    type: str
    tensors: tuple[WeightTensor, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WeightsData:
        return cls(d["type"], tuple(
            WeightTensor(t["tensor"], tuple(t["shape"]), (t.get("array_keys") or {}).get("trained"))
            for t in d["tensors"]))


@dataclass(frozen=True)
class Section:
    """One section (`sections[]`); `cam` and `weights` are its data read as such, for those kinds."""

    id: str
    kind: str
    layer: str | None
    figures: tuple[Figure, ...]
    data: Mapping[str, Any] = field(repr=False)  # raw: every kind's data has its own fields
    cam: CamData | None = None
    weights: WeightsData | None = None  # per-layer weights sections only (not the overview)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Section:
        data = d.get("data") or {}
        return cls(
            d["id"], d["kind"], d.get("layer"),
            tuple(Figure(f["file"], f) for f in d.get("figures") or ()), data,
            CamData.from_dict(data) if d["kind"] == "cam" else None,
            WeightsData.from_dict(data) if d["kind"] == "weights" and d.get("layer") is not None else None,
        )

    @property
    def layer_paths(self) -> list[str]:
        """A summary section's layer paths, in model order (entries without a path are skipped)."""
        layers = self.data.get("layers")
        if not isinstance(layers, list):
            return []
        return [str(layer["path"]) for layer in layers if isinstance(layer, dict) and "path" in layer]


@dataclass(frozen=True)
class Model:
    """The model fields commands read; the rest (input shape, preprocessing formula, ...) is in `raw`."""

    name: str | None
    version: str | None
    sha256: str | None
    params: int | None
    preprocess: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Model:
        d = d or {}
        return cls(d.get("name"), d.get("version"), d.get("sha256"), d.get("params"), d.get("preprocess"), d)


@dataclass(frozen=True)
class DataHealth:
    """report.json's `data_health`: the counts `check` reads (the lists stay raw)."""

    labelled: int
    label_issue_count: int
    duplicate_count: int
    duplicates_across_classes: int
    outliers_standing_apart: int

    @property
    def label_issue_share(self) -> float | None:
        return self.label_issue_count / self.labelled if self.labelled else None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DataHealth | None:
        if not d:
            return None
        counts = {key: d.get(key, 0) for key in ("labelled", "label_issue_count", "duplicate_count",
                                                 "duplicates_across_classes", "outliers_standing_apart")}
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                raise InputError(f"report.json: data_health.{key} must be {_EXPECTED['count']}, not {value!r}")
        if counts["label_issue_count"] > counts["labelled"]:
            raise InputError("report.json: data_health.label_issue_count is larger than data_health.labelled")
        return cls(**counts)


@dataclass(frozen=True)
class Finding:
    """One finding of the verdict (`verdict[]`): what a reviewer reads first."""

    check: str
    severity: str  # one of VERDICT_SEVERITIES
    title: str
    evidence: str
    link: str | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        if d["severity"] not in VERDICT_SEVERITIES:
            raise InputError(f"report.json: verdict: severity {d['severity']!r} is not one of "
                             f"{', '.join(VERDICT_SEVERITIES)}")
        return cls(d["check"], d["severity"], d["title"], d["evidence"], d.get("link"))


@dataclass(frozen=True)
class Report:
    """A whole report.json, checked. `raw` is the dict it was read from (what `write` wrote)."""

    schema_version: int | None
    title: str | None
    created: str | None
    versions: Mapping[str, Any]
    model: Model
    options: Mapping[str, Any]
    images: tuple[Image, ...]
    class_names: tuple[str, ...]
    sections: tuple[Section, ...]
    warnings: tuple[str, ...]
    arrays: str | None  # the arrays file's name, None without --save-arrays
    predictions: tuple[Prediction, ...]
    heatmaps: tuple[Heatmap, ...]
    filter_patterns: tuple[FilterPattern, ...]
    feature_maps: tuple[FeatureMap, ...]
    ece: float | None  # evaluation.ece
    diff: Mapping[str, Any] | None  # a diff report's summary (raw; see the module docstring)
    verdict: tuple[Finding, ...]  # empty for a report made before the verdict, and for a diff
    data_health: DataHealth | None  # None without a data_health section
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "report") -> Report:
        """The report `d` (report.json parsed), every field commands read checked (InputError naming `where`)."""
        _validate(d, where)
        diff = d.get("diff")
        return cls(
            schema_version=d.get("schema_version"), title=d.get("title"), created=d.get("created"),
            versions=d.get("versions") or {}, model=Model.from_dict(d.get("model")), options=d.get("options") or {},
            images=tuple(Image.from_dict(i) for i in d.get("images", [])),
            class_names=tuple(d.get("class_names", [])),
            sections=tuple(Section.from_dict(s) for s in d.get("sections", [])),
            warnings=tuple(d.get("warnings") or ()), arrays=d.get("arrays"),
            predictions=tuple(Prediction.from_dict(p) for p in d.get("predictions", [])),
            heatmaps=tuple(Heatmap.from_dict(h) for h in d.get("heatmaps", [])),
            filter_patterns=tuple(FilterPattern.from_dict(p) for p in d.get("filter_patterns", [])),
            feature_maps=tuple(FeatureMap.from_dict(f) for f in d.get("feature_maps", [])),
            ece=(d.get("evaluation") or {}).get("ece"),
            diff=diff if isinstance(diff, Mapping) else None,
            verdict=tuple(Finding.from_dict(f) for f in d.get("verdict", [])),
            data_health=DataHealth.from_dict(d.get("data_health")),
            raw=d,
        )

    def sections_of(self, *kinds: str) -> list[Section]:
        """The report's sections of the given kinds, in report order."""
        return [s for s in self.sections if s.kind in kinds]

    @property
    def image_names(self) -> dict[str, str]:
        """Image id -> its name (the path below the images folder), the key two reports are matched on."""
        return {i.id: i.name for i in self.images}
