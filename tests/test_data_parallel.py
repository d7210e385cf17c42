"""Every rank rolls out, scores and trains its own share (torchrun, 2 CPU processes over gloo).

A greedy 2-process run is compared with the 1-process run of the same stage file: the same rollouts, the
same loss and gradient norm, and the same log-probs after the first update (the kl of the second
mini-batch is measured against them). The tolerance is float32 noise: the replicas pad their micro-batches
differently, and Adam turns a gradient that is noise (1e-9 instead of 0) into a full step of ``lr``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STAGE = """name: dp
model: {backend: hf, path: runs/tiny-text-model, tiny: text}
stages:
  warmup:
    kind: sft
    data: [{dataset: arithmetic, n: 200, seed: 1, max_operand: 4}]
    steps: 30
    batch_size: 16
    micro_batch_size: 3
    optim: {lr: 3.0e-3}
    target_template: "<think>{reasoning}</think> <answer>{answer}</answer>"
  fre:
    kind: rl
    init_from: warmup
    data: [{dataset: arithmetic, n: 200, seed: 2, max_operand: 4}]
    rewards: [{name: math_accuracy, weight: 0.9}, {name: think_answer_format, weight: 0.1},
              {name: length_penalty, max_tokens: 16, buffer: 12}]
    algorithm: {name: reinforce_pp, group_size: 2, mini_batches: 2, kl: {coef: 0.01, estimator: k3}}
    generation: {max_new_tokens: 20, greedy: true}
    steps: 2
    batch_size: 6
    micro_batch_size: 3
    optim: {lr: 1.0e-3}
    save_every: 1
  eval:
    kind: eval
    init_from: warmup
    data: [{dataset: arithmetic, n: 9, seed: 3, max_operand: 4}]
    rewards: [{name: math_accuracy}, {name: length_penalty, max_tokens: 16, buffer: 12}]
    generation: {max_new_tokens: 20}
"""


def _run(cwd: Path, nproc: int, *sets: str, wait: bool = True):
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "dp.yaml").write_text(STAGE)
    cmd = [sys.executable, "-m", "lmmr1_core.cli", "run", "dp.yaml", *(a for s in sets for a in ("--set", s))]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _metrics(cwd: Path, stage: str) -> list[dict]:
    return [json.loads(x) for x in (cwd / "runs" / "dp" / stage / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("one")
    _run(d, 1)
    return d


@pytest.mark.parametrize("backend", ["hf", "megatron"])
def test_two_processes_reproduce_one(one_process, tmp_path, backend):
    if backend == "megatron":
        pytest.importorskip("megatron.core")
    _run(tmp_path, 2, f"model.backend={backend}")
    for stage in ("warmup", "fre"):
        ref, got = _metrics(one_process, stage), _metrics(tmp_path, stage)
        assert [r["step"] for r in got] == [r["step"] for r in ref]
        for r, g in zip(ref[:1], got[:1]):  # the first step of each stage starts from the same weights
            assert g["loss"] == pytest.approx(r["loss"], rel=2e-3, abs=1e-5), stage
            assert g["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-3), stage
    ref, got = _metrics(one_process, "fre")[0], _metrics(tmp_path, "fre")[0]
    assert ref["advantage/std"] > 0.5 and abs(ref["loss"]) > 1e-3  # the rewards vary: a real gradient
    for key in ("reward/mean", "reward/length_penalty", "response_length", "advantage/std"):
        assert got[key] == pytest.approx(ref[key], rel=1e-6), key  # the same greedy rollouts
    assert got["kl"] == pytest.approx(ref["kl"], rel=2e-2)  # log-probs after the first update, vs the reference
    assert got["rollout/replicas"] == 2 and got["rollout/prompts_per_rank"] == 3  # 6 prompts, 3 each
    samples = (tmp_path / "runs/dp/fre/samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 12  # every replica's rows, as one process writes them
    assert (tmp_path / "runs/dp/fre/final/model.safetensors").exists()
    # the eval stage: each replica scores its share of the 9 samples (5 + 4), rank 0 writes them all
    ref, got = (json.loads((d / "runs/dp/eval/final/results.json").read_text()) for d in (one_process, tmp_path))
    assert got["overall"]["n"] == 9 and got["overall"] == ref["overall"]


def test_vllm_engine_on_every_rank(tmp_path):
    """One colocated vLLM engine per rank (external_launcher, data parallel): each syncs from its replica's
    weights after every step, and its log-probs match the trainer's."""
    pytest.importorskip("vllm")
    _run(tmp_path, 2, "model.rollout.engine=vllm", "stages.warmup.steps=4", "stages.fre.steps=3",
         "stages.fre.generation.greedy=false")  # fmt: skip
    rows = _metrics(tmp_path, "fre")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["rollout/prompts_per_rank"] == 3
        assert r["rollout/logp_abs_diff"] < 1e-4  # summed over both ranks' tokens: every engine is in sync
    assert rows[1]["rollout/sync_s"] > 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _node(cwd: Path, rank: int, port: int, *sets: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lmmr1_core.cli", "run", "dp.yaml", "--nnodes", "2", "--node-rank", str(rank),
           "--master-port", str(port), *(a for s in sets for a in ("--set", s))]  # fmt: skip
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


def test_two_nodes_and_a_rank_that_dies(tmp_path):
    """2 nodes x 1 process through a localhost rendezvous (``--nnodes 2 --node-rank R``). When node 1's
    worker dies mid-stage, node 0 exits within seconds naming rank 1 (no hang); rerunning both resumes."""
    psutil = pytest.importorskip("psutil")
    (tmp_path / "dp.yaml").write_text(STAGE)
    sets = ("stages.warmup.steps=2", "stages.fre.steps=40")
    port = _free_port()
    nodes = [_node(tmp_path, r, port, *sets) for r in (0, 1)]
    fre = tmp_path / "runs" / "dp" / "fre"
    deadline = time.time() + 600
    while time.time() < deadline and not (fre / "checkpoints" / "step-000002" / "trainer_state.pt").exists():
        assert all(n.poll() is None for n in nodes), nodes[0].stderr.read()[-2000:]
        time.sleep(0.05)
    launcher = psutil.Process(nodes[1].pid).children()[0]  # lmmr1 -> torchrun's agent -> the rank's process
    launcher.children()[0].send_signal(signal.SIGKILL)
    t0 = time.time()
    err = nodes[0].communicate(timeout=120)[1]
    assert time.time() - t0 < 60
    nodes[1].communicate(timeout=60)
    assert nodes[0].returncode != 0
    errors = [x for x in err.splitlines() if "rror" in x][:6]
    assert "rank 0: rank 1 " in err and "Rerun the same command to resume" in err, errors

    port = _free_port()
    nodes = [_node(tmp_path, r, port, "stages.warmup.steps=2", "stages.fre.steps=3") for r in (0, 1)]
    errs = [n.communicate(timeout=600)[1] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], errs[0][-2000:]
    assert "stage fre: resuming after step " in errs[0]
    assert [r["step"] for r in _metrics(tmp_path, "fre")] == [1, 2, 3]


def test_launch_errors_are_one_line(tmp_path):
    import torch.distributed as dist
    from click.testing import CliRunner

    from lmmr1_core.cli import main

    (tmp_path / "dp.yaml").write_text(STAGE)
    port = _free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)  # another job's store
    result = CliRunner().invoke(main, ["run", str(tmp_path / "dp.yaml"), "--nnodes", "2", "--master-port", str(port)])
    assert result.exit_code == 2 and f"--master-port {port}: in use on this machine" in result.output
    del store
    result = CliRunner().invoke(main, ["run", str(tmp_path / "dp.yaml"), "--nnodes", "2", "--node-rank", "2"])
    assert result.exit_code == 2 and "node ranks are 0..1" in result.output


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """SLURM's SIGTERM may reach the ranks at different times; they agree after each step, so the
    collective checkpoint is written once, at one step. The rerun resumes from it with one process: the
    data position and counters are the job's, the replicas' states equal. (A run killed outright resumes
    too: tests/test_megatron.py and the two-node test below.)"""
    psutil = pytest.importorskip("psutil")
    sets = ("stages.warmup.steps=2", "stages.fre.steps=40", "stages.fre.save_every=1000")
    run = _run(tmp_path, 2, *sets, wait=False)
    fre = tmp_path / "runs" / "dp" / "fre"
    deadline = time.time() + 600
    while time.time() < deadline and not (fre / "metrics.jsonl").exists():
        assert run.poll() is None
        time.sleep(0.05)
    agent = psutil.Process(run.pid).children()[0]
    ranks = sorted(agent.children(), key=lambda p: int(p.environ().get("RANK", "0")))
    ranks[1].send_signal(signal.SIGTERM)  # rank 1 only
    assert run.wait(timeout=300) != 0
    checkpoints = sorted((fre / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and not (fre / "final").exists()
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert len(_metrics(tmp_path, "fre")) == stopped_at < 40
    proc = _run(tmp_path, 1, "stages.warmup.steps=2", f"stages.fre.steps={stopped_at + 1}",
                "stages.fre.save_every=1000")  # fmt: skip
    assert f"stage fre: resuming after step {stopped_at}" in proc.stderr
    assert [r["step"] for r in _metrics(tmp_path, "fre")] == list(range(1, stopped_at + 2))


def test_the_geo_recipe_scaled_down_runs_under_torchrun(tmp_path):
    """stages/fre_then_mgt_geo.yaml as shipped (hf data parallel, a vLLM engine per rank, the train batch in
    samples, ppo with a critic, eval stages), shrunk by --set to a tiny VL model, 2 steps and 2 processes:
    every stage finishes, each rank rolls out its own prompt, the engines stay in step with the trainer."""
    pytest.importorskip("vllm")
    where = os.environ.get("LMMR1_TEST_TORCHVISION")  # vLLM's Qwen2.5-VL code imports torchvision
    if not where:
        pytest.skip("LMMR1_TEST_TORCHVISION is not set")
    root = Path(__file__).parent.parent
    shutil.copytree(root / "stages", tmp_path / "stages")
    shutil.copytree(root / "data", tmp_path / "data")
    sets = ["model.path=runs/tiny-vl", "model.tiny=vl", "model.max_pixels=12544", "model.rollout.kv_cache_gb=0.25"]
    for st in ("fre", "mgt_geo"):
        sets += [f"stages.{st}.steps=2", f"stages.{st}.batch_size=2", f"stages.{st}.algorithm.group_size=2",
                 f"stages.{st}.algorithm.train_batch_samples=2",
                 f"stages.{st}.generation.max_new_tokens=8"]  # fmt: skip
    sets += [f"stages.{st}.generation.max_new_tokens=8" for st in ("eval_fre", "eval_mgt")]
    cmd = [sys.executable, "-m", "lmmr1_core.cli", "run", "stages/fre_then_mgt_geo.yaml", "--nproc-per-node", "2",
           *(a for s in sets for a in ("--set", s))]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": where}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "fre_then_mgt_geo"
    for st in ("fre", "mgt_geo"):
        rows = [json.loads(x) for x in (run / st / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        assert all(r["rollout/replicas"] == 2 and r["rollout/prompts_per_rank"] == 1 for r in rows), st
        assert all(r["rollout/logp_abs_diff"] < 1e-4 for r in rows), st  # images resized alike by both engines
    assert (run / "eval_mgt" / "final" / "results.json").exists()
