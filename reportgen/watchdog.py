"""No report hangs silently and no native crash goes unexplained: the report runs in a child process, watched.

`reportgen generate` and `reportgen demo` start themselves again as a child (`supervise`) and only watch it. The
child sends a heartbeat, a short JSON line on an inherited pipe, whenever its progress moves (`beat`, called by
`progress.Progress` for every step and counter update) and names the staging folder it writes into (`staging`).
The parent imports no TensorFlow and holds no lock the child could take, so whatever happens in the child it can:

- end a run that made no progress for `stall_seconds` (300 s, or the step's own estimate when that is longer),
  with one line naming the section and step, exit 1;
- name the section and step that were running when the child died of a signal (a native abort in TensorFlow, a
  segmentation fault, the kernel's out-of-memory killer) and what to try, exit 1.

Either way the child never reached its final swap, so OUT is as it was; the parent removes the staging folder.
A watchdog thread inside the report's process could not do the second, and a native deadlock holding the GIL
would stop it too. This module imports only the standard library.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HEARTBEAT_FD_VARIABLE = "REPORTGEN_HEARTBEAT_FD"  # set by the parent for the child: the pipe's write end
STALL_VARIABLE = "REPORTGEN_STALL_SECONDS"  # how long a step may make no progress; documented in the README
# Five minutes: a hang is found a few minutes later than with two, but a slow step is not taken for one. A default
# ConvNeXtTiny report at 224 px on a busy 2-core machine went 120 s without progress in the CAM curves (a last, smaller
# chunk of variants recompiled Keras's XLA depthwise convolution) and was stopped after 23 minutes of work.
DEFAULT_STALL_SECONDS = 300.0
# A step whose own estimate is E seconds gets stall + ESTIMATE_FACTOR x E before it counts as stalled: estimates
# run up to about 1.5x short on models unlike the ones they were measured on.
ESTIMATE_FACTOR = 3.0
SUPERVISED_COMMANDS = ("generate", "demo")
_BEAT_INTERVAL = 1.0  # seconds between two beats of the same step: a counter may update thousands of times a second
_MESSAGE_LIMIT = 400  # characters of a step's message sent; a line stays far below PIPE_BUF, so writes are atomic
_KILL_GRACE = 10.0  # seconds to wait for a killed child to be reaped


# ------------------------------------------------------------------------------------------------ child side


class _Heartbeat:
    """The child's end of the pipe; writes are single `os.write` calls of whole lines (atomic under PIPE_BUF)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._last: tuple[str, float] = ("", 0.0)

    def send(self, message: dict, stage: str | None = None, frequent: bool = False) -> None:
        """`frequent`: a beat that may come thousands of times a second (a counter), sent once a second at most
        for the same stage; every other beat is sent, so the parent always knows the step that is running."""
        now = time.monotonic()
        if frequent and stage == self._last[0] and now - self._last[1] < _BEAT_INTERVAL:
            return
        if stage is not None:
            self._last = (stage, now)
        try:
            os.write(self._fd, (json.dumps(message, ensure_ascii=True) + "\n").encode("ascii"))
        except OSError:  # the parent is gone: the report goes on, unwatched
            pass


def _heartbeat_from_environment() -> _Heartbeat | None:
    value = os.environ.pop(HEARTBEAT_FD_VARIABLE, None)  # popped: the child's own children are not watched
    if value is None:
        return None
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        return None
    return _Heartbeat(fd)


_HEARTBEAT = _heartbeat_from_environment()


def beat(stage: str, message: str = "", expect_seconds: float | None = None, frequent: bool = False) -> None:
    """Tell the watching parent (if any) that `stage` moved; `expect_seconds`: how long the step now starting is
    estimated to take, when that may be longer than the stall limit; `frequent`: a counter's update."""
    if _HEARTBEAT is not None:
        _HEARTBEAT.send({"stage": stage, "message": message[:_MESSAGE_LIMIT], "expect": expect_seconds},
                        stage=stage, frequent=frequent)


def staging(path: Path | None) -> None:
    """Tell the watching parent (if any) which staging folder the report is being written into (None: done)."""
    if _HEARTBEAT is not None:
        _HEARTBEAT.send({"staging": None if path is None else str(path)})


# ----------------------------------------------------------------------------------------------- parent side


@dataclass
class _Watch:
    """What the parent knows of the child: its last step, when it last moved, and its staging folder."""

    stall_seconds: float
    stage: str = "start"
    message: str = "starting Python"
    expect: float | None = None
    moved: float = field(default_factory=time.monotonic)
    staging_folder: str | None = None

    def read(self, line: bytes) -> None:
        try:
            beat = json.loads(line)
        except ValueError:
            return
        if not isinstance(beat, dict):
            return
        if "staging" in beat:
            self.staging_folder = beat["staging"] if isinstance(beat["staging"], str) else None
            return
        self.stage, self.message = str(beat.get("stage", "")), str(beat.get("message", ""))
        expect = beat.get("expect")
        self.expect = float(expect) if isinstance(expect, int | float) else None
        self.moved = time.monotonic()

    @property
    def allowed(self) -> float:
        return self.stall_seconds + ESTIMATE_FACTOR * (self.expect or 0.0)

    def where(self) -> str:
        step = f" at '{self.message}'" if self.message and self.message != "start" else ""
        return f"in the {self.stage} step{step}"


def stall_seconds() -> float:
    """`REPORTGEN_STALL_SECONDS`, or the default; a bad value is an input error."""
    from reportgen.errors import InputError

    value = os.environ.get(STALL_VARIABLE)
    if value is None or not value.strip():
        return DEFAULT_STALL_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise InputError(f"{STALL_VARIABLE}: expected a positive number of seconds, got {value!r}")
    return seconds


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _crash_line(watch: _Watch, number: int) -> str:
    name = _signal_name(number)
    if number == signal.SIGKILL:
        hint = "The system may have run out of memory: try a smaller --batch-size or --image-size"
    else:
        hint = ("This is a crash in native code (TensorFlow's kernels): try TF_ENABLE_ONEDNN_OPTS=0, a smaller "
                "--batch-size, or --sections without this one, and report it")
    return f"Error: the report process died of {name} {watch.where()}; nothing was written. {hint}."


def _stall_line(watch: _Watch) -> str:
    return (f"Error: no progress for {watch.allowed:.0f} s {watch.where()}; the report was stopped and nothing "
            f"was written. If the step is just slow, set {STALL_VARIABLE} higher (now {watch.stall_seconds:g}).")


def _remove_staging(watch: _Watch) -> None:
    if watch.staging_folder:
        shutil.rmtree(watch.staging_folder, ignore_errors=True)


def supervise(argv: list[str]) -> int:
    """Run `reportgen ARGV` in a child process and watch it; returns the exit code for this process."""
    from reportgen.errors import InputError

    try:
        watch = _Watch(stall_seconds())
    except InputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    _adopt_orphans()
    read_end, write_end = os.pipe()
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, HEARTBEAT_FD_VARIABLE: str(write_end),
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    try:
        # Every inheritable descriptor goes to the child, as if it were this process: a `--class-names <(...)`
        # names one. The pipe's read end stays here (pipes are not inheritable by default).
        os.set_inheritable(write_end, True)
        child = subprocess.Popen([sys.executable, "-m", "reportgen.cli", *argv], close_fds=False, env=env)
    finally:
        os.close(write_end)

    # Ctrl-C reaches the child from the terminal itself (one process group): it cleans up and exits 130. A SIGTERM
    # sent to this process alone (a CI timeout) is passed on.
    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, forward)
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as beats:
        while True:
            timeout = max(0.0, watch.moved + watch.allowed - time.monotonic())
            ready, _, _ = select.select([beats], [], [], min(timeout, 1.0))
            if ready:
                chunk = beats.read(65536)
                if not chunk:  # the child (and every process it shared the pipe with) closed it
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    watch.read(line)
            elif child.poll() is not None:
                break
            elif time.monotonic() - watch.moved > watch.allowed:
                _stop(child)
                _end_orphans()
                _remove_staging(watch)
                print(_stall_line(watch), file=sys.stderr)
                return 1
    code = child.wait()
    if code < 0:
        _end_orphans()
        _remove_staging(watch)
        print(_crash_line(watch, -code), file=sys.stderr)
        return 1
    return code


_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _adopt_orphans() -> None:
    """Become the subreaper of the report's process tree (Linux): processes it leaves behind when it dies, such as
    Ray's dashboard and runtime-environment agents (grandchildren, in process groups of their own), become this
    process's children instead of init's, so `_end_orphans` can end them."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init, as without a watchdog
        pass


def _children() -> list[int]:
    """This process's live children (Linux's /proc; empty elsewhere)."""
    found = []
    for task in Path("/proc/self/task").glob("*/children"):
        try:
            found.extend(int(pid) for pid in task.read_text().split())
        except (OSError, ValueError):
            continue
    return found


def _end_orphans(grace: float = 3.0) -> None:
    """After the report process died or was killed: SIGTERM what it left behind, SIGKILL what is left after
    `grace` seconds, and reap them all."""
    for number in (signal.SIGTERM, signal.SIGKILL):
        for pid in _children():
            try:
                os.kill(pid, number)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.05)


def _stop(child: subprocess.Popen) -> None:
    """End a stalled child: SIGKILL, as it may be stuck where no signal handler runs."""
    child.kill()
    try:
        child.wait(_KILL_GRACE)
    except subprocess.TimeoutExpired:
        pass


def command_of(argv: list[str]) -> str | None:
    """The subcommand of a `reportgen` command line (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def should_supervise(argv: list[str]) -> bool:
    """True for a report-writing command run from the command line, when this process is not already the child."""
    return command_of(argv) in SUPERVISED_COMMANDS and HEARTBEAT_FD_VARIABLE not in os.environ \
        and _HEARTBEAT is None
