"""The report's plots drawn in a process of their own.

matplotlib is pure Python, and in the report's process it takes turns for the GIL with the sections' tracing
and Python work: on a small model that costs the report about as much time as the plots take. A worker process
draws them on another core instead, and imports matplotlib there, beside the model's loading.

Requests and replies are pickles over the worker's stdin and stdout (`python -m reportgen.plot_worker`), not
`multiprocessing`: its spawned children import the caller's `__main__`, which re-runs a user's script that has
no main guard. Only functions of `reportgen.figures` whose names start with `plot_` can be asked for. If the worker
cannot start or dies, `PlotWorker` draws what is left in its caller's process (same pixels, slower).
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_HEADER = struct.Struct("<Q")  # the byte length of the pickle that follows
# The niceness of the report's background work, this worker and the figure encoder's threads (`render`): on a
# machine with few cores the model's work, the critical path, runs first and the background fills the gaps.
BACKGROUND_NICENESS = 10


def _send(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    """The next message, or None at the end of the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)  # our own process, on the other end of a private pipe


def plot_function(name: str) -> Callable[..., np.ndarray]:
    """The plotting function `reportgen.figures.<name>`; nothing else may be called through the worker."""
    from reportgen import figures

    if not name.startswith("plot_") or not callable(getattr(figures, name, None)):
        raise ValueError(f"not a plotting function of reportgen.figures: {name!r}")
    return getattr(figures, name)


def _start() -> subprocess.Popen | None:
    """A new worker process, or None when this Python cannot start one."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    try:
        return subprocess.Popen([sys.executable, "-m", "reportgen.plot_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    except OSError:
        return None


_prestarted: list[subprocess.Popen] = []


def prestart() -> None:
    """Start a worker now for the next `PlotWorker` to take over. The command line calls this before importing
    TensorFlow, which keeps one core busy for seconds: the worker's own imports then run on another one. A worker
    nobody takes ends with this process (its stdin closes)."""
    if not _prestarted and (process := _start()) is not None:
        _prestarted.append(process)


class PlotWorker:
    """A plotting process: `submit(draw, *args)` returns a Future of `draw(*args)`'s pixels at once."""

    def __init__(self) -> None:
        # Two locks, never held together: `_lock` guards the table of pending requests and is only held for a
        # moment, `_write` orders whole requests on the worker's stdin and may wait while the pipe is full. The
        # reply reader takes only `_lock`, so it keeps draining replies while a request waits to be written: a
        # worker blocked on a full stdout pipe always gets unblocked, and the writer with it.
        self._lock = threading.Lock()
        self._write = threading.Lock()
        self._pending: dict[int, tuple[Future[np.ndarray], str, tuple, dict]] = {}
        self._next = 0
        self._local = False  # True once the worker is gone: requests are drawn here
        self._process = _prestarted.pop() if _prestarted else _start()
        if self._process is None:
            self._local = True
            return
        self._reader = threading.Thread(target=self._read_replies, name="reportgen-plot-replies", daemon=True)
        self._reader.start()

    def submit(self, draw: Callable[..., np.ndarray], *args: Any, **kwargs: Any) -> Future[np.ndarray]:
        name = draw.__name__
        plot_function(name)  # a wrong name fails here, in the caller
        future: Future[np.ndarray] = Future()
        with self._lock:
            local = self._local
            if not local:
                number, self._next = self._next, self._next + 1
                self._pending[number] = (future, name, args, kwargs)
        if not local:
            try:
                with self._write:
                    assert self._process is not None and self._process.stdin is not None
                    _send(self._process.stdin, (number, name, args, kwargs))
                return future
            except (OSError, ValueError):  # the worker is gone
                with self._lock:
                    if self._pending.pop(number, None) is None:
                        return future  # the reply reader took it over and draws it
        _draw_into(future, name, args, kwargs)
        return future

    def _read_replies(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while (reply := _receive(self._process.stdout)) is not None:
            number, ok, payload = reply
            with self._lock:
                future = self._pending.pop(number)[0]
            future.set_result(payload) if ok else future.set_exception(payload)
        # The worker ended: draw whatever it left unanswered here, and everything from now on.
        with self._lock:
            self._local = True
            left, self._pending = list(self._pending.values()), {}
        for future, name, args, kwargs in left:
            _draw_into(future, name, args, kwargs)

    def close(self, finish: bool = True) -> None:
        """Let the worker finish what it was given (`finish`), or stop it at once, then end it."""
        if self._process is None:
            return
        if not finish:
            self._process.kill()
        try:
            assert self._process.stdin is not None
            self._process.stdin.close()
        except OSError:
            pass
        self._reader.join()
        self._process.wait()


def _draw_into(future: Future[np.ndarray], name: str, args: tuple, kwargs: dict) -> None:
    try:
        future.set_result(plot_function(name)(*args, **kwargs))
    except Exception as exc:
        future.set_exception(exc)


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The worker's loop: draw each request, reply with its pixels or its exception, until stdin ends."""
    while (request := _receive(requests)) is not None:
        number, name, args, kwargs = request
        try:
            reply = (number, True, plot_function(name)(*args, **kwargs))
        except Exception as exc:
            reply = (number, False, exc)
        _send(replies, reply)


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the report's process handles it and closes our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from reportgen import figures

    try:
        os.nice(BACKGROUND_NICENESS)
    except OSError:
        pass
    figures.warm_up_plots()  # matplotlib's import and fonts, while the report's process loads the model
    serve(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout.flush()
    os._exit(0)  # every reply is out; the interpreter's teardown would only make the report wait
