"""Thread counts that fit the machine (lmmr1_core/threads.py), and a run that finishes beside a busy process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import run_stage_file

from lmmr1_core import threads
from lmmr1_core.config import ModelConfig


def cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_cgroup_quota_v2_v1_and_none(tmp_path):
    assert threads.cgroup_cpu_quota(cgroup(tmp_path / "a", {"cpu.max": "150000 100000\n"})) == 1.5
    assert threads.cgroup_cpu_quota(cgroup(tmp_path / "b", {"cpu.max": "max 100000\n"})) is None
    v1 = {"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}
    assert threads.cgroup_cpu_quota(cgroup(tmp_path / "c", v1)) == 3.0
    unlimited = {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"}
    assert threads.cgroup_cpu_quota(cgroup(tmp_path / "d", unlimited)) is None
    assert threads.cgroup_cpu_quota(tmp_path / "missing") is None


def test_usable_cpus_is_the_affinity_mask_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 128)  # the host's cores: never the answer
    assert threads.usable_cpus(tmp_path / "none") == 8
    assert threads.usable_cpus(cgroup(tmp_path / "q", {"cpu.max": "250000 100000"})) == 2  # 2.5 CPUs: 2 threads
    assert threads.usable_cpus(cgroup(tmp_path / "s", {"cpu.max": "50000 100000"})) == 1  # half a CPU: still 1
    assert threads.usable_cpus(cgroup(tmp_path / "w", {"cpu.max": "1600000 100000"})) == 8  # quota above the mask


def test_threads_are_divided_among_local_ranks_and_the_override_wins(monkeypatch):
    assert threads.choose_threads(cpus=8, ranks=1) == 8
    assert threads.choose_threads(cpus=8, ranks=3) == 2
    assert threads.choose_threads(cpus=2, ranks=8) == 1  # more ranks than CPUs: one thread each
    assert threads.choose_threads(override=3, cpus=2, ranks=8) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(threads, "usable_cpus", lambda: 16)
    assert threads.local_ranks() == 4 and threads.choose_threads() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert threads.choose_threads() == 16


def _fresh(code: str) -> str:
    """Run ``code`` in a new interpreter: a vLLM engine built earlier in this test process (tests/test_vllm.py)
    turns torch.set_num_threads into a no-op for the rest of it, and forked workers inherit that."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(__file__)).stdout.split()  # fmt: skip


def test_configure_torch_sets_the_count():
    code = "import torch\nfrom lmmr1_core import threads\nprint(threads.configure_torch(1), torch.get_num_threads())"
    assert _fresh(code) == ["1", "1"]


def test_model_threads_is_a_checked_option():
    assert ModelConfig(path="m").threads is None
    assert ModelConfig(path="m", threads=2).threads == 2
    with pytest.raises(ValueError):
        ModelConfig(path="m", threads=0)
    with pytest.raises(ValueError):
        ModelConfig(path="m", thread=2)  # strict: a typo is an error


def test_a_short_openmp_spin_is_set_before_torch_loads_and_a_users_choice_is_kept():
    env = {}
    threads.prepare_environment(env)
    assert env == {"GOMP_SPINCOUNT": "20000", "MKL_CBWR": "AUTO,STRICT"}
    for users in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(users)
        threads.prepare_environment(env)
        assert env == {**users, "MKL_CBWR": "AUTO,STRICT"}  # a spin count would override the user's policy
    env = {"MKL_CBWR": "COMPATIBLE"}
    threads.prepare_environment(env)
    assert env["MKL_CBWR"] == "COMPATIBLE"
    # the CLI sets it before anything imports torch (OpenMP reads it once, when torch loads)
    probe = """
import os, sys

class Watch:  # what GOMP_SPINCOUNT is when torch is first imported
    seen = "torch not loaded"
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and Watch.seen == "torch not loaded":
            Watch.seen = f"{os.environ.get('GOMP_SPINCOUNT')} {os.environ.get('MKL_CBWR')}"
        return None

sys.meta_path.insert(0, Watch())
from lmmr1_core.cli import main
try:
    main(["validate", "no-such-file.yaml"])
except SystemExit:
    pass
print(Watch.seen)
"""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_CBWR")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=clean, check=True)
    assert out.stdout.split() == ["20000", "AUTO,STRICT"]


@pytest.mark.parametrize("rows", [7, 10])
def test_generation_is_the_same_on_one_thread_and_two(tiny_text, rows):
    """The thread tuner switches counts mid-run, so they must not change what is sampled. MKL rounded a
    [7 or 10 rows, K] product differently on 1 and 2 threads until conftest, like the CLI, set MKL_CBWR."""
    from lmmr1_plugins.models.decode import sample
    from lmmr1_plugins.models.hf import HFBackend

    backend = HFBackend(str(tiny_text), tune_threads=False)
    backend.model.eval()
    prompts = [backend.encode([{"role": "user", "content": f"What is {i} + {3 * i}?"}]) for i in range(rows)]
    batch = backend._batch(prompts)
    before, seen = torch.get_num_threads(), []
    try:
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            seen.append(sample(backend.model, batch, 12, eos_ids=backend.eos_ids))
    finally:
        torch.set_num_threads(before)
    assert seen[0] == seen[1] == seen[2] == seen[3]  # tokens and their log-probs, bit for bit


def report_threads(prompts, completions, **kwargs):
    return [float(torch.get_num_threads() * 10 + (os.environ.get("OMP_NUM_THREADS") == "1"))] * len(completions)


def test_reward_workers_take_one_thread_each():
    code = """
from lmmr1_core.rewards import RewardWorkers
from test_threads import report_threads
if __name__ == "__main__":
    workers = RewardWorkers("threads", report_threads, timeout_s=30, workers=2)
    try:
        print(*workers.score(["p"] * 4, ["c"] * 4, {}))
    finally:
        workers.close()
"""
    assert _fresh(code) == ["11.0"] * 4  # 1 thread, OMP_NUM_THREADS=1


COMPETITOR = """
import torch
torch.set_num_threads(2)
a, x = torch.randn(256, 256), torch.randn(1 << 16)
while True:
    a = torch.tanh(a @ a / 16)
    x = torch.sin(x) * 1.0001 + x.mean()
"""


def test_quickstart_steps_finish_while_another_torch_process_keeps_the_cpus_busy(tmp_path):
    """Only that it finishes: the ratio to a quiet run is measured by benchmarks/compare_trl.py."""
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
    try:
        sets = ["stages.warmup.steps=1", "stages.fre.steps=3", "stages.fre.batch_size=2"]
        result = run_stage_file(tmp_path, "quickstart.yaml", sets)
    finally:
        competitor.kill()
        competitor.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "runs/quickstart/fre/metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and all(json.loads(r)["step_s"] > 0 for r in rows)
