"""How the command line starts: TensorFlow imported quietly and cheaply, SIGTERM ending a run as Ctrl-C does."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from typing import Any

# Modules Keras imports at its own import though a report never uses what they give it (see import_tensorflow).
KERAS_OPTIONAL_IMPORTS = ("pandas", "matplotlib")


@contextlib.contextmanager
def _without_optional_imports(names: tuple[str, ...]) -> Iterator[None]:
    """Within the block, `import NAME` (and its submodules) raises ImportError for each of `names` not yet
    imported, as if it were not installed, so an optional `try: import` skips it; afterwards it imports normally.
    Modules already imported are left alone."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # the import system's own "not importable" marker
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def import_tensorflow(quiet: bool = True) -> None:
    """Import TensorFlow, with its C++ start-up chatter (CUDA, oneDNN, absl) kept off the terminal when `quiet`.

    Some of those lines are written before TF_CPP_MIN_LOG_LEVEL is read, so stderr's file descriptor is
    pointed at /dev/null for the import; Python exceptions still surface normally afterwards.

    The import creates about 400,000 long-lived objects, and the cyclic garbage collector's full passes over
    them cost about 0.9 s of the import and 0.2-0.3 s each later (tracing a function allocates enough to start
    one). So the collector is off for the import, and what the import created is then frozen out of its view
    (`gc.freeze`): only objects of the report itself are ever scanned.

    Keras imports pandas and matplotlib's pyplot at its own import only to recognise DataFrames and for its
    plotting helpers, neither of which a report uses; they are half a second of the import. They are kept out of
    it (see `_without_optional_imports`) and import normally afterwards: this process draws only if the plotting
    worker fails, and the Ray engine's pandas is imported when it starts.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with _without_optional_imports(KERAS_OPTIONAL_IMPORTS):
            if quiet:
                sys.stderr.flush()
                saved = os.dup(2)
                try:
                    with open(os.devnull, "w") as devnull:
                        os.dup2(devnull.fileno(), 2)
                        try:
                            import tensorflow
                        finally:
                            os.dup2(saved, 2)
                finally:
                    os.close(saved)
            else:
                import tensorflow  # noqa: F401
            import keras  # noqa: F401  (within the window: TensorFlow's import leaves Keras for later)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def sigterm_as_interrupt() -> None:
    """SIGTERM (kill, a CI timeout) ends a run as Ctrl-C does: staging folders removed, OUT as it was."""
    import signal
    import threading

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
