"""Learning you can see: MGT on pictures raises held-out accuracy, not only the format reward."""

import json

from conftest import TESTS, run_stage_file

from lmmr1_core.config import load_config, stage_order


def heldout_accuracy(run, cfg, stage: str) -> float:
    """The eval stage's first reward (the accuracy one, by the stage file's convention) over all its data."""
    first = cfg.stages[stage].rewards[0].name
    return json.loads((run / stage / "final/results.json").read_text())["overall"][first]


def test_quickstart_vl_heldout_accuracy_rises_through_mgt(tmp_path):
    cfg = load_config(TESTS.parent / "stages/quickstart_vl.yaml")
    evals = [s for s in stage_order(cfg) if cfg.stages[s].kind == "eval"]
    result = run_stage_file(tmp_path, "quickstart_vl.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs/quickstart_vl"
    before, after = heldout_accuracy(run, cfg, evals[0]), heldout_accuracy(run, cfg, evals[-1])
    assert after - before >= 0.15, (before, after)
    assert 0 < before < 1  # the warm-up leaves the model right some of the time: RL has a signal
    mgt = [json.loads(x) for x in (run / "mgt/metrics.jsonl").read_text().splitlines()]
    assert "reward/math_accuracy" in mgt[0] and len(mgt) == cfg.stages["mgt"].steps
    assert (run / "mgt/curves.png").exists() and (run / "warmup/curves.png").exists()
