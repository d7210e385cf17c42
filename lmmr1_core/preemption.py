"""Stopping well: on SIGTERM (what SLURM and Kubernetes send before preemption) or a first Ctrl-C, the
current step finishes, a checkpoint is written and the run exits saying so; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lmmr1_core.errors import LmmError


class Preempted(LmmError):
    """The run stopped after a checkpoint because it was asked to; rerunning resumes it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """While the block runs, SIGTERM and a first SIGINT only set the flag; a second SIGINT raises
    KeyboardInterrupt at once. Outside the main thread (no signal handlers there) the flag stays unset."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_signal(signum, frame):
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum
        what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        print(f"\n{what}: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr)  # fmt: skip

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
