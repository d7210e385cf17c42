"""Experiment trackers: wandb (offline), trackio and MLflow (local files) get the metrics, the redacted config
and the sample tables; a tracker that is missing or fails is reported once and training goes on."""

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from lmmr1_core import trackers
from lmmr1_core.metrics import RunLog

INSTALLED = [n for n in ("wandb", "trackio", "mlflow") if importlib.util.find_spec(n) is not None]
SECRET = "sk-test-do-not-log-0123"


@pytest.mark.skipif(not INSTALLED, reason="no tracker installed (extras wandb, trackio, mlflow)")
def test_each_tracker_gets_the_metrics_the_redacted_config_and_sample_tables(tiny_text, tmp_path):
    logging = {"wandb": {"project": "lmmr1-test"}, "trackio": {"project": "lmmr1-test"},
               "mlflow": {"tracking_uri": (tmp_path / "mlruns").as_uri(), "tags": {"api_key": SECRET}}}  # fmt: skip
    (tmp_path / "s.yaml").write_text(json.dumps({
        "name": "tracked",
        "model": {"backend": "hf", "path": str(tiny_text), "device": "cpu"},
        "logging": {k: v for k, v in logging.items() if k in INSTALLED},
        "stages": {"a": {"kind": "rl", "data": [{"dataset": "arithmetic", "n": 8}], "steps": 2, "batch_size": 2,
                         "rewards": [{"name": "math_accuracy", "workers": 1},
                                     {"name": "judge_accuracy", "weight": 0.0, "api_key": SECRET, "timeout_s": 0.5,
                                      "url": "http://127.0.0.1:9"}],
                         "generation": {"max_new_tokens": 4}, "algorithm": {"group_size": 2}}},
    }))  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "TRACKIO_DIR": str(tmp_path / "trackio"),
           "MLFLOW_ALLOW_FILE_STORE": "true", "WANDB_SILENT": "true"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "lmmr1_core.cli", "run", "s.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: logging." not in result.stderr, result.stderr[-3000:]
    stage = tmp_path / "runs/tracked/a"
    steps = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2
    if "wandb" in INSTALLED:
        run_dir = next((stage / "wandb").glob("offline-run-*"))
        log = next(run_dir.glob("*.wandb")).read_bytes()
        assert b"reward/mean" in log and b"math_accuracy" in log and b"arithmetic" in log  # metrics, config
        assert SECRET.encode() not in log and b"***" in log
        assert len(list((run_dir / "files/media/table").glob("samples_*.table.json"))) == 2  # one table a step
    if "trackio" in INSTALLED:
        db = sqlite3.connect(next((tmp_path / "trackio").glob("*.db")))
        logged = [json.loads(m) for (m,) in db.execute("select metrics from metrics where run_name = 'tracked/a'")]
        assert [r["reward/mean"] for r in logged if "reward/mean" in r] == [r["reward/mean"] for r in steps]
        assert sum("samples" in r for r in logged) == 2
        (config,) = db.execute("select config from configs where run_name = 'tracked/a'").fetchone()
        assert "arithmetic" in str(config) and SECRET not in str(config)
    if "mlflow" in INSTALLED:
        (run,) = [p for p in (tmp_path / "mlruns").glob("*/*") if (p / "metrics").is_dir()]
        history = (run / "metrics/reward.mean").read_text().split("\n")
        assert [float(line.split()[1]) for line in history if line] == [r["reward/mean"] for r in steps]
        config = json.loads((run / "artifacts/config.json").read_text())
        assert config["stages"]["a"]["rewards"][1]["api_key"] == "***"
        assert len(list((run / "artifacts/samples").glob("step_*.json"))) == 2
        assert not [p for p in run.rglob("*") if p.is_file() and SECRET in p.read_text(errors="ignore")]


class Breaks:
    """A tracker that starts, then fails on its first log."""

    def __init__(self, options, run, stage, stage_dir, config):
        self.calls = 0

    def log(self, step, metrics):
        raise RuntimeError("the tracking server went away")

    def table(self, step, rows):
        pass

    def finish(self):
        pass


def test_a_missing_or_failing_tracker_is_reported_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    from lmmr1_core.config import LoggingConfig

    monkeypatch.setattr(trackers, "_reported", set())
    monkeypatch.setitem(trackers.TRACKERS, "trackio", Breaks)
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError: not installed
    cfg = LoggingConfig(tensorboard=False, wandb={"project": "x"}, trackio={})
    for stage in ("s1", "s2"):  # two stages: each tracker is reported once in all
        log = RunLog(tmp_path / "run" / stage, cfg, "run", {"name": "run"})
        for step in (1, 2, 3):
            log.metrics(step, {"reward/mean": 0.5, "note": "text"})
            log.samples(step, [{"id": "a", "completion": "x", "rewards": {"r": 1.0}}])
        log.close()
        assert len((tmp_path / "run" / stage / "metrics.jsonl").read_text().splitlines()) == 3
        assert not (tmp_path / "run" / stage / "tensorboard").exists()  # logging.tensorboard: false
    err = capsys.readouterr().err
    assert err.count("warning: logging.wandb: not installed") == 1 and "pip install 'lmmr1[wandb]'" in err
    assert err.count("warning: logging.trackio: log failed (RuntimeError: the tracking server went away)") == 1
    assert "training goes on without it" in err


def test_logging_switches_and_unknown_keys():
    from lmmr1_core.config import LoggingConfig, RunConfig

    assert LoggingConfig(wandb=True, mlflow=False).wandb == {} and LoggingConfig(mlflow=False).mlflow is None
    with pytest.raises(Exception, match="unknown|Extra inputs"):
        RunConfig.model_validate({"name": "x", "model": {"path": "p"}, "stages": {"a": {"kind": "rl", "data": [
            {"dataset": "arithmetic"}]}}, "logging": {"wandbb": {}}})  # fmt: skip


def test_sample_tables_keep_nested_values_as_json():
    columns, data = trackers.table([{"id": "a", "rewards": {"r": 1.0}}, {"id": "b", "extra": [1, 2]}])
    assert columns == ["id", "rewards", "extra"]
    assert data == [["a", '{"r": 1.0}', None], ["b", None, "[1, 2]"]]
