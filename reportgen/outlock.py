"""One run at a time per output folder: a lock file beside OUT (`.OUT.lock`), held from the sweep of a killed
run's leftovers to the final swap.

Without it, a second run into the same OUT sweeps the first run's staging folder (`.OUT.building-*`) while the
first is still writing it. The second run does not wait (it could wait for minutes without saying why): it stops
at once, before loading anything, with exit 2 naming OUT. The lock is `fcntl.flock` on the file, so the kernel
releases it whenever its holder ends, SIGKILL included; a file left behind by a killed run is simply taken by
the next one. A run that ends normally removes the file (and the parent folders it had to create for it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from reportgen.errors import OutputError


def lock_path(out: Path) -> Path:
    """`.OUT.lock` beside OUT (hidden, and never one of the leftovers `render.sweep_leftovers` removes)."""
    return out.parent / f".{out.name}.lock"


def _missing_parents(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def output_lock(out: Path, flag: str = "-o/--output-dir") -> Iterator[Path]:
    """Hold the lock of the (absolute) output folder `out` for the block; OutputError (exit 2) naming `flag` and
    OUT when another run holds it."""
    path = lock_path(out)
    created = _missing_parents(out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{flag}: cannot create {out.parent} ({exc.strerror or exc})") from None
    try:
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise OutputError(f"{flag}: cannot create the lock file {path} ({exc.strerror or exc}); "
                                  "choose a writable location") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(f"{flag}: another reportgen run is writing {out} right now (it holds {path}); "
                                  "wait for it to finish, or write to another folder") from None
            except OSError:
                os.close(fd)
                raise
            # The holder before us may have removed the file between our open and our lock: then we hold a lock
            # on a file nobody else can see, so open the path again.
            try:
                same = path.lstat().st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # while still holding the lock, so a waiting run re-opens a fresh file
            os.close(fd)
    finally:
        for folder in created:  # only those this run created, and only while still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
