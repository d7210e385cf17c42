"""What a stage writes as it goes: metrics.jsonl, samples.jsonl and tensorboard events."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def main_process() -> bool:
    """Under ``torchrun`` every rank runs the same stage; only rank 0 writes the run's files."""
    return int(os.environ.get("RANK", "0")) == 0


class RunLog:
    """Appends one JSON object per step; lines past a resumed checkpoint were truncated before.

    On a rank other than 0 (``torchrun``) it writes nothing.
    """

    def __init__(self, stage_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.enabled = main_process()
        self.dir = Path(stage_dir)
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.dir / "metrics.jsonl", "a")
        self._samples = open(self.dir / "samples.jsonl", "a")
        self._tb = SummaryWriter(str(self.dir / "tensorboard"))

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, step)

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        for row in rows:
            self._samples.write(json.dumps({"step": step, **row}, default=str) + "\n")
        self._samples.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._metrics.close()
        self._samples.close()
        self._tb.close()
