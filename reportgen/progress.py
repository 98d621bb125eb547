"""Progress lines on stderr for long steps; silent with --quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Callable progress reporter: `progress("weights", "conv1 (2/5)")`. Disabled, it does nothing."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream
        self._start = time.perf_counter()

    def __call__(self, stage: str, message: str = "") -> None:
        if not self.enabled:
            return
        stream = self.stream or sys.stderr
        elapsed = time.perf_counter() - self._start
        stream.write(f"[{elapsed:6.1f}s] {stage}{': ' + message if message else ''}\n")
        stream.flush()


SILENT = Progress(enabled=False)
