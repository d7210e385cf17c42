"""What a stage writes as it goes: metrics.jsonl, samples.jsonl, tensorboard events and the experiment trackers
the stage file names (``logging``: wandb, trackio, mlflow; ``lmmr1_core.trackers``)."""

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
    """Appends one JSON object per step; lines past a resumed checkpoint were truncated before. The same
    metrics and sample rows go to tensorboard (unless ``logging.tensorboard`` is off) and to each tracker
    ``logging`` names, which get ``config`` (already redacted) when they open a run named ``<run>/<stage>``.

    On a rank other than 0 (``torchrun``) it writes nothing.
    """

    def __init__(self, stage_dir: Path, logging: Any = None, run: str = "", config: dict[str, Any] | None = None,
                 purge_step: int | None = None):  # fmt: skip
        """``purge_step``: a resume from the checkpoint before it; tensorboard drops its points from there on
        (they are recomputed), so no step gets two."""
        from lmmr1_core.trackers import Trackers

        self.enabled = main_process()
        self.dir = Path(stage_dir)
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.dir / "metrics.jsonl", "a")
        self._samples = open(self.dir / "samples.jsonl", "a")
        self._tb = None
        if logging is None or logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge_step)
        self.trackers = Trackers(logging, run or self.dir.parent.name, self.dir.name, self.dir, config or {})

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                   and not isinstance(v, bool)}  # fmt: skip
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, step)
        self.trackers.log(step, numbers)

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        for row in rows:
            self._samples.write(json.dumps({"step": step, **row}, default=str) + "\n")
        self._samples.flush()
        self.trackers.table(step, rows)

    def close(self) -> None:
        if not self.enabled:
            return
        self._metrics.close()
        self._samples.close()
        if self._tb is not None:
            self._tb.close()
        self.trackers.finish()
