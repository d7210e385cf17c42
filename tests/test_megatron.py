"""The megatron backend on CPU (gloo): logits against HF, conversion round trip, TP/PP/DP against one
process, the quickstart's RL loss against the hf backend, and the PPO critic.

Run as a script (``torchrun --nproc-per-node N tests/test_megatron.py TP PP OUT``, ``N / (TP x PP)``
data-parallel replicas) this file is also the worker of the parallel test.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")

import torch  # noqa: E402
from conftest import TESTS, run_stage_file  # noqa: E402

ABS_TOL = 1e-4


def _vl_batch(backend):
    """Two prompts with images of different sizes and one text-only prompt: left padding, 3-D positions."""
    from PIL import Image

    def msgs(text):
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    prompts = [
        backend.encode(msgs("what is the red box"), [Image.new("RGB", (56, 84), (200, 30, 30))]),
        backend.encode(msgs("how many"), [Image.new("RGB", (112, 56), (20, 30, 230))]),
        backend.encode([{"role": "user", "content": "what is 2 plus 3"}]),
    ]
    return prompts, [[10, 11, 12, 13], [14, 15], [16, 17, 18]]


def _megatron(path, **kw):
    from lmmr1_plugins.models.megatron.backend import MegatronBackend

    return MegatronBackend(str(path), dtype="float32", device="cpu", **kw)


def _hf_reference_logits(backend, prompts, completions):
    """The HF model's own forward with 3-D multimodal positions (``mm_token_type_ids``), all positions."""
    batch = backend.hf._batch(prompts, completions)
    batch["mm_token_type_ids"] = (batch["input_ids"] == backend.hf.model.config.image_token_id).int()
    with torch.no_grad():
        return backend.hf.model(**batch, use_cache=False).logits, batch["attention_mask"].bool()


def test_vl_logits_match_hf(tiny_vl):
    backend = _megatron(tiny_vl)
    prompts, completions = _vl_batch(backend)
    ref, real = _hf_reference_logits(backend, prompts, completions)
    with torch.no_grad():
        logits = backend.logits(prompts, completions, keep=ref.shape[1])
    assert logits.shape == ref.shape
    diff = (logits - ref)[real].abs().max().item()  # padding positions' outputs are never read
    assert diff < ABS_TOL, diff
    logp, mask, entropy = backend.logprobs(prompts, completions, with_entropy=True)
    with torch.no_grad():  # the hf backend's log-probs (3-D positions, image placeholders never sampled)
        ref_logp, _, _ = backend.hf.logprobs(prompts, completions)
    assert (logp - ref_logp).abs().max().item() < ABS_TOL
    assert logp.requires_grad and entropy is not None


def test_text_logprobs_match_hf_backend(tiny_text):
    backend = _megatron(tiny_text)
    prompts = [backend.encode([{"role": "user", "content": q}]) for q in ("What is 2 + 3?", "hi")]
    completions = [[20, 21, 22], [23]]
    logp, mask, entropy = backend.logprobs(prompts, completions, temperature=0.7, with_entropy=True)
    ref_logp, ref_mask, ref_entropy = backend.hf.logprobs(prompts, completions, temperature=0.7, with_entropy=True)
    assert torch.equal(mask, ref_mask)
    assert (logp - ref_logp).abs().max().item() < ABS_TOL
    assert ((entropy - ref_entropy) * mask).abs().max().item() < ABS_TOL  # padding rows are never read


def test_critic_values_match_hf_backend(tiny_vl):
    """The critic (images through its own copy of the vision tower) against the hf backend's: values and
    gradient norms over two clipped steps (values are zero before the first: the head starts at zero),
    and a critic_state round trip."""
    import copy

    from lmmr1_core.errors import ConfigError

    backend = _megatron(tiny_vl)
    prompts, completions = _vl_batch(backend)
    backend.make_critic(1e-2)
    backend.hf.make_critic(1e-2)
    target = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 0.0]])
    for _ in range(2):
        v, ref = backend.values(prompts, completions), backend.hf.values(prompts, completions)
        assert (v - ref).abs().max().item() < ABS_TOL
        norms = []
        for b, values in ((backend, v), (backend.hf, ref)):
            ((values - target) ** 2).sum().backward()
            norms.append(b.critic_step(0.5))
        assert abs(norms[0] - norms[1]) < ABS_TOL * norms[1]
    with torch.no_grad():
        v, ref = backend.values(prompts, completions), backend.hf.values(prompts, completions)
    assert v.abs().max().item() > 0.1 and (v - ref).abs().max().item() < ABS_TOL
    state = copy.deepcopy(backend.critic_state())  # live tensors: a checkpoint holds a copy
    with torch.no_grad():
        backend.value_head.weight.zero_()
        backend.critic.decoder.final_layernorm.weight.mul_(2)
    backend.load_critic_state(state)
    with torch.no_grad():
        assert torch.equal(backend.values(prompts, completions), v)
    backend.pp = 2  # what make_critic checks: pipeline-parallel critics are not supported
    with pytest.raises(ConfigError, match="pipeline_parallel"):
        backend.make_critic(1e-2)


def _untied(hf: dict, shape):
    from dataclasses import replace

    hf = dict(hf, **{"lm_head.weight": torch.randn_like(hf["embed_tokens.weight"])})
    return hf, replace(shape, tied=False)


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("tied", [True, False])
def test_conversion_round_trip_is_bit_exact(tiny_vl, tp, pp, tied):
    from lmmr1_plugins.models.megatron.convert import from_megatron, hf_lm_params, to_megatron
    from lmmr1_plugins.models.megatron.model import lm_shape
    from transformers import AutoConfig, AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_vl), dtype=torch.float32)
    hf = {k: v.detach() for k, v in hf_lm_params(model).items()}
    shape = lm_shape(AutoConfig.from_pretrained(str(tiny_vl)), tp)
    if not tied:
        hf, shape = _untied(hf, shape)
    merged = {}
    for pp_rank in range(pp):
        shards = [to_megatron(hf, shape, r, tp, pp_rank, pp) for r in range(tp)]
        if tp > 1:  # really split: each shard holds a part of each matrix
            qkv = "decoder.layers.0.self_attention.linear_qkv.weight"
            assert shards[0][qkv].shape[0] * tp == sum(v.shape[0] for k, v in hf.items() if "layers.0.self_attn" in k
                                                       and k.endswith("proj.weight") and "o_proj" not in k)  # fmt: skip
        merged.update(from_megatron(shards, shape, pp_rank, pp))
    assert merged.keys() == hf.keys()
    for key, value in hf.items():
        assert torch.equal(merged[key], value), key


def test_round_trip_through_the_model_and_save(tiny_vl, tmp_path):
    """Weights loaded into GPTModel and saved back as an HF checkpoint are the original bytes."""
    from safetensors.torch import load_file

    backend = _megatron(tiny_vl)
    backend.save(tmp_path / "out")
    before, after = load_file(tiny_vl / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_world_size_must_be_a_multiple_of_the_split(tiny_text):
    from lmmr1_core.errors import ConfigError

    with pytest.raises(ConfigError, match="tensor_parallel x pipeline_parallel"):
        _megatron(tiny_text, tensor_parallel=2)


def test_data_parallel_share_covers_the_batch():
    from lmmr1_core.distributed import share

    assert [list(share(3, r, 2)) for r in range(2)] == [[0, 1], [2]]
    assert [list(share(1, r, 2)) for r in range(2)] == [[0], []]
    for n in range(7):
        for dp in (1, 2, 3):
            assert [i for r in range(dp) for i in share(n, r, dp)] == list(range(n))


def _critic_step(backend, prompts, completions, rows: list[int]) -> dict:
    """A critic (from the current policy), one clipped step towards fixed targets on this replica's
    ``rows``, its values after (this replica's rows)."""
    backend.make_critic(1e-2)
    own = lambda x: [x[i] for i in rows]  # noqa: E731
    v = backend.values(own(prompts), own(completions))
    target = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 0.0]])[rows, : v.shape[1]]
    ((v - target) ** 2).sum().backward()
    norm = backend.critic_step(0.5)
    with torch.no_grad():
        after = backend.values(own(prompts), own(completions))
    state = backend.critic_state()  # collective
    return {"before": v.detach(), "norm": norm, "after": after, "model": state["model"]}


def _parallel_worker(model: str, tp: int, pp: int, out: str) -> dict:
    """log-probs, entropy, one clipped AdamW step, log-probs again, a one-row gradient norm (with two
    data-parallel replicas the second one has no row), a greedy rollout and a save. Each data-parallel
    replica computes its own rows (as the rl stage gives them): rank 0 keeps the first replica's."""
    import torch.distributed as dist

    from lmmr1_core.distributed import share

    backend = _megatron(model, tensor_parallel=tp, pipeline_parallel=pp)
    prompts, completions = _vl_batch(backend)
    dp_rank, dp, _ = backend.data_parallel()
    rows = list(share(len(prompts), dp_rank, dp))
    own = lambda x: [x[i] for i in rows]  # noqa: E731
    optimizer = backend.make_optimizer(1e-2, 0.01, (0.9, 0.999))
    backend.train()
    logp, _, entropy = backend.logprobs(own(prompts), own(completions), with_entropy=True)
    (-logp.sum()).backward()
    norm = backend.clip_grad_norm(0.5)
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        after, _, _ = backend.logprobs(own(prompts), own(completions))
    if dp_rank == 0:
        one, _, _ = backend.logprobs(prompts[:1], completions[:1])
        (-one.sum()).backward()
    norm_one = backend.clip_grad_norm(1e9)
    optimizer.zero_grad()
    critic = _critic_step(backend, prompts, completions, rows) if pp == 1 else None
    rollout = backend.generate(own(prompts), 6, greedy=True)
    main = dist.get_rank() == 0
    backend.save(Path(out) / "hf" if main else None)
    result = {"logp": logp.detach(), "entropy": entropy, "norm": norm, "after": after, "rollout": rollout,
              "norm_one": norm_one, "optimizer": optimizer.state_dict(), "critic": critic, "rows": rows}  # fmt: skip
    if main:
        torch.save(result, Path(out) / "result.pt")
    return result


@pytest.fixture(scope="module")
def tp1_result(tiny_vl, tmp_path_factory):
    out = tmp_path_factory.mktemp("tp1")
    return _parallel_worker(str(tiny_vl), 1, 1, str(out)), out


@pytest.mark.parametrize("tp,pp,dp", [(2, 1, 1), (1, 2, 1), (1, 1, 2)])
def test_tensor_pipeline_and_data_parallel_match_tp1(tiny_vl, tmp_path, tp1_result, tp, pp, dp):
    """dp 2 splits the 3-row batch 2 + 1 (the second replica's rows have no image)."""
    from safetensors.torch import load_file

    ref, ref_dir = tp1_result
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tp * pp * dp}",
           str(Path(__file__)), str(tiny_vl), str(tp), str(pp), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "result.pt")
    rows = got["rows"]  # the first replica's (all of them with one replica)
    assert rows == ([0, 1] if dp > 1 else [0, 1, 2])

    def ref_rows(t: torch.Tensor) -> torch.Tensor:
        return t[rows]  # the longest completion is row 0's: the same width

    assert (got["logp"] - ref_rows(ref["logp"])).abs().max().item() < ABS_TOL
    assert (got["entropy"] - ref_rows(ref["entropy"])).abs().max().item() < ABS_TOL
    assert abs(got["norm"] - ref["norm"]) < ABS_TOL * ref["norm"]  # the replicas' gradients summed
    assert (got["after"] - ref_rows(ref["after"])).abs().max().item() < ABS_TOL  # the same step on every replica
    assert (got["after"] - got["logp"]).abs().max().item() > 1e-3
    assert abs(got["norm_one"] - ref["norm_one"]) < ABS_TOL * ref["norm_one"]
    assert got["rollout"] == [ref["rollout"][i] for i in rows]
    if dp > 1:  # one model-parallel rank: the state is the single process's, the same step
        assert "per_rank" not in got["optimizer"]
        ref_state, got_state = ref["optimizer"]["state"], got["optimizer"]["state"]
        assert ref_state.keys() == got_state.keys()
        assert max((got_state[i]["exp_avg"] - ref_state[i]["exp_avg"]).abs().max().item() for i in ref_state) < 1e-5
    if pp == 1:  # the critic: tensor-split, or its rows split over the replicas
        crit, ref_crit = got["critic"], ref["critic"]
        assert abs(crit["norm"] - ref_crit["norm"]) < ABS_TOL * ref_crit["norm"]
        assert (crit["after"] - ref_rows(ref_crit["after"])).abs().max().item() < ABS_TOL
        assert ref_crit["after"].abs().max().item() > 0.1
        assert crit["model"].keys() == ref_crit["model"].keys()
        assert max((crit["model"][k] - ref_crit["model"][k]).abs().max().item() for k in crit["model"]) < 1e-3
    saved, ref_saved = load_file(tmp_path / "hf" / "model.safetensors"), load_file(ref_dir / "hf" / "model.safetensors")
    assert saved.keys() == ref_saved.keys()
    assert max((saved[k] - ref_saved[k]).abs().max().item() for k in saved) < 1e-3


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_quickstart_rl_loss_matches_hf(tmp_path):
    """Two rl steps of the quickstart per backend, from the same warm-up weights (the hf run's warm-up
    stage is copied into the megatron run, which skips it as finished); then the same with ppo."""
    sets = ["stages.fre.steps=2", "stages.fre.batch_size=4", "stages.fre.micro_batch_size=16"]
    hf = run_stage_file(tmp_path / "hf", "quickstart.yaml", sets)
    assert hf.returncode == 0, hf.stderr[-3000:]
    mg_dir = tmp_path / "mg"
    (mg_dir / "runs" / "quickstart").mkdir(parents=True)
    shutil.copytree(tmp_path / "hf" / "runs" / "quickstart" / "warmup", mg_dir / "runs" / "quickstart" / "warmup")
    shutil.copytree(tmp_path / "hf" / "runs" / "tiny-text-model", mg_dir / "runs" / "tiny-text-model")
    mg = run_stage_file(mg_dir, "quickstart.yaml", [*sets, "model.backend=megatron"])
    assert mg.returncode == 0, mg.stderr[-3000:]
    assert "stage warmup: finished earlier" in mg.stderr
    ref = _metrics(tmp_path / "hf" / "runs" / "quickstart" / "fre" / "metrics.jsonl")
    got = _metrics(mg_dir / "runs" / "quickstart" / "fre" / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2]
    assert abs(ref[0]["loss"]) > 1e-4  # rewards vary: the loss is not trivially zero
    assert got[0]["reward/mean"] == ref[0]["reward/mean"]  # the same rollouts
    assert abs(got[0]["loss"] - ref[0]["loss"]) < 1e-5
    assert abs(got[0]["grad_norm"] - ref[0]["grad_norm"]) < 1e-4 * ref[0]["grad_norm"]
    assert (mg_dir / "runs" / "quickstart" / "fre" / "final" / "model.safetensors").exists()

    # ppo from the same warm-up weights: the critic's value loss too (step 2's values are non-zero)
    ppo = [*sets, "stages.fre.algorithm.name=ppo", "stages.fre.algorithm.critic_lr=1.0e-3"]
    runs = {}
    for name, extra in (("hf-ppo", []), ("mg-ppo", ["model.backend=megatron"])):
        (tmp_path / name / "runs" / "quickstart").mkdir(parents=True)
        for part in ("quickstart/warmup", "tiny-text-model"):
            shutil.copytree(tmp_path / "hf" / "runs" / part, tmp_path / name / "runs" / part)
        proc = run_stage_file(tmp_path / name, "quickstart.yaml", [*ppo, *extra])
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = _metrics(tmp_path / name / "runs" / "quickstart" / "fre" / "metrics.jsonl")
    ref, got = runs["hf-ppo"], runs["mg-ppo"]
    assert [m["step"] for m in got] == [1, 2]
    assert ref[1]["value_loss"] != ref[0]["value_loss"]  # the critic stepped
    for r, g in zip(ref, got):
        assert g["reward/mean"] == r["reward/mean"]
        assert abs(g["loss"] - r["loss"]) < 1e-5
        assert abs(g["value_loss"] - r["value_loss"]) < 1e-5
        assert abs(g["grad_norm"] - r["grad_norm"]) < 1e-4 * r["grad_norm"]  # advantages from the values


@pytest.mark.parametrize("tp", [2])
def test_nproc_per_node_runs_tensor_or_data_parallel(tmp_path, tp):
    """``lmmr1 run --nproc-per-node 2`` with tensor_parallel 2: both stages finish, rank 0 writes once.
    (Two data-parallel replicas end to end: tests/test_data_parallel.py.)"""
    shutil.copytree(TESTS.parent / "stages", tmp_path / "stages")
    sets = ["model.backend=megatron", f"model.tensor_parallel={tp}", "stages.warmup.steps=2", "stages.fre.steps=1",
            "stages.fre.batch_size=2", "stages.fre.algorithm.group_size=2",
            "stages.fre.micro_batch_size=3"]  # fmt: skip
    cmd = [sys.executable, "-m", "lmmr1_core.cli", "run", "stages/quickstart.yaml", "--nproc-per-node", "2",
           *(a for s in sets for a in ("--set", s))]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fre = tmp_path / "runs" / "quickstart" / "fre"
    assert len(_metrics(fre / "metrics.jsonl")) == 1
    assert len(_metrics(tmp_path / "runs" / "quickstart" / "warmup" / "metrics.jsonl")) == 2
    assert (fre / "final" / "model.safetensors").exists()


def test_data_parallel_run_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    """Two replicas under ``--nproc-per-node 2``, killed (launcher and ranks) once a checkpoint is on
    disk: the rerun resumes from it and its later steps equal those of a run that was never stopped."""
    import signal
    import time

    psutil = pytest.importorskip("psutil")  # to find every rank's process
    sets = ["model.backend=megatron", "stages.warmup.steps=2", "stages.fre.steps=5", "stages.fre.save_every=1",
            "stages.fre.batch_size=2", "stages.fre.algorithm.group_size=2", "stages.fre.micro_batch_size=3",
            "stages.fre.rewards=[{name: length_penalty, max_tokens: 24, buffer: 20}]"]  # fmt: skip
    cmd = [sys.executable, "-m", "lmmr1_core.cli", "run", "stages/quickstart.yaml", "--nproc-per-node", "2",
           *(a for s in sets for a in ("--set", s))]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for d in (whole, killed):
        shutil.copytree(TESTS.parent / "stages", d / "stages")
    proc = subprocess.run(cmd, cwd=whole, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    fre = killed / "runs" / "quickstart" / "fre"
    run = subprocess.Popen(cmd, cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (fre / "checkpoints" / "step-000002" / "trainer_state.pt").exists():
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    # the launcher and every rank at once, as a lost node would (torchrun's workers have their own sessions)
    for p in [*psutil.Process(run.pid).children(recursive=True), psutil.Process(run.pid)]:
        p.send_signal(signal.SIGKILL)
    run.wait()
    assert not (fre / "final").exists()

    proc = subprocess.run(cmd, cwd=killed, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage fre: resuming after step " in proc.stderr, proc.stderr[-3000:]
    resumed_at = int(proc.stderr.split("stage fre: resuming after step ")[1].split()[0])
    assert 2 <= resumed_at < 5
    a, b = _metrics(whole / "runs/quickstart/fre/metrics.jsonl"), _metrics(fre / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for r, q in zip(a[resumed_at:], b[resumed_at:]):
        assert r["grad_norm"] > 0
        for key in ("loss", "grad_norm", "reward/mean", "response_length"):
            assert r[key] == pytest.approx(q[key], rel=1e-5, abs=1e-7), (r["step"], key)


if __name__ == "__main__":  # the torchrun worker of test_tensor_and_pipeline_parallel_match_tp1
    _parallel_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
