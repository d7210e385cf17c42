"""Pictures of a run: curves.png beside each stage's metrics.jsonl, `lmmr1 plot` and `--compare`."""

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmmr1_core.cli import main
from lmmr1_core.plots import PNG, default_metrics, draw_stage, draw_stage_quietly

pytest.importorskip("matplotlib")

STAGE = """
name: pics
model: {{backend: hf, path: {model}}}
output_dir: {out}
stages:
  warm:
    kind: sft
    data: [{{dataset: arithmetic, n: 16}}]
    steps: 2
    batch_size: 4
    optim: {{lr: 1.0e-3}}
  rl:
    kind: rl
    init_from: warm
    data: [{{dataset: arithmetic, n: 16}}]
    rewards: [{{name: math_accuracy}}]
    algorithm: {{name: grpo, group_size: 2}}
    generation: {{max_new_tokens: 4}}
    steps: 2
    batch_size: 2
    optim: {{lr: 1.0e-3}}
"""


def fake_stage(run: Path, stage: str, rewards: list[float]) -> Path:
    out = run / stage
    out.mkdir(parents=True)
    rows = [{"step": i + 1, "reward/mean": r, "reward/math_accuracy": r, "reward/math_accuracy/timeouts": 0,
             "loss": 1.0 - r} for i, r in enumerate(rewards)]  # fmt: skip
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "rew')
    return out


def is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stage_picture_shows_rewards_and_skips_counters(tmp_path):
    stage = fake_stage(tmp_path / "run", "rl", [0.1, 0.2, 0.4, 0.5])
    assert default_metrics([json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()[:2]]) == [
        "reward/mean", "reward/math_accuracy"]  # fmt: skip
    assert draw_stage(stage) == stage / PNG and is_png(stage / PNG)  # the half-written last line is skipped
    assert default_metrics([{"step": 1, "loss": 2.0, "lr": 0.1}]) == ["loss"]  # an sft stage: its loss
    (tmp_path / "run/eval").mkdir()
    assert draw_stage(tmp_path / "run/eval") is None  # an eval stage logs no steps


def test_plot_redraws_and_compares_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fake_stage(a, "rl", [0.1, 0.3, 0.5])
    fake_stage(b, "rl", [0.2, 0.2, 0.3])
    fake_stage(b, "only_b", [0.5, 0.6])
    result = CliRunner().invoke(main, ["plot", str(a), "--metric", "loss"])
    assert result.exit_code == 0, result.output
    assert is_png(a / "rl" / PNG) and f"wrote {a / 'rl' / PNG}" in result.output
    result = CliRunner().invoke(main, ["plot", str(a), "--compare", str(b), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert is_png(tmp_path / "cmp/rl.png") and is_png(tmp_path / "cmp/only_b.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["plot", str(empty)])
    assert result.exit_code == 2 and "no stage with logged steps" in result.output


def test_without_matplotlib_a_run_warns_in_one_line(tmp_path, monkeypatch, capsys):
    stage = fake_stage(tmp_path / "run", "rl", [0.1, 0.2])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    draw_stage_quietly(stage)
    err = capsys.readouterr().err
    assert not (stage / PNG).exists() and err.count("\n") == 1 and "matplotlib is not installed" in err


def test_a_run_draws_each_stage_and_a_rerun_redraws_missing_ones(tiny_text, tmp_path):
    f = tmp_path / "pics.yaml"
    f.write_text(STAGE.format(model=tiny_text, out=tmp_path / "runs"))
    result = CliRunner().invoke(main, ["run", str(f)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs/pics"
    assert is_png(run / "warm" / PNG) and is_png(run / "rl" / PNG)
    (run / "rl" / PNG).unlink()  # as in a run from before pictures, or killed before drawing
    before = (run / "warm" / PNG).stat().st_mtime_ns
    result = CliRunner().invoke(main, ["run", str(f)])
    assert result.exit_code == 0 and "stage rl: finished earlier" in result.output
    assert is_png(run / "rl" / PNG) and (run / "warm" / PNG).stat().st_mtime_ns == before  # fresh ones kept
