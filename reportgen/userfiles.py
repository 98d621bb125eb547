"""Small files a user names on the command line (--config, --rules, --class-names): read one way everywhere.

Only a regular file is read (a FIFO would block, /dev/zero never ends, a folder is no file), at most a size limit
(read as limit + 1 bytes, so an oversized file costs no more memory than the limit), as UTF-8. Every failure is an
InputError naming the option and the file, so the CLI says it in one line with exit code 2.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from reportgen.errors import InputError

MAX_TOML_BYTES = 1 << 20  # a config or a rules file is a few lines of TOML


def size_text(limit: int) -> str:
    """A byte limit as a reader writes it: "1 MiB", "16 MiB", "512 KiB"."""
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"


def read_regular_file(path: str | Path, where: str, limit: int, what: str) -> bytes:
    """The bytes of `path`, when it is a regular file of at most `limit` bytes. `where` names the option
    (`--rules`), `what` says what the file should be ("a TOML file of rules")."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{where}: {path} does not exist; give {what}") from None
    except OSError as exc:
        raise InputError(f"{where}: {path} cannot be read ({exc.strerror or exc})") from None
    with open(fd, "rb") as handle:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InputError(f"{where}: {path} is not a regular file; give {what}")
            data = handle.read(limit + 1)
        except OSError as exc:
            raise InputError(f"{where}: {path} cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise InputError(f"{where}: {path} is over {size_text(limit)}; give {what}")
    return data


def read_text_file(path: str | Path, where: str, limit: int, what: str) -> str:
    """`read_regular_file` decoded as UTF-8 (a binary or latin-1 file is bad input)."""
    data = read_regular_file(path, where, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{where}: {path} is not UTF-8 text; save it as UTF-8 ({what})") from None


def read_toml_file(path: str | Path, where: str, what: str = "a TOML file",
                   limit: int = MAX_TOML_BYTES) -> dict[str, Any]:
    """A TOML file as a dict: a regular UTF-8 file of at most `limit` bytes that parses (one nested too deep for
    the parser, e.g. 100,000 open brackets, is bad input too)."""
    text = read_text_file(path, where, limit, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{where}: {path} is not a valid TOML file ({exc})") from None
    except RecursionError:
        raise InputError(f"{where}: {path} nests arrays or tables too deep to read; give {what}") from None
