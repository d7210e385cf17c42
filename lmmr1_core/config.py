"""The stage file: a YAML document validated by pydantic before any model is loaded.

Every field is documented here and only here; ``lmmr1 reference`` prints these descriptions as
the stage-file reference. Unknown keys are errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmmr1_core.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a stage file means the number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.[\d_]*)?[eE][-+]?\d+$|" r"^[-+]?(?:\d[\d_]*)?\.[\d_]+(?:[eE][-+]?\d+)?$|"
               r"^[-+]?\d[\d_]*\.(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML the way stage files and ``--set`` values are read."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RolloutConfig(BaseModel):
    """Which engine generates rollouts; keys other than `engine` are the engine plugin's options."""

    model_config = ConfigDict(extra="allow")
    engine: str = Field(
        "backend",
        description="`backend`: the model backend generates; else a rollout-engine plugin, e.g. `vllm` "
        "(extra `lmmr1[vllm]`), which gets the trainer's weights before each rollout",
    )

    def engine_config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LoraConfig(_Strict):
    """LoRA through `peft` (extra `lmmr1[lora]`): the base weights stay frozen and only low-rank adapters train.

    The KL reference is the base with the adapter switched off (no second copy of the model); checkpoints hold
    the adapter (`adapter/`), and a stage's `final/` also the merged weights, so vLLM, `lmmr1 eval` and a next
    stage load it like any checkpoint (a next stage trains a fresh adapter on those merged weights).
    """

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scaling: the adapter's update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(
        None,
        description="linear modules to adapt, by name or name suffix; default: the language model's attention and "
        "MLP projections (q/k/v/o_proj, gate/up/down_proj). Vision-tower modules are adapted only when an entry "
        "names them (e.g. `visual.blocks.0.attn.qkv`, or any entry containing `visual`): otherwise the vision "
        "tower stays frozen",
    )


class ModelConfig(_Strict):
    backend: str = Field("hf", description="model backend plugin name (`hf`, `megatron`)")
    path: str = Field(description="local HF directory or hub id of the starting weights")
    tiny: Literal["text", "vl"] | None = Field(
        None, description="build a tiny random model of this kind at `path` if it does not exist"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="`auto`: float32 on CPU, bfloat16 on GPU"
    )
    device: str = Field("auto", description="`auto`, `cpu`, `cuda`, `cuda:1`, ...")
    min_pixels: int | None = Field(None, description="image processor lower bound on pixels per image")
    max_pixels: int | None = Field(None, description="image processor upper bound on pixels per image")
    gradient_checkpointing: bool = False
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads per process (default: the CPUs this process may use, by affinity and "
        "cgroup quota, divided among torchrun's local ranks; see README, Benchmarks)",
    )
    tune_threads: bool = Field(
        True,
        description="hf backend on CPU: time 1 thread against `threads` for each phase (prompt forward, one-token "
        "steps, scoring forward, training forward) on its first calls and keep the faster (README, Benchmarks)",
    )
    tensor_parallel: int = Field(1, ge=1, description="megatron: tensor-parallel size")
    pipeline_parallel: int = Field(1, ge=1, description="megatron: pipeline-parallel size")
    rollout: RolloutConfig = RolloutConfig()
    lora: LoraConfig | None = Field(
        None, description="train LoRA adapters instead of all weights (hf backend; `lora: {}` for the defaults)"
    )


class DataSpec(BaseModel):
    """One dataset of a stage; every key except `dataset` configures the loader."""

    model_config = ConfigDict(extra="allow")
    dataset: str = Field(description="dataset plugin name (`jsonl`, `parquet`, `geometry`, ...)")
    name: str | None = Field(None, description="label in eval reports (default: the path or the dataset name)")

    def loader_config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def label(self) -> str:
        extra = self.model_extra or {}
        return self.name or str(extra.get("path") or self.dataset)


class RewardSpec(BaseModel):
    """One reward; every other key is the reward's option (`lmmr1 reference` lists each reward's)."""

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = 1.0
    timeout_s: float = Field(10.0, gt=0, description="per-sample time limit; a hung verifier scores 0")
    workers: int | None = Field(None, ge=1, description="processes verifying in parallel (default: cores, at most 4)")
    completions: Literal["text", "conversational"] | None = Field(
        None,
        description="how completions reach the reward: strings, or TRL's conversational "
        "[{role: assistant, content: ...}]; default: what the reward declares (`conversational = True`), else text",
    )

    def reward_config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class KLConfig(_Strict):
    coef: float = Field(0.0, ge=0, description="0 turns KL off (no reference model is kept)")
    estimator: Literal["k1", "k2", "k3"] = Field("k3", description="k1: log-ratio, k2: squared/2, k3: low-variance")
    in_reward: bool = Field(
        False, description="fold -coef*KL into the per-token reward (LMM-R1: k1, 0.001) instead of the loss"
    )


class AlgorithmConfig(BaseModel):
    """The algorithm plugin and its options; keys other than these go to the plugin."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        "grpo",
        description="algorithm plugin: grpo, dr_grpo, dapo, gspo, rloo, reinforce_pp, "
        "reinforce_pp_baseline, ppo (see docs/algorithms.md)",
    )
    group_size: int = Field(4, ge=1, description="completions sampled per prompt")
    kl: KLConfig = KLConfig()
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] | None = Field(
        None, description="how token losses become one number; default: the algorithm's own"
    )
    epochs: int = Field(1, ge=1, description="passes over each rollout batch (old log-probs kept)")
    mini_batches: int = Field(
        1, ge=1, description="optimizer steps per pass over a rollout batch (or give `train_batch_samples`)"
    )
    train_batch_samples: int | None = Field(
        None,
        ge=1,
        description="samples (completions; env stages: episodes) per optimizer step, the whole job's: OpenRLHF's "
        "`train_batch_size`. It must divide the rollout batch, `batch_size x group_size` samples, and sets "
        "`mini_batches` to their quotient (LMM-R1: 256 prompts x 16 / 256 = 16 optimizer steps per rollout)",
    )
    max_sampling_rounds: int = Field(
        4, ge=1, description="dynamic sampling (dapo): rollout rounds tried to fill the batch with informative groups"
    )
    tis_cap: float | None = Field(
        None,
        gt=0,
        description="truncated importance sampling: weight each token's loss by min(p_trainer / p_rollout, cap) "
        "to correct the rollout engine's log-prob mismatch (env stages: on the model's own tokens)",
    )

    def algorithm_config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_prompt_length: int = Field(2048, ge=1, description="longer prompts are dropped and counted")
    greedy: bool = Field(False, description="argmax decoding: reproducible rollouts (tests, debugging); a "
                         "group's samples are then identical, so group-relative advantages are 0")


class OptimConfig(_Strict):
    lr: float = Field(1e-6, gt=0)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = Field(1.0, gt=0)
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = Field(0.0, ge=0, description="the cosine schedule's floor")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up updates (overrides warmup_ratio)")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="warm-up as a fraction of all updates")
    freeze: list[str] = Field(
        default_factory=list, description="parameter-name prefixes kept frozen (e.g. the vision tower: `model.visual`)"
    )


class EnvSpec(BaseModel):
    """A multi-turn environment for an rl or eval stage; keys other than these configure the env."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="env plugin name (`sokoban`, ...)")
    max_turns: int = Field(8, ge=1, description="model turns per episode")
    max_episode_tokens: int = Field(4096, ge=16, description="context budget of an episode")
    instruction: str | None = Field(None, description="text appended to every observation")
    keep_images: int | None = Field(
        None,
        ge=1,
        description="show only the last k observation images; each turn then trains as its own "
        "sequence with its episode's advantage (critic-free algorithms, KL in the loss)",
    )
    reward: Literal["return", "success", "per_turn"] = Field(
        "return",
        description="the episode's return; 1.0 on success; or per_turn: each turn's env reward on that turn's "
        "tokens (token-level algorithms credit turns apart; outcome-level ones see the return)",
    )

    def env_config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StageConfig(_Strict):
    kind: str = Field(description="stage kind plugin: `rl`, `sft`, `eval`")
    init_from: str | None = Field(None, description="start from this stage's final weights")
    data: list[DataSpec] = Field(min_length=1)
    steps: int | None = Field(None, ge=1, description="optimizer steps (rl: rollout batches); required to train")
    batch_size: int = Field(
        4,
        ge=1,
        description="rl: prompts per rollout (OpenRLHF's `rollout_batch_size`), each sampled `algorithm.group_size` "
        "times; sft: samples per step. Under torchrun the whole job's, split evenly over the data-parallel replicas",
    )
    micro_batch_size: int = Field(8, ge=1, description="sequences per forward/backward")
    system_prompt: str | None = Field(None, description="a system message put before every prompt")
    prompt_template: str | None = Field(
        None, description="wraps each prompt's (last user) text; `{prompt}` stands for it, e.g. LMM-R1's instruction"
    )
    seed: int = 0
    save_every: int = Field(10, ge=1, description="checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(
        2, ge=1, description="checkpoints kept; a resume falls back to an older one when the newest is damaged"
    )
    optim: OptimConfig = OptimConfig()
    # rl
    env: EnvSpec | None = Field(None, description="multi-turn episodes with this env (data: `env_seeds`)")
    rewards: list[RewardSpec] = Field(default_factory=list)
    algorithm: AlgorithmConfig = AlgorithmConfig()
    generation: GenerationConfig = GenerationConfig()
    samples_every: int = Field(1, ge=1, description="write samples.jsonl every N steps")
    # eval
    eval_samples: int = Field(
        1, ge=1, description="completions per prompt: 1 = greedy accuracy; k > 1 = mean@k and pass@k when sampling"
    )
    category_key: str | None = Field(
        None, description="sample column to break results down by (default: category/subject)"
    )
    # sft
    target_template: str = Field(
        "<answer>{answer}</answer>",
        description="sft target text; `{answer}` and any sample column can be used",
    )

    @model_validator(mode="after")
    def _train_batch(self) -> StageConfig:
        """OpenRLHF counts its train batch in samples, we count optimizer steps: one number resolves to the other
        here, so the loop only ever reads ``mini_batches``. Both given and agreeing is allowed (a run's written
        config holds both)."""
        algo = self.algorithm
        if algo.train_batch_samples is None:
            return self
        tbs, G = algo.train_batch_samples, algo.group_size
        total = self.batch_size * G
        if total % tbs:
            raise ValueError(
                f"algorithm.train_batch_samples: {tbs} does not divide the rollout batch, batch_size x "
                f"algorithm.group_size = {self.batch_size} x {G} = {total} samples; use a divisor of {total}"
            )
        steps = total // tbs
        if "mini_batches" in algo.model_fields_set and algo.mini_batches != steps:
            raise ValueError(
                f"algorithm.mini_batches: {algo.mini_batches} disagrees with algorithm.train_batch_samples: {tbs} "
                f"({total} samples per rollout / {tbs} = {steps} optimizer steps); give only one of them"
            )
        algo.mini_batches = steps
        return self


class LoggingConfig(_Strict):
    """Experiment trackers besides metrics.jsonl; one that is missing or fails never stops training.

    Each stage logs its metrics (those of metrics.jsonl), its config (secrets redacted) and its sample tables
    to every tracker named here, as one tracker run named `<run>/<stage>`. A tracker that is not installed, or
    that fails, is reported once and dropped."""

    tensorboard: bool = Field(True, description="tensorboard events under `<stage>/tensorboard/`")
    wandb: dict[str, Any] | None = Field(
        None,
        description="Weights & Biases (extra `lmmr1[wandb]`): the keys go to `wandb.init` (project, entity, "
        "tags, mode, ...; default dir: the stage's directory); `wandb: {}` for the defaults. Offline: "
        "WANDB_MODE=offline",
    )
    trackio: dict[str, Any] | None = Field(
        None,
        description="trackio (extra `lmmr1[trackio]`): the keys go to `trackio.init` (project, space_id, ...); "
        "local by default (TRACKIO_DIR)",
    )
    mlflow: dict[str, Any] | None = Field(
        None,
        description="MLflow (extra `lmmr1[mlflow]`): keys `tracking_uri` (a server URL, `sqlite:///mlflow.db` with "
        "the full `mlflow`, or local files `file:./mlruns` with MLFLOW_ALLOW_FILE_STORE=true; default: "
        "MLFLOW_TRACKING_URI, else mlflow's own; on local files `reward/mean` is logged as `reward.mean`), "
        "`experiment` (default: the run name) and `tags`",
    )

    @field_validator("wandb", "trackio", "mlflow", mode="before")
    @classmethod
    def _switch(cls, v: Any) -> Any:  # `wandb: true` = the defaults, `false` = off
        return {} if v is True else (None if v is False else v)


class RunConfig(_Strict):
    name: str = Field(description="run name; outputs go to `<output_dir>/<name>/<stage>/`")
    model: ModelConfig
    output_dir: str = "runs"
    stages: dict[str, StageConfig] = Field(min_length=1)
    logging: LoggingConfig = LoggingConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain directory name")
        return v


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as a YAML scalar)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    return parts, load_yaml(value) if value.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``dotted.key=value``; a number indexes into a list (``stages.fre.data.0.path=...``)."""
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"--set {text!r}: {p!r} is not an index of a {len(node)}-item list")
                if last:
                    node[int(p)] = value
                else:
                    node = node[int(p)]
            elif isinstance(node, dict):
                if last:
                    node[p] = value
                else:
                    node = node.setdefault(p, {})
            else:
                raise ConfigError(f"--set {text!r}: cannot set {p!r} inside a {type(node).__name__}")
    return data


def _format_validation(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid stage file"]
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `lmmr1 reference` lists every key)"
        elif e["type"] == "value_error":  # our own validators' messages name the key already
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a stage file; the error names the file and key."""
    path = str(path)
    try:
        with open(path) as f:
            data = load_yaml(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such stage file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(path, err)) from None
    stage_order(cfg, path)
    return cfg


def stage_order(cfg: RunConfig, path: str = "stage file") -> list[str]:
    """Stages in dependency order (``init_from`` edges); a cycle or dangling edge is an error."""
    for name, st in cfg.stages.items():
        if st.init_from is not None and st.init_from not in cfg.stages:
            raise ConfigError(
                f"{path}: stages.{name}.init_from: no stage named {st.init_from!r} (stages: {', '.join(cfg.stages)})"
            )
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = trail[trail.index(name) :] + [name]
            raise ConfigError(f"{path}: stages: init_from forms a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        parent = cfg.stages[name].init_from
        if parent is not None:
            visit(parent, trail + [name])
        state[name] = 2
        order.append(name)

    for name in cfg.stages:
        visit(name, [])
    return order


def reference_text() -> str:
    """The stage-file reference, read from the models above (the one place fields are documented)."""
    sections = [
        ("top level", RunConfig),
        ("model", ModelConfig),
        ("model.rollout", RolloutConfig),
        ("model.lora", LoraConfig),
        ("logging", LoggingConfig),
        ("stages.<name>", StageConfig),
        ("stages.<name>.data[]", DataSpec),
        ("stages.<name>.rewards[]", RewardSpec),
        ("stages.<name>.algorithm", AlgorithmConfig),
        ("stages.<name>.env", EnvSpec),
        ("stages.<name>.algorithm.kl", KLConfig),
        ("stages.<name>.generation", GenerationConfig),
        ("stages.<name>.optim", OptimConfig),
    ]
    out = []
    for title, model in sections:
        out.append(f"{title}:" + (f"  ({model.__doc__.strip().splitlines()[0]})" if model.__doc__ else ""))
        for name, f in model.model_fields.items():
            default = "required" if f.is_required() else f"default {f.get_default(call_default_factory=True)!r}"
            ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
            desc = f" — {f.description}" if f.description else ""
            out.append(f"  {name}: {ann}, {default}{desc}")
    return "\n".join(out)
