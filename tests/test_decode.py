"""The hf backend's own generation loop (plugins/models/decode.py) and the per-phase thread tuner."""

import time

import numpy as np
import pytest
import torch
from lmmr1_plugins.models.decode import pick_tokens, sample
from PIL import Image

from lmmr1_core import load_model
from lmmr1_core.threads import PhaseThreads


@pytest.fixture(scope="module")
def backends(tiny_text, tiny_vl):
    return {"text": load_model("hf", path=str(tiny_text), device="cpu"),
            "vl": load_model("hf", path=str(tiny_vl), device="cpu")}  # fmt: skip


def prompts_of(b, kind: str) -> list:
    """Prompts of different lengths (left padding); for the VL model half carry an image of their own size."""
    texts = ["What is 1 + 2?", "Hi", "A much longer prompt than the others here", "Why?"]
    out = [b.encode([{"role": "user", "content": t}]) for t in texts]
    if kind == "vl":
        for i, (w, h) in enumerate([(56, 84), (84, 56)]):
            im = Image.fromarray((np.random.RandomState(i).rand(h, w, 3) * 255).astype("uint8"))
            msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": texts[i]}]}]
            out.append(b.encode(msg, [im]))
    return out


@pytest.mark.parametrize("kind", ["text", "vl"])
def test_each_tokens_logprob_is_what_training_computes_even_as_rows_leave_the_batch(backends, kind):
    """Sampled (temperature, top-p) with many end tokens, so rows end at different steps and leave the batch
    (their KV-cache rows with them): every sampled token's log-prob still equals the training forward's over
    the whole sequence, for text rows and image rows (multimodal positions) alike."""
    b = backends[kind]
    prompts = prompts_of(b, kind)
    batch = b._batch(prompts)
    ends = set(range(40, 140))  # about a fifth of the tiny vocabulary: rows end early, at different steps
    torch.manual_seed(0)
    comps, logps = sample(b.model, batch, 16, temperature=0.7, top_p=0.9, eos_ids=ends, suppress=b.suppress)
    lengths = [len(c) for c in comps]
    assert len(set(lengths)) > 2 and min(lengths) < 16, lengths  # rows really ended at different steps
    assert all(t in ends for c in comps if len(c) < 16 for t in c[-1:])  # a short row ends at an end token
    assert all(t not in ends for c in comps for t in c[:-1])
    with torch.no_grad():
        ref, mask, _ = b.logprobs(prompts, comps, temperature=0.7)
    for i, (c, lp) in enumerate(zip(comps, logps)):
        assert len(lp) == len(c)
        torch.testing.assert_close(torch.tensor(lp), ref[i, : len(c)], atol=2e-5, rtol=0)


@pytest.mark.parametrize("kind", ["text", "vl"])
def test_greedy_decoding_equals_transformers_generate(backends, kind):
    b = backends[kind]
    prompts = prompts_of(b, kind)
    batch = b._batch(prompts)
    batch.pop("position_ids", None)  # generate derives them from the mask
    with torch.no_grad():
        out = b.model.generate(**batch, do_sample=False, max_new_tokens=10, pad_token_id=b.pad_id,
                               eos_token_id=sorted(b.eos_ids), suppress_tokens=b.suppress or None)  # fmt: skip
    expected = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in b.eos_ids), len(row))
        expected.append(row[:cut])
    assert b.generate(prompts, 10, greedy=True) == expected


def test_top_p_samples_only_the_nucleus_and_suppressed_tokens_never():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    for top_p, allowed in [(0.7, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})]:
        torch.manual_seed(0)
        tokens, logp = pick_tokens(logits, 1.0, top_p, greedy=False)
        assert set(tokens.tolist()) == allowed
        # the log-prob is under the tempered distribution before the cut (what training computes)
        torch.testing.assert_close(logp, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1))
    tokens, logp = pick_tokens(logits, 2.0, 1.0, greedy=False, suppress=[0])
    assert 0 not in set(tokens.tolist())
    tempered = torch.log_softmax(torch.log(torch.tensor([0.3, 0.15, 0.05])) / 2.0, -1)
    torch.testing.assert_close(logp, tempered[tokens - 1])
    tokens, logp = pick_tokens(logits[:2], 0.1, 0.5, greedy=True, suppress=[0])
    assert tokens.tolist() == [1, 1]  # argmax of what may be sampled; temperature 1 when greedy
    torch.testing.assert_close(logp, torch.log(torch.tensor([0.6, 0.6])))


def test_phase_threads_keep_whichever_count_runs_faster():
    """The first calls alternate between 1 thread and all (after a warm-up call); the faster is kept."""
    before = torch.get_num_threads()
    try:
        for slow in (1, 2):
            tuner = PhaseThreads(2)
            used = []

            def work(slow=slow, used=used):
                used.append(torch.get_num_threads())
                time.sleep(0.02 if torch.get_num_threads() == slow else 0.002)

            for _ in range(10):
                tuner.run(work)
            assert used[0] == 2 and sorted(used[1:7]) == [1, 1, 1, 2, 2, 2]  # warm-up, then 3 timings each
            assert tuner.chosen == 3 - slow and used[7:] == [3 - slow] * 3
        fixed = PhaseThreads(2, tune=False)
        for _ in range(8):
            fixed.run(lambda: None)
        assert fixed.chosen == 2 and torch.get_num_threads() == 2
        torch.set_num_threads(1)
        PhaseThreads(None).run(lambda: None)  # a GPU backend: torch's count is left alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_phase_threads_tune_again_when_the_kept_count_turns_slow():
    """Another process arrives mid-run: the kept count turns several times slower per unit of work, and after
    ``strikes`` such calls in a row both counts are timed again; a bigger call is not a slower one."""
    before = torch.get_num_threads()
    try:
        tuner = PhaseThreads(2, warmup=0)
        slow = {"threads": 1, "by": 1.0}

        def work():
            time.sleep(0.002 * (10 if torch.get_num_threads() == slow["threads"] else 1) * slow["by"])

        for _ in range(6):
            tuner.run(work)
        assert tuner.chosen == 2
        for _ in range(3):
            tuner.run(lambda: time.sleep(0.08), work=20)  # 20x the work in 40x the time: not slower per unit
        assert tuner.chosen == 2 and tuner.retunes == 0
        slow.update(threads=2, by=0.25)  # now 2 threads are the slow ones: 2.5x, not yet a strike
        tuner.run(work)
        assert tuner.slow_calls == 0
        slow.update(by=1.0)  # 10x slower than when chosen
        for _ in range(3):
            tuner.run(work)
        assert tuner.retunes == 1 and tuner.chosen is None
        for _ in range(6):
            tuner.run(work)
        assert tuner.chosen == 1
    finally:
        torch.set_num_threads(before)


def test_generation_gives_the_callers_thread_count_back(backends):
    """Generation tunes its own phases; what the caller runs next (a training forward, a megatron step) runs on
    the count it had set."""
    b = backends["text"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        b._phases.clear()
        for _ in range(8):  # through the tuning: some steps ran on 1 thread
            b.generate(prompts_of(b, "text"), 6)
        assert {b._phases[p].chosen for p in ("prefill", "decode")} <= {1, 2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _sample_both_ways(b, kind, monkeypatch):
    """The same seeded sampling with the lean one-token step and with the model's general forward."""
    from lmmr1_plugins.models import decode

    built = []
    build = decode.LeanStep.build
    monkeypatch.setattr(decode.LeanStep, "build", staticmethod(lambda *a: built.append(build(*a)) or built[-1]))
    batch = b._batch(prompts_of(b, kind))
    runs = []
    for lean in (True, False):
        torch.manual_seed(1)
        runs.append(sample(b.model, batch, 12, temperature=0.8, eos_ids=set(range(40, 90)), lean_steps=lean))
    return built, runs


@pytest.mark.parametrize("kind", ["text", "vl", "lora"])
def test_the_lean_step_is_taken_and_samples_what_the_general_forward_samples(backends, tiny_text, kind, monkeypatch):
    """Qwen2, Qwen2.5-VL (image rows: multimodal positions) and a LoRA-adapted model (the adapter's layers are
    the modules the step calls): same tokens, same log-probs, rows leaving the batch on the way."""
    if kind == "lora":
        b = load_model("hf", path=str(tiny_text), device="cpu", lora={"r": 4, "alpha": 8})
        with torch.no_grad():  # a fresh adapter is the identity: give it weights, so skipping it would show
            for name, p in b.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        b.model.eval()
    else:
        b = backends[kind]
    built, ((lean_tokens, lean_logps), (tokens, logps)) = _sample_both_ways(b, "vl" if kind == "vl" else "text",
                                                                             monkeypatch)  # fmt: skip
    assert built and built[0] is not None  # the lean step ran, not a silent fallback
    assert lean_tokens == tokens and len({len(t) for t in tokens}) > 1
    for a, c in zip(lean_logps, logps):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(c), atol=1e-5, rtol=0)


def test_a_decoder_the_lean_step_does_not_know_takes_the_general_forward(backends, monkeypatch):
    from lmmr1_plugins.models import decode

    monkeypatch.setattr(decode, "LEAN_MODEL_TYPES", set())
    built, ((lean_tokens, _), (tokens, _)) = _sample_both_ways(backends["text"], "text", monkeypatch)
    assert built == [None] and lean_tokens == tokens


def test_draw_samples_in_proportion_never_a_zero_and_refuses_nan():
    """The inverse-CDF sampler: frequencies match the (unnormalised) probabilities, entries of zero mass,
    the first and the last among them, are never drawn, and NaN probabilities are an error, not a token."""
    from lmmr1_plugins.models.decode import draw

    probs = torch.tensor([0.0, 0.5, 0.0, 0.25, 0.0, 1.25, 0.0])  # sums to 2: need not be normalised
    torch.manual_seed(0)
    counts = torch.bincount(draw(probs.expand(200_000, -1).contiguous()), minlength=7).double()
    assert counts[probs == 0].sum() == 0
    expected = probs.double() / probs.sum() * 200_000
    seen = probs > 0
    chi2 = float(((counts[seen] - expected[seen]) ** 2 / expected[seen]).sum())
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom: p = 0.001
    with pytest.raises(ValueError, match="NaN"):
        draw(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(ValueError, match="all zero"):
        draw(torch.zeros(1, 3))


def test_a_prompt_sampled_many_times_is_read_once_and_each_sample_still_gets_its_logprobs(backends):
    """A GRPO batch repeats each prompt group_size times: the prompt forward runs over the distinct prompts
    only, every row still gets its own sample, and each token's log-prob equals the training forward's."""
    b = backends["text"]
    prompts = [p for p in prompts_of(b, "text")[:2] for _ in range(4)]  # two prompts, four samples each
    batch = b._batch(prompts)
    seen = []
    hook = b.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        torch.manual_seed(0)
        comps, logps = sample(b.model, batch, 8, temperature=1.0, eos_ids=set(), suppress=b.suppress)
    finally:
        hook.remove()
    assert seen[0][0] == 2  # the prompt forward: one row per distinct prompt
    assert len({tuple(c) for c in comps[:4]}) > 1  # the samples of one prompt differ
    with torch.no_grad():
        ref, _, _ = b.logprobs(prompts, comps, temperature=1.0)
    torch.testing.assert_close(torch.tensor(logps), ref, atol=2e-5, rtol=0)
