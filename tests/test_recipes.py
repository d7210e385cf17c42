"""The recipe files are LMM-R1's scripts (TideDra/lmm-r1, examples/scripts/lmm_r1/*.sh) in stage-file form:
they validate for the scripts' 8 GPUs, and their resolved batch numbers are the scripts'."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmmr1_core.cli import main
from lmmr1_core.config import load_config
from lmmr1_core.errors import ConfigError
from lmmr1_core.world import check_world

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["fre_then_mgt_geo.yaml", "fre_then_mgt_percereason.yaml", "fre_then_mgt_sokoban.yaml"]
# fewer generated Sokoban levels than the real recipe, to keep validation short
SMALL = {"fre_then_mgt_sokoban.yaml": [f"stages.{s}.data.{i}.n=20" for s in ("mgt_sokoban", "eval_fre")
                                       for i in (0, 1)]}  # fmt: skip

# flag -> value of each script, as the stage file must resolve it (rollout prompts, samples per prompt, optimizer
# steps per rollout, new tokens, prompt limit, lr, KL, micro batch, algorithm)
FRE = {"batch_size": 256, "group_size": 16, "steps_per_rollout": 16, "max_new_tokens": 4096,
       "max_prompt_length": 4096, "lr": 4e-7, "kl": 0.001, "micro_batch_size": 2, "algorithm": "reinforce_pp_baseline"}
SCRIPTS = {
    ("fre_then_mgt_geo.yaml", "mgt_geo"): {**FRE, "lr": 1e-6, "algorithm": "ppo", "lam": 1.0, "critic_lr": 9e-6},
    ("fre_then_mgt_percereason.yaml", "mgt_percereason"): {**FRE, "max_new_tokens": 8192, "micro_batch_size": 1},
    ("fre_then_mgt_sokoban.yaml", "mgt_sokoban"): {
        "batch_size": 128, "group_size": 16, "steps_per_rollout": 16, "max_new_tokens": 8196, "max_prompt_length": 4096,
        "lr": 1e-6, "kl": 0.0, "micro_batch_size": 1, "algorithm": "ppo", "lam": 1.0, "critic_lr": 5e-6},
    **{(f, "fre"): FRE for f in RECIPES},
}  # fmt: skip


def load(name):
    return load_config(ROOT / "stages" / name, SMALL.get(name, []))


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_for_8_gpus_and_names_its_launch_lines(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    sets = [a for o in SMALL.get(name, []) for a in ("--set", o)]
    result = CliRunner().invoke(main, ["validate", f"stages/{name}", "--nproc-per-node", "8", *sets])
    assert result.exit_code == 0, result.output
    assert "world: 8 processes, 8 data-parallel replicas" in result.output
    assert "8 vllm rollout engines of tensor_parallel 1" in result.output
    text = (ROOT / "stages" / name).read_text()
    header = text[: text.index("\nname:")]
    assert f"lmmr1 run stages/{name} --nproc-per-node 8" in header
    assert f"torchrun --standalone --nproc-per-node 8 -m lmmr1_core.cli run stages/{name}" in header
    assert "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500" in header
    cfg = load(name)
    check_world(cfg, 16)  # 2 nodes x 8 GPUs
    with pytest.raises(ConfigError, match="do not split evenly over 3 data-parallel replicas"):
        check_world(cfg, 3)


@pytest.mark.parametrize(("name", "stage"), sorted(SCRIPTS))
def test_recipe_batches_and_values_are_the_scripts(name, stage):
    want = SCRIPTS[(name, stage)]
    cfg = load(name)
    st, m = cfg.stages[stage], cfg.model
    a = st.algorithm
    assert (m.rollout.engine, m.rollout.engine_config()["tensor_parallel"]) == ("vllm", 1)
    assert m.rollout.engine_config()["gpu_memory_utilization"] == 0.5 and m.gradient_checkpointing
    assert st.batch_size == want["batch_size"] and a.group_size == want["group_size"]
    assert a.epochs == 1 and a.epochs * a.mini_batches == want["steps_per_rollout"]
    assert a.train_batch_samples * a.mini_batches == st.batch_size * a.group_size  # --train_batch_size in samples
    assert st.generation.max_new_tokens == want["max_new_tokens"]
    assert st.generation.max_prompt_length == want["max_prompt_length"]
    assert (st.generation.temperature, st.generation.top_p) == (1.0, 1.0)
    assert st.optim.lr == want["lr"] and st.optim.min_lr == pytest.approx(0.1 * want["lr"])
    assert (st.optim.betas, st.optim.warmup_ratio, st.optim.max_grad_norm, st.optim.weight_decay) == (
        (0.9, 0.95), 0.03, 1.0, 0.0)
    assert a.kl.coef == want["kl"] and st.micro_batch_size == want["micro_batch_size"]
    assert a.name == want["algorithm"]
    opts = a.algorithm_config()
    assert opts["gamma"] == 1.0 and opts["clip_eps"] == 0.2
    if a.kl.coef:
        assert (a.kl.estimator, a.kl.in_reward) == ("k1", True)
    if a.name == "ppo":  # --advantage_estimator gae --lambd 1
        assert (opts["lam"], opts["critic_lr"], opts["value_clip"]) == (want["lam"], want["critic_lr"], 0.2)
    if stage == "mgt_sokoban":  # --freeze_prefix visual, --save_steps 5
        assert st.optim.freeze == ["model.visual"] and st.save_every == 5
    else:
        assert st.save_every == 20


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_value_names_its_flag_or_says_assumed(name):
    """Each stage key set in a training stage carries a comment: the script's flag or "assumed"."""
    lines = (ROOT / "stages" / name).read_text().splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("stages:"))
    stage = None
    for line in lines[start + 1 :]:
        if re.match(r"^  \w+:$", line):
            stage = line.strip()[:-1]
            continue
        if stage in ("fre", "mgt_geo", "mgt_percereason", "mgt_sokoban") and re.match(r"^ {4,6}\w+: \S", line):
            key, value = (x.strip() for x in line.split(":", 1))
            if re.fullmatch(r"[&*]\w+", value.split("#")[0].strip()):  # an anchor (what follows) or an alias
                continue
            if key in ("kind", "data", "prompt_template", "name", "rewards") and "#" not in line:
                continue  # names and data are the user's; the template is the system prompt's companion
            assert "#" in line and (any(w in line for w in ("--", "assumed", "LMM-R1", "OpenRLHF", ".sh"))), (
                name, stage, line)
