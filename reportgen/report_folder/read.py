"""The only reader of report folders: report.json (bounded, then parsed into `schema.Report`) and arrays.npz
(each array's npy header checked before its data is read), and what commands read from a report.

A report.json that is a link, a special file, too large, too deep, not ours or newer than this code, or whose
fields break `schema`'s rules, is bad input (InputError) here, before any command looks at it.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import InputError
from reportgen.report_folder.schema import (
    GENERATOR,
    MANIFEST,
    SCHEMA_VERSION,
    FilterPattern,
    Heatmap,
    Report,
)

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
    """A report folder on disk: its report.json (as `schema.Report`), and its arrays read one key at a time when
    asked for.

    arrays.npz is opened when the folder is (its zip directory only): the folder keeps reading the file it was
    opened with even when the path is replaced meanwhile (`generate -o OUT --check --baseline OUT`). Each array's
    npy header (dtype and shape) is checked before its data is read, and only the last array read is kept."""

    def __init__(self, path: Path, report: Report, role: str = "REPORT") -> None:
        self.path = path
        self.report = report
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
        name = self.report.arrays
        return self.path / name if name is not None and "/" not in name and name not in ("", ".", "..") else None

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
        model = self.report.model
        return f"{model.name or self.path.name}" + (f" {model.version}" if model.version else "")


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
    report = Report.from_dict(manifest, f"{role}: {path}")
    check_plain_tree(path, role)
    folder = ReportFolder(path, report, role)
    if folder.arrays_error is not None:
        raise InputError(f"{role}: {path}: {folder.arrays_error}; regenerate the report with --save-arrays")
    if need_arrays and not folder.has_arrays:
        raise InputError(f"{role}: {path} has no arrays.npz; regenerate the report with --save-arrays (a diff "
                         "compares the raw weights, maps and patterns)")
    return folder


def heatmap_array(folder: ReportFolder, entry: Heatmap) -> np.ndarray | None:
    """The class activation map of `entry` from arrays.npz (None without one): at most MAX_MAP_BYTES, of the
    entry's `shape` when it gives one (InputError otherwise, before any loading)."""
    shape = entry.shape if entry.array_index is None else None
    return folder.array(entry.array_key, shape, MAX_MAP_BYTES, "heatmaps[].shape")


def pattern_array(folder: ReportFolder, entry: FilterPattern) -> np.ndarray | None:
    """The filter pattern of `entry`: `array_key`, indexed by `array_index` when the key holds a stack. The index
    must lie inside the stack the npy header declares (InputError otherwise, before any loading)."""
    key, index = entry.array_key, entry.array_index
    if index is not None:
        header = folder.array_header(key)
        if header is None:
            return None
        if not header[0] or index >= header[0][0]:
            raise InputError(f"{folder.role}: {folder.path}: report.json field filter_patterns[].array_index is "
                             f"{index}, outside the {header[0][0] if header[0] else 0} patterns arrays.npz {key!r} "
                             "holds; the file was edited; regenerate the report")
    array = folder.array(key)
    return array[index] if array is not None and index is not None else array
