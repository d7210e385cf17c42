"""The README's quickstart, as written: the rl stage's reward must visibly rise."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_quickstart_reward_rises(tmp_path):
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    result = subprocess.run(
        [sys.executable, "-m", "lmmr1_core.cli", "run", "stages/quickstart.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
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
