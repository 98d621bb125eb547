"""Read finished report folders: report.json and arrays.npz.

There is one report.json layout, schema_version 1, written by `reportgen.render` from the section builders, and
the readers here read exactly its fields. The top-level lists "predictions" (sections/predictions.py), "heatmaps"
(cams.py), "filter_patterns" and "feature_maps" are there only when their section ran, as are the cam sections'
`data["sanity"]` and the weights sections' `data["tensors"]`; a reader of an absent one returns an empty result or
None, so a summary, a site index or a diff shows what is there and says what is not.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import weakref
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import InputError

MANIFEST = "report.json"
GENERATOR = "reportgen"
SCHEMA_VERSION = 1  # the report.json layout render writes, and the newest this code reads


# Bounds on what reading a report may cost, whatever its files hold (README: bad input).
MAX_MANIFEST_BYTES = 128 << 20  # report.json on disk: about 350,000 images (a 20,000-image report is ~8 MB)
# report.json once parsed, estimated before parsing from its size and its count of "{", "[" and ",": each value
# costs Python at most about that many bytes (an empty object 64 and its slot; a 246 MB file of `{}` took 6.5 GB).
MAX_MANIFEST_MEMORY = 512 << 20
BYTES_PER_VALUE = 96
MAX_ARRAY_BYTES = 512 << 20  # one array of arrays.npz, from its npy header (VGG16's largest kernel is 392 MiB)
MAX_MAP_BYTES = 64 << 20  # one class activation map (4096 x 4096 float32)
SNIFF_BYTES = 4096  # how much of a report.json `looks_like_report` reads
_CHUNK = 16 << 20


class ReportFolder:
    """A report folder on disk: its manifest, and its arrays read one key at a time when asked for.

    arrays.npz is opened when the folder is (its zip directory only): the folder keeps reading the file it was
    opened with even when the path is replaced meanwhile (`generate -o OUT --check --baseline OUT`). Each array's
    npy header (dtype and shape) is checked before its data is read, and only the last array read is kept."""

    def __init__(self, path: Path, manifest: dict[str, Any], role: str = "REPORT") -> None:
        self.path = path
        self.manifest = manifest
        self.role = role
        self._last: tuple[str, np.ndarray] | None = None
        self._zip: zipfile.ZipFile | None = None
        self.arrays_error: str | None = None  # why arrays.npz could not be opened, when it could not
        file = self.arrays_file
        if file is not None:
            try:
                fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                handle = open(fd, "rb")  # noqa: SIM115 - held for the folder's life, closed with the zip
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    handle.close()
                    raise OSError("not a regular file")
                try:
                    self._zip = zipfile.ZipFile(handle)
                except BaseException:
                    handle.close()
                    raise
                self._release = weakref.finalize(self, handle.close)  # the zip never closes a file it was given
            except FileNotFoundError:
                pass
            except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
                self.arrays_error = f"{file.name} cannot be read as a .npz archive ({exc})"

    @property
    def arrays_file(self) -> Path | None:
        """arrays.npz of the report, or None when it was made without --save-arrays."""
        name = self.manifest.get("arrays")
        return self.path / name if isinstance(name, str) and "/" not in name and name not in ("", ".", "..") else None

    @property
    def has_arrays(self) -> bool:
        """True when the report has an arrays.npz that opened."""
        return self._zip is not None

    def close(self) -> None:
        """Close arrays.npz (also done when the folder object is collected)."""
        if self._zip is not None:
            self._zip.close()
            self._release()
            self._zip = None

    def _bad(self, key: str, why: str) -> InputError:
        return InputError(f"{self.role}: {self.path}: arrays.npz {key!r} {why}; the file was not written by this "
                          "reportgen or was edited; regenerate the report")

    def array_header(self, key: str | None) -> tuple[tuple[int, ...], np.dtype] | None:
        """(shape, dtype) that arrays.npz declares for `key`, read from its npy header alone; None when there is
        no such key. A header that is not a plain numeric array is bad input."""
        opened = self._open_member(key)
        if opened is None:
            return None
        member, shape, _fortran, dtype = opened
        member.close()
        return shape, dtype

    def _open_member(self, key: str | None) -> tuple[Any, tuple[int, ...], bool, np.dtype] | None:
        if not key or self._zip is None:
            return None
        try:
            info = self._zip.getinfo(f"{key}.npy")
        except KeyError:
            return None
        try:
            member = self._zip.open(info)
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f"npy format {version}")
        except (OSError, ValueError, SyntaxError, TypeError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise self._bad(key, f"has no readable npy header ({exc})") from None
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
            member.close()
            raise self._bad(key, f"holds {dtype} values, not numbers")
        return member, tuple(int(n) for n in shape), bool(fortran), dtype

    def array(self, key: str | None, shape: Sequence[int] | None = None, limit: int = MAX_ARRAY_BYTES,
              field: str = "array_key") -> np.ndarray | None:
        """The array stored under `key` in arrays.npz, or None when there is none. Its header is checked first:
        numbers only, at most `limit` bytes, the `shape` report.json gives for it (when given); else InputError."""
        if not key or self._zip is None:
            return None
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self._last = None  # the previous array is freed before the next is read
        opened = self._open_member(key)
        if opened is None:
            return None
        member, declared, fortran, dtype = opened
        with member:
            size = math.prod(declared) * dtype.itemsize
            if size > limit:
                raise self._bad(key, f"declares shape {declared} of {dtype} ({size / 2**20:,.0f} MiB), over the "
                                     f"{limit >> 20} MiB an array of its kind may have")
            if shape is not None and tuple(shape) != declared:
                raise self._bad(key, f"has shape {declared} where report.json ({field}) says {tuple(shape)}")
            try:
                data = member.read(size)
            except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise self._bad(key, f"cannot be decompressed ({exc})") from None
        if len(data) != size:
            raise self._bad(key, f"holds {len(data)} bytes of data where its header declares {size}")
        array = np.frombuffer(data, dtype).reshape(declared, order="F" if fortran else "C")
        self._last = (key, array)
        return array

    @property
    def label(self) -> str:
        """How the report is named to a reader: model name and version."""
        model = self.manifest.get("model") or {}
        version = model.get("version")
        return f"{model.get('name') or self.path.name}" + (f" {version}" if version else "")


def _open_manifest(path: Path) -> tuple[int, Any] | str:
    """(fd, size) of the regular file path/report.json, or why it is none (a link, a FIFO, missing)."""
    file = path / MANIFEST
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"no readable {MANIFEST} ({exc.strerror or exc})"
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return f"{MANIFEST} is not a regular file"
    return fd, info.st_size


def load_manifest(path: Path) -> dict[str, Any] | str:
    """report.json of the folder `path` when it is a reportgen report, else why not. A report.json that is a link,
    not a regular file, over MAX_MANIFEST_BYTES, estimated to pass MAX_MANIFEST_MEMORY once parsed, or nested
    too deep for the JSON reader is no report; the estimate is made while reading, before parsing."""
    opened = _open_manifest(path)
    if isinstance(opened, str):
        return opened
    fd, size = opened
    with open(fd, "rb") as handle:
        if size > MAX_MANIFEST_BYTES:
            return f"{MANIFEST} is {size / 2**20:,.0f} MiB, over the {MAX_MANIFEST_BYTES >> 20} MiB reportgen reads"
        chunks, values = [], 0
        try:
            while chunk := handle.read(_CHUNK):
                chunks.append(chunk)
                values += chunk.count(b"{") + chunk.count(b"[") + chunk.count(b",")
                if sum(map(len, chunks)) > MAX_MANIFEST_BYTES:
                    return f"{MANIFEST} is over the {MAX_MANIFEST_BYTES >> 20} MiB reportgen reads"
        except OSError as exc:
            return f"{MANIFEST} cannot be read ({exc.strerror or exc})"
    data = b"".join(chunks)
    del chunks
    if len(data) + BYTES_PER_VALUE * values > MAX_MANIFEST_MEMORY:
        return (f"{MANIFEST} holds {values:,} JSON values in {len(data) / 2**20:,.1f} MiB, more than the "
                f"{MAX_MANIFEST_MEMORY >> 20} MiB reportgen parses a report into")
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return f"{MANIFEST} is not valid JSON ({str(exc)[:100]})"
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return f"{MANIFEST} was not written by reportgen"
    return manifest


def read_manifest(path: Path) -> dict[str, Any] | None:
    """report.json of the folder `path` when it is a reportgen report, else None (`load_manifest` says why)."""
    manifest = load_manifest(path)
    return None if isinstance(manifest, str) else manifest


_GENERATOR_FIELD = re.compile(rb'^\s*\{[^{}]*?"generator"\s*:\s*"reportgen"')


def looks_like_report(path: Path) -> bool:
    """Whether the folder `path` holds a report.json reportgen wrote, from its first SNIFF_BYTES alone (render
    writes "schema_version" and "generator" first): recognising a report never parses, whatever its size."""
    opened = _open_manifest(path)
    if isinstance(opened, str):
        return False
    fd, _size = opened
    with open(fd, "rb") as handle:
        try:
            head = handle.read(SNIFF_BYTES)
        except OSError:
            return False
    return _GENERATOR_FIELD.match(head) is not None


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


MAX_COUNT = 2**53  # counts and indices in report.json: an integer JSON readers agree on (10**400 is no count)
_MISSING = object()

# What each field the readers below use must be: "text", "count" (an integer from 0 to MAX_COUNT), "number"
# (finite), "flag" (true/false), "list", "object", "shape" (an array of counts); "?" allows null; "!" the key
# must be there (the readers index it). Fields not listed are not read by any command.
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
}
_PREDICTION_FIELDS = {"class_index": "count!", "class_name": "text?", "probability": "number?"}
_SANITY_FIELDS = {"flagged": "flag!", "correlation": "number?", "status": "text?"}
_TENSOR_FIELDS = {"tensor": "text!", "shape": "shape!", "array_keys": "object?"}


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


_EXPECTED = {"text": "a string", "count": f"an integer from 0 to {MAX_COUNT}", "number": "a finite number",
             "flag": "true or false", "list": "an array", "object": "an object",
             "shape": "an array of at most 8 integers (a shape)"}


def validate_manifest(manifest: dict[str, Any], where: str) -> None:
    """Check every report.json field a command reads (check, diff, publish, summary) against what render writes,
    and the bounds between them (a dead count at most its total): InputError naming the first that does not, so a
    hand-edited or hostile report.json is a message, never a crash deep in a rule or a diff. The one place these
    fields are validated; the readers below rely on it."""
    def fail(field: str, expected: str, value: Any) -> None:
        got = "no such key" if value is _MISSING else _kind(value)
        raise InputError(f"{where}: report.json field {field} should be {expected}, got {got}; the file "
                         "was not written by this reportgen or was edited; regenerate the report")

    def fields(item: Mapping[str, Any], spec: Mapping[str, str], at: str) -> None:
        for key, kind in spec.items():
            value = item.get(key, _MISSING)
            if value is _MISSING:
                if kind.endswith("!"):
                    fail(f"{at}.{key}", _EXPECTED[kind.strip("?!")], value)
                continue
            if not _is(value, kind.rstrip("!")):
                fail(f"{at}.{key}", _EXPECTED[kind.strip("?!")] + (" or null" if "?" in kind else ""), value)

    def need(value: Any, kind: str, field: str) -> None:
        if not _is(value, kind):
            fail(field, _EXPECTED[kind.rstrip("?")] + (" or null" if kind.endswith("?") else ""), value)

    fields(manifest, {"title": "text?", "created": "text?", "model": "object?", "options": "object?",
                      "arrays": "text?", "class_names": "list", "schema_version": "count?"}, "report")
    for i, name in enumerate(manifest.get("class_names", [])):
        need(name, "text", f"class_names[{i}]")
    for field, spec in _ITEM_FIELDS.items():
        items = manifest.get(field, [])
        need(items, "list", field)
        for i, item in enumerate(items):
            at = f"{field}[{i}]"
            need(item, "object", at)
            fields(item, spec, at)
    for i, entry in enumerate(manifest.get("images", [])):
        if entry.get("prediction") is not None:
            fields(entry["prediction"], _PREDICTION_FIELDS, f"images[{i}].prediction")
    for i, entry in enumerate(manifest.get("predictions", [])):
        if not entry["top_k"]:
            fail(f"predictions[{i}].top_k", "a non-empty array", entry["top_k"])
        for k, top in enumerate(entry["top_k"]):
            need(top, "object", f"predictions[{i}].top_k[{k}]")
            fields(top, _PREDICTION_FIELDS, f"predictions[{i}].top_k[{k}]")
    for i, entry in enumerate(manifest.get("feature_maps", [])):
        if entry["dead_channels"] > entry["channels"]:
            fail(f"feature_maps[{i}].dead_channels", f"at most its channels ({entry['channels']})",
                 entry["dead_channels"])
    for i, section in enumerate(manifest.get("sections", [])):
        data = section.get("data") or {}
        at = f"sections[{i}].data"
        if section["kind"] == "cam":
            fields(data, {"methods": "list?", "sanity": "object?"}, at)
            for k, row in enumerate(data.get("methods") or []):
                need(row, "object", f"{at}.methods[{k}]")
            if data.get("sanity") is not None:
                fields(data, {"method": "text!"}, at)
                fields(data["sanity"], _SANITY_FIELDS, f"{at}.sanity")
        if section["kind"] == "weights" and section.get("layer") is not None:
            fields(data, {"type": "text!", "tensors": "list!"}, at)
            for k, tensor in enumerate(data["tensors"]):
                need(tensor, "object", f"{at}.tensors[{k}]")
                fields(tensor, _TENSOR_FIELDS, f"{at}.tensors[{k}]")
                if tensor.get("array_keys") is not None:
                    fields(tensor["array_keys"], {"trained": "text?"}, f"{at}.tensors[{k}].array_keys")


def read_report(path: str | Path, role: str = "REPORT", need_arrays: bool = False) -> ReportFolder:
    """Open the report folder `path`; `role` names the argument in error messages (OLD, NEW, REPORT). Its
    report.json is read first (so a folder that is none, `/` included, is refused at once, before any walk), then
    a folder with links or special files in it, or a report.json of the wrong layout, is refused (InputError)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise InputError(f"{role}: {path} is not a folder; give a report folder written by reportgen generate")
    manifest = load_manifest(path)
    if isinstance(manifest, str):
        raise InputError(f"{role}: {path} is not a reportgen report ({manifest}); give a report folder written by "
                         "reportgen generate")
    schema = manifest.get("schema_version")
    if isinstance(schema, int) and schema > SCHEMA_VERSION:
        raise InputError(f"{role}: {path} was written by a newer reportgen (report.json schema {schema}); "
                         "upgrade reportgen to read it")
    validate_manifest(manifest, f"{role}: {path}")
    check_plain_tree(path, role)
    folder = ReportFolder(path, manifest, role)
    if folder.arrays_error is not None:
        raise InputError(f"{role}: {path}: {folder.arrays_error}; regenerate the report with --save-arrays")
    if need_arrays and not folder.has_arrays:
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


def ambiguous_names(manifest: Mapping[str, Any]) -> list[str]:
    """Image names that more than one image of the report has, so they cannot pair images between two reports
    (reports of an earlier reportgen given two IMAGES folders holding the same file names; generate now names
    such images after their folder). `compare` leaves them out."""
    seen: dict[str, int] = {}
    for name in image_names(manifest).values():
        seen[name] = seen.get(name, 0) + 1
    return [name for name, count in seen.items() if count > 1]


def ambiguity_warning(manifest: Mapping[str, Any], role: str) -> str | None:
    """The warning for a report whose image names do not identify its images, or None."""
    names = ambiguous_names(manifest)
    if not names:
        return None
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{role} names {len(names)} image name(s) for more than one image ({shown}): images are matched by "
            "name, so these are not compared; regenerate it with this reportgen, which names images after their "
            "folder when two IMAGES folders hold the same names")


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
            results.append(SanityResult(data["method"], not sanity["flagged"], sanity.get("correlation"), status))
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
            keys = tensor.get("array_keys")
            out[(layer, tensor["tensor"])] = TensorEntry(layer, tensor["tensor"], data["type"], tuple(tensor["shape"]),
                                                         keys.get("trained") if keys else None)
    return out


def entry_array(report: ReportFolder, entry: Mapping[str, Any], field: str) -> np.ndarray | None:
    """The array of one entry of the list `field` ("heatmaps" or "filter_patterns"): `array_key`, indexed by
    `array_index` when the key holds a stack (patterns). A map is at most MAX_MAP_BYTES and has the entry's
    `shape`; an index must lie inside the stack its header declares (InputError otherwise, before any loading)."""
    key, index = entry.get("array_key"), entry.get("array_index")
    if field == "heatmaps":
        return report.array(key, entry.get("shape") if index is None else None, MAX_MAP_BYTES, f"{field}[].shape")
    if index is not None:
        header = report.array_header(key)
        if header is None:
            return None
        if not header[0] or index >= header[0][0]:
            raise InputError(f"{report.role}: {report.path}: report.json field {field}[].array_index is {index}, "
                             f"outside the {header[0][0] if header[0] else 0} patterns arrays.npz {key!r} holds; the "
                             "file was edited; regenerate the report")
    array = report.array(key)
    return array[index] if array is not None and index is not None else array


def summary_layers(manifest: Mapping[str, Any]) -> list[str]:
    """The layer paths of the report's summary section, in model order; [] without one."""
    for section in sections_of(manifest, "summary"):
        layers = (section.get("data") or {}).get("layers")
        if isinstance(layers, list):
            return [str(layer["path"]) for layer in layers if isinstance(layer, dict) and "path" in layer]
    return []


def unrelated_models(old: Mapping[str, Any], new: Mapping[str, Any], roles: tuple[str, str] = ("OLD", "NEW"),
                     compared: str = "the comparisons below") -> str | None:
    """The warning when two reports look like two different models rather than two versions of one (other
    classes, or no layer in common), as `diff` and `check --baseline` give it; None when they look related."""
    reasons = []
    old_classes, new_classes = class_names(old), class_names(new)
    if old_classes != new_classes:
        reasons.append(f"they predict different classes ({len(old_classes)} and {len(new_classes)}; "
                       f"{len(set(old_classes) & set(new_classes))} names in common)")
    old_layers = set(summary_layers(old)) or {k[0] for k in weight_tensors(old)}
    new_layers = set(summary_layers(new)) or {k[0] for k in weight_tensors(new)}
    if old_layers and new_layers and not old_layers & new_layers:
        reasons.append("they have no layer in common (different architectures)")
    if not reasons:
        return None
    return (f"{roles[0]} and {roles[1]} look like unrelated models, not two versions of one: " + " and ".join(reasons)
            + f"; {compared} may mean little")
