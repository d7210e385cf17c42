"""A run never loses or corrupts its data: one writer, nothing touched before a rerun is valid, verified
checkpoints with a fallback, a checkpoint on preemption, and one clear line for each failure."""

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_run import TIMING, _InterruptAt, read_jsonl, write

from lmmr1_core.cli import main
from lmmr1_core.plugins import get_plugin_manager


def lmmr1(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def interrupted_run(tmp_path, model, at=3, **kw):
    """A run stopped (Ctrl-C in a hook) while step ``at`` ends: a checkpoint of step ``at - 1`` remains."""
    f = write(tmp_path, model, **kw)
    pm = get_plugin_manager()
    pm.register(_InterruptAt(at), name="interrupt")
    try:
        assert lmmr1("run", f).exit_code == 130
    finally:
        pm.unregister(name="interrupt")
    return f


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}  # fmt: skip


def cmd(f):
    return [sys.executable, "-m", "lmmr1_core.cli", "run", str(f)]


def test_a_second_run_on_the_same_directory_is_refused_and_the_first_completes(tiny_text, tmp_path):
    f = write(tmp_path, tiny_text, steps=8, save_every=4)
    log = open(tmp_path / "first.log", "w")  # a file, not a pipe: a full pipe would stall the run
    first = subprocess.Popen(cmd(f), stdout=subprocess.DEVNULL, stderr=log)
    lock = tmp_path / "runs/.small.lock"
    deadline = time.time() + 600  # generous: a loaded machine starts slowly
    while not (tmp_path / "runs/small/rl/metrics.jsonl").exists() and time.time() < deadline:
        assert first.poll() is None
        time.sleep(0.05)
    assert lock.exists()
    second = lmmr1("run", f)
    assert second.exit_code == 2
    assert f"is in use by another lmmr1 run (pid {first.pid} on " in second.output
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    log.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "runs/small/rl/metrics.jsonl")] == list(range(1, 9))
    assert not lock.exists()


def test_a_stale_lock_is_taken_over_with_a_notice(tiny_text, tmp_path):
    import json
    import socket

    f = write(tmp_path, tiny_text, steps=1)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs/.small.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    result = lmmr1("run", f)
    assert result.exit_code == 0, result.output
    assert "taking over the lock of a run that is gone" in result.output


def test_a_data_error_on_rerun_leaves_every_file_of_the_run_unchanged(tiny_text, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(f'{{"prompt": "{i}+1?", "answer": "{i + 1}"}}\n' for i in range(8)))
    f = interrupted_run(tmp_path, tiny_text, steps=4, save_every=2, data=f"{{dataset: jsonl, path: {data}}}")
    before = snapshot(tmp_path / "runs")
    data.write_text('{"prompt": "no answer here"}\n')
    result = lmmr1("run", f)
    assert result.exit_code == 2 and "missing field 'answer'" in result.output
    assert snapshot(tmp_path / "runs") == before


def test_a_changed_stage_file_is_refused_with_the_keys_unless_a_resume_can_honour_it(tiny_text, tmp_path):
    f = interrupted_run(tmp_path, tiny_text, steps=4, save_every=2)
    before = snapshot(tmp_path / "runs")
    result = lmmr1("run", f, "--set", "stages.rl.optim.lr=0.5")
    assert result.exit_code == 2
    assert "stages.rl.optim.lr: 0.001 -> 0.5" in result.output and "--fresh" in result.output
    assert snapshot(tmp_path / "runs") == before
    more = lmmr1("run", f, "--set", "stages.rl.steps=5")  # more steps: the resume goes on to them
    assert more.exit_code == 0, more.output
    assert [r["step"] for r in read_jsonl(tmp_path / "runs/small/rl/metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_text, tmp_path):
    f = interrupted_run(tmp_path, tiny_text, at=4, steps=5, save_every=1)
    ckpts = tmp_path / "runs/small/rl/checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000003", "step-000004"]  # the last two kept
    weights = ckpts / "step-000004/model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-64:] = bytes(64)  # plausible values in place: the file still loads
    weights.write_bytes(bytes(raw))
    result = lmmr1("run", f)
    assert result.exit_code == 0, result.output
    assert "step-000004 is damaged (model.safetensors does not match its checksum" in result.output
    assert "resuming after step 3" in result.output
    assert [r["step"] for r in read_jsonl(tmp_path / "runs/small/rl/metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_a_missing_piece_is_an_error_never_a_silent_restart(tiny_text, tmp_path):
    f = interrupted_run(tmp_path, tiny_text, steps=4, save_every=2)
    (tmp_path / "runs/small/rl/checkpoints/step-000002/trainer_state.pt").unlink()
    metrics = (tmp_path / "runs/small/rl/metrics.jsonl").read_bytes()
    result = lmmr1("run", f)
    assert result.exit_code == 2
    assert "no intact checkpoint to resume from" in result.output and "trainer_state.pt is missing" in result.output
    assert (tmp_path / "runs/small/rl/metrics.jsonl").read_bytes() == metrics


def test_stale_temp_directories_are_removed_when_a_stage_starts(tiny_text, tmp_path):
    f = interrupted_run(tmp_path, tiny_text, steps=3, save_every=1)
    leftovers = [tmp_path / "runs/small/rl/checkpoints/.step-000009.tmp-x", tmp_path / "runs/small/rl/.final.tmp-y"]
    for d in leftovers:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    assert lmmr1("run", f).exit_code == 0
    assert not any(d.exists() for d in leftovers)


def test_sigterm_saves_a_checkpoint_and_the_rerun_continues_exactly(tiny_text, tmp_path):
    varied = "{name: length_penalty, max_tokens: 6, buffer: 5}"
    whole = tmp_path / "whole"
    whole.mkdir()
    assert lmmr1("run", write(whole, tiny_text, steps=6, save_every=100, rewards=varied)).exit_code == 0
    cut = tmp_path / "cut"
    cut.mkdir()
    f = write(cut, tiny_text, steps=6, save_every=100, rewards=varied)
    proc = subprocess.Popen(cmd(f), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = cut / "runs/small/rl/metrics.jsonl"
    deadline = time.time() + 600  # generous: a loaded machine starts slowly
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and time.time() < deadline:
        assert proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = int(err.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert 2 <= stopped < 6 and "a checkpoint was saved there" in err
    assert (cut / f"runs/small/rl/checkpoints/step-{stopped:06d}").is_dir()
    again = subprocess.run(cmd(f), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming after step {stopped}" in again.stderr
    a, b = (read_jsonl(d / "runs/small/rl/metrics.jsonl") for d in (whole, cut))
    strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in rows] for rows in (a, b)]
    assert strip[0] == strip[1]
    assert (whole / "runs/small/rl/final/model.safetensors").read_bytes() == (
        cut / "runs/small/rl/final/model.safetensors").read_bytes()  # fmt: skip


def test_files_keep_the_modes_the_umask_gives_after_a_resume(tiny_text, tmp_path):
    old = os.umask(0o022)
    try:
        f = interrupted_run(tmp_path, tiny_text, steps=4, save_every=2)
        assert lmmr1("run", f).exit_code == 0
    finally:
        os.umask(old)
    run = tmp_path / "runs/small"
    for p in (run / "config.yaml", run / "rl/metrics.jsonl", run / "rl/samples.jsonl"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert stat.S_IMODE((run / "rl/final").stat().st_mode) == 0o755


def test_one_line_for_a_broken_model_config(tiny_text, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_text, model)
    (model / "config.json").write_text('{"model_type": "qwen2", ')
    result = lmmr1("run", write(tmp_path, model))
    assert result.exit_code == 2
    assert f"model.path: {model / 'config.json'} is not valid JSON" in result.output
    assert "Traceback" not in result.output


def test_a_hub_id_not_in_the_cache_fails_at_once_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    t0 = time.monotonic()
    result = lmmr1("run", write(tmp_path, "nobody/no-such-model"))
    assert result.exit_code == 2 and time.monotonic() - t0 < 20
    assert "model.path: nobody/no-such-model is neither a local directory nor in the local Hugging Face cache" in (
        result.output)  # fmt: skip


def test_group_size_one_with_a_group_relative_algorithm_is_a_config_error(tiny_text, tmp_path):
    f = write(tmp_path, tiny_text)
    result = lmmr1("validate", f, "--set", "stages.rl.algorithm.group_size=1")
    assert result.exit_code == 2
    assert "stages.rl.algorithm.group_size: algorithm 'grpo' compares the samples of a prompt's group" in result.output
    assert lmmr1("validate", f, "--set", "stages.rl.algorithm.group_size=1",
                 "--set", "stages.rl.algorithm.name=reinforce_pp").exit_code == 0  # fmt: skip


def test_a_reward_option_named_like_a_data_column_is_an_error(tiny_text, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"prompt": "1+1?", "answer": "2", "max_tokens": 3}\n')
    f = write(tmp_path, tiny_text, data=f"{{dataset: jsonl, path: {data}}}",
              rewards="{name: length_penalty, max_tokens: 6}")  # fmt: skip
    result = lmmr1("run", f)
    assert result.exit_code == 2
    assert "stages.rl.rewards.0.max_tokens: the data has a column 'max_tokens' too" in result.output
    assert not (tmp_path / "runs/small").exists()


def test_an_oversized_prompt_is_dropped_before_it_is_tokenised():
    from lmmr1_core.config import StageConfig
    from lmmr1_core.trainer import StageContext, encode_sample
    from lmmr1_core.types import Sample

    class NoTokenizing:
        def encode(self, *a, **k):
            raise AssertionError("tokenised a 5 MB prompt")

    cfg = StageConfig(kind="rl", data=[{"dataset": "x"}], steps=1)
    ctx = StageContext("t", cfg, None, None, NoTokenizing(), [], "", None)
    huge = Sample(messages=[{"role": "user", "content": "x" * 5_000_000}], answer="1", id="big")
    assert encode_sample(ctx, huge, 2048) is None
    assert ctx.counters["data/dropped_long_prompts"] == 1


def test_a_full_disk_names_the_path_and_the_free_space(tmp_path, monkeypatch):
    import shutil

    from lmmr1_core import checkpoint
    from lmmr1_core.errors import LmmError

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write_text", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(LmmError, match=r"no space left writing .*config.yaml: 0.0 MiB free there"):
        checkpoint.write_or_explain(tmp_path / "config.yaml", "x")
    with pytest.raises(LmmError, match=r"no space left writing .*step-000001"):
        with checkpoint.atomic_dir(tmp_path / "step-000001", manifest=True):
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 816896 vs 816788")
    assert not list(tmp_path.iterdir())  # no temp dir left behind


def test_reward_failure_counts_carry_on_across_a_resume(tiny_text, tmp_path, plugin):
    import json

    from helper_plugins import TestRewardsPlugin

    plugin(TestRewardsPlugin(), name="test_rewards")
    data = tmp_path / "sevens.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} + {7 - a}?", "answer": "7"}) + "\n" for a in range(4)))
    f = interrupted_run(tmp_path, tiny_text, steps=4, save_every=2, data=f"{{dataset: jsonl, path: {data}}}",
                        rewards="{name: raises_on_seven}, {name: always_one}")  # fmt: skip
    assert lmmr1("run", f).exit_code == 0
    rows = read_jsonl(tmp_path / "runs/small/rl/metrics.jsonl")
    # every sample raises: 4 per step (2 prompts x group 2), counted on from the checkpoint, not from 0
    assert [r["reward/raises_on_seven/errors"] for r in rows] == [4, 8, 12, 16]


def test_a_hub_model_is_saved_with_its_cached_files_verbatim(tiny_text, tmp_path):
    """A model named by hub id (read from the local cache) keeps its tokenizer and config files byte for byte."""
    import shutil

    snap = tmp_path / "cache/models--someone--tiny/snapshots/abc123"
    shutil.copytree(tiny_text, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs/main").write_text("abc123")
    code = ("from lmmr1_core import load_model; b = load_model('hf', path='someone/tiny', device='cpu'); "
            f"b.save({str(tmp_path / 'out')!r})")  # fmt: skip
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("tokenizer_config.json", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tiny_text / name).read_bytes(), name
