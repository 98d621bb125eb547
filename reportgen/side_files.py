"""Single files a command writes beside its work (`check --markdown FILE`, `--json FILE`): checked before any
work, written atomically.

A path that exists must be a regular file (a FIFO would hang the write, a device or a folder cannot take it, and a
symbolic link would be followed to wherever it points); a path inside a report the command reads is refused, since
writing `--markdown REPORT/report.json` would destroy the report. The file is written to a temporary file beside
it and renamed over it, so a reader never sees half of it and a failed write leaves the old file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from reportgen.errors import InputError


def check_side_file(path: Path, flag: str, protected: Sequence[Path] = ()) -> Path:
    """InputError naming `flag` unless `path` can be written as described above; `protected` are the folders
    (reports) it must not lie in. Returns `path`."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise InputError(f"{flag}: {path} cannot be used ({exc.strerror or exc})") from None
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise InputError(f"{flag}: {path} is a symbolic link; give the path of a regular file to write")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise InputError(f"{flag}: {path} exists and is not a regular file (a folder, a FIFO or a device); give "
                         "the path of a regular file to write")
    parent = path.parent.resolve()
    if not parent.is_dir():
        raise InputError(f"{flag}: the folder {path.parent} does not exist; create it first")
    target = parent / path.name
    for folder in protected:
        if target.is_relative_to(Path(folder).resolve()):
            raise InputError(f"{flag}: {path} is inside the report {folder}, which it would change; write it "
                             "outside the report")
    return path


def write_side_file(path: Path, text: str, flag: str) -> None:
    """Write `text` (UTF-8) to `path` atomically: a temporary file beside it, renamed over it."""
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise InputError(f"{flag}: cannot write {path} ({exc.strerror or exc})") from None
    try:
        with open(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)  # noqa: PTH101 - mkstemp makes it private; the file is meant to be read
        os.replace(temporary, path)  # noqa: PTH105
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)  # noqa: PTH108
        raise InputError(f"{flag}: cannot write {path} ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)  # noqa: PTH108
        raise
