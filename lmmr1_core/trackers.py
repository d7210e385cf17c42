"""Experiment trackers (Weights & Biases, trackio, MLflow) beside metrics.jsonl and tensorboard.

Each stage opens one run per tracker named in the stage file's ``logging`` section (``<run>/<stage>``, grouped
by the run's name) and logs to it what metrics.jsonl gets (every numeric value, each step), the stage's config
(secrets redacted by the caller) and its sample tables. Trackers are optional extras: one that is not installed,
fails to start or fails mid-run is reported once, on stderr, and dropped; training never stops for it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lmmr1_core import secrets

_reported: set[str] = set()  # trackers already reported in this process: once, not once a stage


def report(name: str, message: str) -> None:
    if name not in _reported:
        _reported.add(name)
        print(f"warning: logging.{name}: {message}; training goes on without it", file=sys.stderr)


def _cell(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, default=str)


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Sample rows (samples.jsonl's) as (columns, data): nested values as JSON text."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return columns, [[_cell(r.get(c)) for c in columns] for r in rows]


class Wandb:
    """A Weights & Biases run; files under the stage's directory unless ``dir`` says otherwise."""

    def __init__(self, options: dict[str, Any], run: str, stage: str, stage_dir: Path, config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        kwargs = {"project": "lmmr1", "name": f"{run}/{stage}", "group": run, "dir": str(stage_dir),
                  "config": config, **options}  # fmt: skip
        self.run = wandb.init(**kwargs)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        columns, data = table(rows)
        self.run.log({"samples": self.wandb.Table(columns=columns, data=data)}, step=step)

    def finish(self) -> None:
        self.run.finish()


class Trackio:
    """A trackio run (local files under TRACKIO_DIR unless ``space_id`` or ``server_url`` says otherwise)."""

    def __init__(self, options: dict[str, Any], run: str, stage: str, stage_dir: Path, config: dict[str, Any]):
        import trackio

        self.trackio = trackio
        kwargs = {"project": "lmmr1", "name": f"{run}/{stage}", "group": run, "config": config, **options}
        self.run = trackio.init(**kwargs)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        columns, data = table(rows)
        self.run.log({"samples": self.trackio.Table(columns=columns, data=data)}, step=step)

    def finish(self) -> None:
        self.run.finish()


class Mlflow:
    """An MLflow run through ``MlflowClient`` (no global active run); the config as ``config.json`` and as
    flattened params, sample tables as ``samples/step_N.json`` artifacts."""

    KEYS = {"tracking_uri", "experiment", "tags"}

    def __init__(self, options: dict[str, Any], run: str, stage: str, stage_dir: Path, config: dict[str, Any]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        unknown = set(options) - self.KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (keys: {sorted(self.KEYS)})")
        self.client = MlflowClient(tracking_uri=options.get("tracking_uri"))  # None: MLFLOW_TRACKING_URI, mlflow's
        # the file store keeps a metric in a file named by its key, so `reward/x` and `reward/x/errors` collide
        self.sep = "." if str(self.client.tracking_uri).startswith("file:") else "/"
        name = options.get("experiment") or run
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        own = secrets.redact({str(k): str(v) for k, v in (options.get("tags") or {}).items()})  # no secret as a tag
        tags = {"lmmr1.run": run, "lmmr1.stage": stage, **own}
        self.run_id = self.client.create_run(experiment, run_name=f"{run}/{stage}", tags=tags).info.run_id
        self.client.log_dict(self.run_id, config, "config.json")
        params = [Param(k, str(v)[:500]) for k, v in _flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k.replace("/", self.sep), float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        columns, data = table(rows)
        self.client.log_table(self.run_id, {c: [r[i] for r in data] for i, c in enumerate(columns)},
                              f"samples/step_{step:06d}.json")  # fmt: skip

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


TRACKERS = {"wandb": Wandb, "trackio": Trackio, "mlflow": Mlflow}


class Trackers:
    """The stage's open trackers; a call that raises drops that tracker (reported once) and never propagates."""

    def __init__(self, logging: Any, run: str, stage: str, stage_dir: Path, config: dict[str, Any]) -> None:
        self.active: list[tuple[str, Any]] = []
        for name, cls in TRACKERS.items():
            options = getattr(logging, name, None) if logging is not None else None
            if options is None:
                continue
            try:
                options = secrets.resolve(dict(options), f"logging.{name}")  # `${env:NAME}` references
                self.active.append((name, cls(options, run, stage, Path(stage_dir), config)))
            except ImportError as exc:
                report(name, f"not installed ({exc}): pip install 'lmmr1[{name}]'")
            except Exception as exc:
                report(name, f"could not start a run ({type(exc).__name__}: {exc})")

    def _each(self, method: str, *args: Any) -> None:
        for entry in list(self.active):
            name, tracker = entry
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:
                report(name, f"{method} failed ({type(exc).__name__}: {exc})")
                self.active.remove(entry)

    def log(self, step: int, values: dict[str, Any]) -> None:
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._each("log", step, numbers)

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._each("table", step, rows)

    def finish(self) -> None:
        self._each("finish")
        self.active = []
