"""Progress lines on stderr for long steps; silent with --quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from reportgen import watchdog


class Progress:
    """Callable progress reporter: `progress("weights", "conv1 (2/5)")`. Disabled, it does nothing."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream
        self._start = time.perf_counter()

    def __call__(self, stage: str, message: str = "", expect_seconds: float | None = None) -> None:
        """Print a progress line; `expect_seconds`: the estimated time of the step now starting, when known (the
        watchdog then waits that long, and more, before it calls the step stalled)."""
        watchdog.beat(stage, message, expect_seconds)
        if not self.enabled:
            return
        stream = self.stream or sys.stderr
        elapsed = time.perf_counter() - self._start
        stream.write(f"[{elapsed:6.1f}s] {stage}{': ' + message if message else ''}\n")
        stream.flush()


    def counter(self, stage: str, total: int, unit: str = "images", every: float = 5.0,
                what: str = "") -> ProgressCounter:
        """A progress bar for `total` items (a line redrawn in place on a terminal, a line every `every` seconds
        otherwise), with the rate and the time left."""
        return ProgressCounter(self, stage, total, unit, every, what)


class ProgressCounter:
    """`counter(done)` as items complete; `close()` prints the final line."""

    WIDTH = 24

    def __init__(self, progress: Progress, stage: str, total: int, unit: str, every: float, what: str = "") -> None:
        """`what`: what is being counted, shown before the count (`conv1, conv2: 3/16 steps`)."""
        self.progress, self.stage, self.total, self.unit, self.every = progress, stage, max(1, total), unit, every
        self.what = f"{what}: " if what else ""
        self.started = time.perf_counter()
        self.last = -float("inf")
        self.done = 0

    @property
    def _tty(self) -> bool:
        stream = self.progress.stream or sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())

    def line(self, done: int) -> str:
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("nan")
        filled = int(self.WIDTH * done / self.total)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        eta = f"{left:.0f} s left" if left == left else "starting"
        return f"{self.what}[{bar}] {done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s, {eta}"

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total:
            self.total = max(1, total)
        watchdog.beat(self.stage, f"{self.what}{done}/{self.total} {self.unit}", frequent=True)
        if not self.progress.enabled:
            return
        now = time.perf_counter()
        if self._tty:
            if now - self.last >= 0.2 or done >= self.total:
                stream = self.progress.stream or sys.stderr
                stream.write(f"\r{self.stage}: {self.line(done)}\033[K")
                stream.flush()
                self.last = now
        elif now - self.last >= self.every:
            self.progress(self.stage, self.line(done))
            self.last = now

    def close(self) -> None:
        if not self.progress.enabled:
            return
        if self._tty:
            (self.progress.stream or sys.stderr).write("\n")
        self.progress(self.stage, self.what + self.line(self.done).split("] ", 1)[1])


SILENT = Progress(enabled=False)
