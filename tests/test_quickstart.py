"""The README's quickstart, as written: the rl stage's reward must visibly rise."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import run_stage_file

ROOT = Path(__file__).parent.parent


def test_quickstart_reward_rises(tmp_path):
    result = run_stage_file(tmp_path, "quickstart.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: runs/quickstart" in result.stdout
    rows = [json.loads(x) for x in (tmp_path / "runs/quickstart/fre/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 160
    q = len(rows) // 4
    first = sum(r["reward/mean"] for r in rows[:q]) / q
    last = sum(r["reward/mean"] for r in rows[-q:]) / q
    assert last - first >= 0.2, (first, last)
    assert (tmp_path / "runs/tiny-text-model/config.json").exists()
    assert (tmp_path / "runs/quickstart/fre/final/model.safetensors").exists()


def test_recipe_stage_files_validate_and_follow_lmmr1():
    from lmmr1_core.config import load_config

    # fewer generated Sokoban levels than the real recipe, to keep the test short
    small = {"fre_then_mgt_sokoban.yaml": [f"stages.{s}.data.{i}.n=20" for s in ("mgt_sokoban", "eval_fre")
                                           for i in (0, 1)]}  # fmt: skip
    for f in sorted((ROOT / "stages").glob("*.yaml")):
        sets = [arg for o in small.get(f.name, []) for arg in ("--set", o)]
        result = subprocess.run([sys.executable, "-m", "lmmr1_core.cli", "validate", str(f), *sets], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, (f, result.stderr)
    fre = load_config(ROOT / "stages/fre_then_mgt_geo.yaml").stages["fre"]
    assert fre.algorithm.name == "reinforce_pp_baseline" and fre.algorithm.group_size == 16
    assert (fre.algorithm.kl.estimator, fre.algorithm.kl.coef, fre.algorithm.kl.in_reward) == ("k1", 0.001, True)
    assert (fre.optim.lr, fre.optim.min_lr, fre.optim.warmup_ratio, fre.optim.betas) == (4e-7, 4e-8, 0.03, (0.9, 0.95))
    assert [(r.name, r.weight) for r in fre.rewards] == [("math_accuracy", 1.0), ("think_answer_format", 0.5)]
    geo = load_config(ROOT / "stages/fre_then_mgt_geo.yaml").stages["mgt_geo"]
    assert geo.init_from == "fre" and geo.algorithm.name == "ppo" and geo.optim.lr == 1e-6


def test_quickstart_geo_trains_on_images_and_evaluates_before_and_after(tmp_path):
    result = run_stage_file(tmp_path, "quickstart_geo.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs/quickstart_geo"
    mgt = [json.loads(x) for x in (run / "mgt_geo/metrics.jsonl").read_text().splitlines()]
    assert len(mgt) == 30 and "reward/geometry_answer" in mgt[0] and "value_loss" in mgt[0]
    assert (run / "mgt_geo/final/preprocessor_config.json").exists()
    for stage in ("eval_fre", "eval_mgt"):
        res = json.loads((run / stage / "final/results.json").read_text())
        assert res["datasets"]["geometry-heldout"]["n"] == 16
    assert "eval results:" in result.stderr and "eval_fre" in result.stderr and "eval_mgt" in result.stderr
