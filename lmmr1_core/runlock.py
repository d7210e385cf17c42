"""One writer per run directory: a lock file beside it holding the holder's pid and host.

A second ``lmmr1 run`` on the same directory stops with one line naming the holder; a lock whose process
is gone (same host, dead pid) is taken over with a notice. Under torchrun only rank 0 takes it (the other
ranks write nothing). The file sits beside the run directory, so ``--fresh`` deleting the run keeps it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from lmmr1_core.errors import LmmError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and (holder.get("host") != me["host"] or _alive(int(holder.get("pid", 0)))):
                    raise LmmError(f"{self.path.parent / self.path.name[1:-5]} is in use by another lmmr1 run "
                                   f"(pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}); "
                                   f"wait for it to finish or stop it (lock: {self.path})") from None  # fmt: skip
                print(f"note: taking over the lock of a run that is gone ({self.path}: "
                      f"{holder or 'unreadable'})", file=sys.stderr)  # fmt: skip
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise LmmError(f"could not take the run lock {self.path}")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
