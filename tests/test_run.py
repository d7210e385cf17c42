import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helper_plugins import TestRewardsPlugin

from lmmr1_core import hookimpl
from lmmr1_core.cli import main

STAGES = """
name: small
model: {{backend: hf, path: {model}}}
output_dir: {out}
stages:
  warm:
    kind: sft
    data: [{{dataset: arithmetic, n: 16}}]
    steps: 2
    batch_size: 4
    optim: {{lr: 1.0e-3}}
    target_template: "<think>{{reasoning}}</think> <answer>{{answer}}</answer>"
  rl:
    kind: rl
    init_from: warm
    data: [{data}]
    rewards: [{rewards}]
    algorithm: {{name: grpo, group_size: 2, kl: {{coef: 0.01}}}}
    generation: {{max_new_tokens: 6}}
    steps: {steps}
    batch_size: 2
    micro_batch_size: 3
    optim: {{lr: 1.0e-3}}
    save_every: {save_every}
"""


def write(
    tmp_path,
    model,
    steps=3,
    save_every=2,
    rewards="{name: math_accuracy}, {name: think_answer_format}",
    data="{dataset: arithmetic, n: 16, seed: 3}",
):
    p = tmp_path / "small.yaml"
    p.write_text(
        STAGES.format(
            model=model, out=tmp_path / "runs", steps=steps, save_every=save_every, rewards=rewards, data=data
        )
    )
    return p


def lmmr1(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_run_writes_outputs_and_rerun_skips_finished_stages(tiny_text, tmp_path):
    f = write(tmp_path, tiny_text)
    result = lmmr1("run", f)
    assert result.exit_code == 0, result.output
    rl = tmp_path / "runs/small/rl"
    rows = read_jsonl(rl / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "reward/mean",
        "reward/math_accuracy",
        "reward/think_answer_format",
        "kl",
        "loss",
        "response_length",
        "tokens_per_s",
        "step_s",
        "entropy",
    ):
        assert key in rows[0], key
    assert rows[0]["kl"] == 0.0  # the reference is the stage's starting weights
    assert all(r["kl"] >= 0 for r in rows)
    samples = read_jsonl(rl / "samples.jsonl")
    assert {"step", "id", "prompt", "completion", "reward", "rewards", "answer"} <= set(samples[0])
    assert samples[0]["prompt"].startswith("What is ")
    for row in rows:  # the logged figures agree with the samples they summarise
        step = [x for x in samples if x["step"] == row["step"]]
        assert len(step) == 4  # 2 prompts x group of 2, all kept
        for x in step:  # the total is the weighted sum (weights 1) of the rewards that applied
            assert x["reward"] == pytest.approx(sum(v for v in x["rewards"].values() if v is not None))
        assert row["reward/mean"] == pytest.approx(sum(x["reward"] for x in step) / 4)
        assert row["reward/math_accuracy"] == pytest.approx(sum(x["rewards"]["math_accuracy"] for x in step) / 4)
        assert 1 <= row["response_length"] <= 6 and row["entropy"] > 0
        assert row["step_s"] >= row["generation_s"] > 0 and row["tokens_per_s"] > 0
    assert list((rl / "tensorboard").glob("events.out.tfevents.*"))
    final = rl / "final"
    assert (final / "model.safetensors").exists()
    assert (final / "config.json").read_bytes() == (tiny_text / "config.json").read_bytes()
    assert not list((rl / "checkpoints").iterdir())  # intermediate checkpoints pruned at the end
    assert (tmp_path / "runs/small/warm/final").is_dir()

    again = lmmr1("run", f)
    assert again.exit_code == 0
    assert "stage warm: finished earlier" in again.output and "stage rl: finished earlier" in again.output
    assert len(read_jsonl(rl / "metrics.jsonl")) == 3

    fresh = lmmr1("run", f, "--fresh", "--set", "stages.rl.steps=1")
    assert fresh.exit_code == 0, fresh.output
    assert [r["step"] for r in read_jsonl(rl / "metrics.jsonl")] == [1]


def test_hanging_and_raising_rewards_do_not_stop_the_run(tiny_text, tmp_path, plugin):
    plugin(TestRewardsPlugin(), name="test_rewards")
    data = tmp_path / "sevens.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} + {7 - a}?", "answer": "7"}) + "\n" for a in range(4)))
    f = write(
        tmp_path,
        tiny_text,
        steps=2,
        data=f"{{dataset: jsonl, path: {data}}}",
        rewards="{name: hangs_on_seven, timeout_s: 0.2}, {name: raises_on_seven}, {name: always_one}",
    )
    result = lmmr1("run", f)
    assert result.exit_code == 0, result.output
    rows = read_jsonl(tmp_path / "runs/small/rl/metrics.jsonl")
    assert rows[-1]["reward/hangs_on_seven/timeouts"] == 8  # 2 steps x 2 prompts x group 2
    assert rows[-1]["reward/raises_on_seven/errors"] == 8
    assert rows[-1]["reward/hangs_on_seven"] == 0.0 and rows[-1]["reward/always_one"] == 1.0
    assert "reward 'raises_on_seven' raised on sample" in result.output


def test_a_failing_stage_keeps_earlier_outputs(tiny_text, tmp_path, plugin):
    plugin(TestRewardsPlugin(), name="test_rewards")
    f = write(tmp_path, tiny_text, rewards="{name: wrong_length}")
    result = lmmr1("run", f)
    assert result.exit_code == 2
    assert re.search(r"error: reward 'wrong_length' returned \d scores for \d completions", result.output)
    assert "Traceback" not in result.output
    assert (tmp_path / "runs/small/warm/final/model.safetensors").exists()


def test_on_step_end_can_stop_a_stage_early(tiny_text, tmp_path, plugin):
    seen = []

    class StopAtTwo:
        @hookimpl
        def on_stage_start(self, stage, output_dir):
            seen.append((stage, "start", Path(output_dir).name))

        @hookimpl
        def on_step_end(self, stage, step, metrics):
            seen.append((stage, step))
            assert "loss" in metrics
            return stage == "rl" and step == 2

        @hookimpl
        def on_stage_end(self, stage, output_dir):
            seen.append((stage, "end", (Path(output_dir) / "final").is_dir()))

    plugin(StopAtTwo(), name="stopper")
    result = lmmr1("run", write(tmp_path, tiny_text, steps=10))
    assert result.exit_code == 0, result.output
    assert ("rl", 2) in seen and ("rl", 3) not in seen and ("warm", 1) in seen
    assert seen[0] == ("warm", "start", "warm") and seen[-1] == ("rl", "end", True)
    assert (tmp_path / "runs/small/rl/final").is_dir()


def test_killed_run_resumes_from_last_checkpoint(tiny_text, tmp_path):
    f = write(tmp_path, tiny_text, steps=14, save_every=3)
    rl = tmp_path / "runs/small/rl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lmmr1_core.cli", "run", str(f)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (rl / "checkpoints/step-000006").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # its reward worker processes notice and exit too (they would otherwise linger forever)
    deadline = time.time() + 10
    while _processes_mentioning(str(f)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _processes_mentioning(str(f))
    done_before = [r["step"] for r in read_jsonl(rl / "metrics.jsonl")]
    assert 6 <= done_before[-1] < 14

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "stage warm: finished earlier" in result.stderr
    resumed_at = int(result.stderr.split("stage rl: resuming after step ")[1].split()[0])
    assert resumed_at >= 6
    steps = [r["step"] for r in read_jsonl(rl / "metrics.jsonl")]
    assert steps == list(range(1, 15))  # no step lost, none duplicated
    assert (rl / "final/model.safetensors").exists()


def test_vl_rl_run_skips_corrupt_images_and_long_prompts(tiny_vl, tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (64, 48), color).save(tmp_path / f"img/{i}.png")
    (tmp_path / "img/bad.png").write_bytes(b"\x89PNG broken")
    records = [
        {"id": "red", "prompt": "What colour?", "answer": "red", "images": ["img/0.png"]},
        {"id": "broken", "prompt": "What colour?", "answer": "red", "images": ["img/bad.png"]},
        {"id": "blue", "prompt": "What colour?", "answer": "blue", "images": ["file://img/1.png"]},
        {"id": "long", "prompt": "word " * 300, "answer": "x"},
    ]
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    f = write(
        tmp_path,
        tiny_vl,
        steps=3,
        data=f"{{dataset: jsonl, path: {data}}}",
        rewards="{name: think_answer_format}",
    )
    f.write_text(
        f.read_text()
        .replace("generation: {max_new_tokens: 6}", "generation: {max_new_tokens: 6, max_prompt_length: 120}")
        .replace("data: [{dataset: arithmetic, n: 16}]", f"data: [{{dataset: jsonl, path: {data}}}]")
        .replace('target_template: "<think>{reasoning}</think> <answer>{answer}</answer>"', "")
    )
    result = lmmr1("run", f)
    assert result.exit_code == 0, result.output
    assert "skipping sample broken: cannot read image" in result.output
    rows = read_jsonl(tmp_path / "runs/small/rl/metrics.jsonl")
    assert rows[-1]["data/bad_samples"] >= 1 and rows[-1]["data/dropped_long_prompts"] >= 1
    ids = {s["id"] for s in read_jsonl(tmp_path / "runs/small/rl/samples.jsonl")}
    assert ids <= {"red", "blue"} and ids
    final = tmp_path / "runs/small/rl/final"
    assert (final / "preprocessor_config.json").read_bytes() == (tiny_vl / "preprocessor_config.json").read_bytes()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and text in (p / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(p.name))
        except OSError:
            continue
    return found


class _InterruptAt:
    """Ctrl-C arriving while step ``step`` ends (after step ``step - 1``'s checkpoint was written)."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def on_step_end(self, stage, step, metrics):
        if stage == "rl" and step == self.step:
            raise KeyboardInterrupt


TIMING = {"tokens_per_s", "step_s", "generation_s", "scoring_s", "train_s", "rollout/sync_s"}


def test_a_resumed_stage_equals_an_uninterrupted_one_exactly(tiny_text, tmp_path):
    """Optimizer, scheduler, RNG and data position all come back: every metric but the timings and the final
    weights are identical to a run that was never interrupted (CPU, so bit for bit)."""
    whole = tmp_path / "whole"
    whole.mkdir()
    varied = "{name: length_penalty, max_tokens: 6, buffer: 5}"  # rewards that differ within a group
    assert lmmr1("run", write(whole, tiny_text, steps=5, save_every=2, rewards=varied)).exit_code == 0
    cut = tmp_path / "cut"
    cut.mkdir()
    f = write(cut, tiny_text, steps=5, save_every=2, rewards=varied)
    from lmmr1_core.plugins import get_plugin_manager

    get_plugin_manager().register(_InterruptAt(3), name="interrupt")
    try:
        first = lmmr1("run", f)
    finally:
        get_plugin_manager().unregister(name="interrupt")
    assert first.exit_code == 130 and "run the same command again to resume" in first.output
    again = lmmr1("run", f)
    assert again.exit_code == 0, again.output
    assert "stage rl: resuming after step 2" in again.output
    a, b = (read_jsonl(d / "runs/small/rl/metrics.jsonl") for d in (whole, cut))
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in a], [
        {k: v for k, v in r.items() if k not in TIMING} for r in b]  # fmt: skip
    assert strip[0] == strip[1]
    assert len({r["loss"] for r in a}) > 1  # the steps differ from each other: the comparison has teeth
    weights = [(d / "runs/small/rl/final/model.safetensors").read_bytes() for d in (whole, cut)]
    assert weights[0] == weights[1]
