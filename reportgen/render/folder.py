"""The output folder: checks before any work, the sweep of a killed run's leftovers, and the atomic swap that puts a
new report in place (OUT holds the old report or the new one, never neither)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from reportgen.errors import OutputError
from reportgen.report_folder.read import read_manifest


def is_report_dir(path: Path) -> bool:
    """True when `path` holds a report written by reportgen (its manifest says so)."""
    return read_manifest(path) is not None


STAGING_SUFFIX = 8  # characters tempfile.mkdtemp adds to a prefix


LEFTOVER_KINDS = ("building", "old", "publishing")  # `.OUT.building-*`: staging and retired folders of a run


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_writable_target(out: Path, flag: str) -> Path:
    """`out` made absolute (so `-o .` has a name and a parent), checked to be writable as a folder beside which
    a staging folder fits: no ancestor is a file, the nearest existing one accepts new folders, and the staging
    name (`.OUT.publishing-XXXXXXXX`, the longest) is not too long. Returns the absolute path."""
    resolved = Path(out).resolve()
    if resolved.parent == resolved:
        raise OutputError(f"{flag}: {out} is the file system's root; choose a folder for the report")
    existing = resolved.parent
    while not existing.exists():
        if existing.is_symlink():  # a dangling link
            raise OutputError(f"{flag}: {existing} is a broken symbolic link; choose another folder")
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag}: {existing} is a file, so {out} cannot be created inside it; choose a folder "
                          "whose parent is a folder")
    longest = f".{resolved.name}.publishing-" + "x" * STAGING_SUFFIX
    limit = _name_max(existing)
    if len(os.fsencode(longest)) > limit:
        room = limit - len(os.fsencode(longest)) + len(os.fsencode(resolved.name))
        raise OutputError(f"{flag}: the folder name {resolved.name[:40]!r}... is too long "
                          f"({len(os.fsencode(resolved.name))} bytes; at most {room} leave room for the staging "
                          "folder beside it); choose a shorter name")
    try:
        probe = tempfile.mkdtemp(prefix=".reportgen-probe-", dir=existing)
    except OSError as exc:
        raise OutputError(f"{flag}: cannot create folders in {existing} ({exc.strerror or exc}); choose a "
                          "writable location") from None
    Path(probe).rmdir()
    return resolved


def check_output_dir(out: Path, force: bool) -> Path:
    """Refuse an OUT that would lose someone's files (it exists, is not empty and is not an earlier report) or
    that cannot be written (see `check_writable_target`), before any work. Returns OUT as an absolute path."""
    flag = "-o/--output-dir"
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag}: {out} exists and is a file; choose a folder name")
    resolved = check_writable_target(out, flag)
    if not resolved.exists():
        return resolved
    if force or is_report_dir(resolved) or not any(resolved.iterdir()):
        return resolved
    raise OutputError(
        f"{flag}: {out} exists, is not empty and is not a reportgen report; choose another folder or "
        "pass --force to replace it"
    )


def _leftovers(out: Path) -> list[Path]:
    if not out.parent.is_dir():
        return []
    prefixes = tuple(f".{out.name}.{kind}-" for kind in LEFTOVER_KINDS)
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(prefixes)
                  and len(p.name) == len(next(x for x in prefixes if p.name.startswith(x))) + STAGING_SUFFIX
                  and p.is_dir() and not p.is_symlink())


def sweep_leftovers(out: Path) -> list[Path]:
    """Remove what an earlier run killed mid-write left beside `out` (`.OUT.building-*`, `.OUT.old-*`,
    `.OUT.publishing-*`). When `out` itself is missing and a retired copy is a report, that copy is the earlier
    report caught between the two moves of a swap: it is put back at `out` first. Returns what was removed."""
    out = Path(out)
    leftovers = _leftovers(out)
    if not out.exists():
        retired = [p for p in leftovers if p.name.startswith(f".{out.name}.old-") and is_report_dir(p)]
        if retired:
            newest = max(retired, key=lambda p: p.stat().st_mtime)
            newest.rename(out)
            leftovers.remove(newest)
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    return leftovers


def raise_if_disk_full(exc: OSError, path: Path) -> None:
    """A full disk (or quota) is the user's to fix: OutputError naming where, instead of an internal error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise OutputError(f"no space left on device at {path}; free some space or write elsewhere (nothing was "
                          "written)") from None


_RENAME_EXCHANGE = 2  # linux/fs.h


_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): at no moment is either missing. False when
    the system or file system does not support it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM arriving inside the block are held until it ends (recorded in the yielded list), so a
    swap of folders is never cut between its steps. Only the main thread can install handlers; elsewhere the
    block runs as it is."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def swap_into_place(staging: Path, out: Path) -> None:
    """Move `staging` to `out`, replacing an earlier `out` so that, whatever signal arrives (SIGKILL included),
    `out` holds either the old or the new folder: one atomic exchange where the system has it, else two renames
    with signals held between them (after a SIGKILL there, the next run's `sweep_leftovers` puts the old one
    back). The old folder is deleted once the new one is in; a Ctrl-C or SIGTERM during the swap is raised
    after it, saying the report was written."""
    with _signals_held() as received:
        if not out.exists():
            staging.rename(out)
            retired = None
        elif _exchange(staging, out):
            retired = staging  # now holds the old folder
        else:
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            retired.rmdir()
            out.rename(retired)
            try:
                staging.rename(out)
            except BaseException:
                retired.rename(out)
                raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    if received:
        raise KeyboardInterrupt(f"after {out} was written")


# ------------------------------------------------------------------------------------------ published site
