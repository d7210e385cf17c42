"""What the core asks of a plugin, written once.

Each contract is a ``typing.Protocol``: the members the core calls, nothing more. Optional abilities
are *declared* in a backend's ``capabilities`` set (``CRITIC``, ``REFERENCE``, ``ROLLOUT_WEIGHTS``, ``ADAPTER``)
and the core checks the set before it asks, so a backend without a critic gets a clear error when a
stage needs one instead of an ``AttributeError`` mid-step. docs/plugins.md documents every member
here; tests/test_contracts.py fails when the two drift apart or when a built-in backend misses one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch

from lmmr1_core.types import Observation, Sample

# -- capabilities a backend may declare ---------------------------------------------------------------

CRITIC = "critic"
"""A value model for algorithms with ``needs_critic`` (ppo): ``make_critic``, ``values``, ``critic_step``,
``critic_state``, ``load_critic_state``."""
REFERENCE = "reference"
"""A frozen reference model for the KL term: ``make_reference`` and ``logprobs(..., reference=True)``."""
ROLLOUT_WEIGHTS = "rollout_weights"
"""Weights a rollout engine can load: ``is_vl``, ``path``, ``dtype``, ``device``, ``rollout_state_dict()``."""
ADAPTER = "adapter"
"""The policy trains an adapter (LoRA) over frozen base weights: ``save`` writes the adapter (what resuming
needs), ``save_merged`` the merged weights as a plain Hugging Face checkpoint (``final/`` gets both). The KL
reference is the base with the adapter off, and ``path`` holds the base weights (an engine syncs before its
first rollout)."""
DATA_PARALLEL = "data_parallel"
"""Under torchrun the backend runs data-parallel replicas: ``data_parallel() -> (replica, replicas, group)``
says which replica this rank is in and the process group that joins one rank of each; ``clip_grad_norm``
(and ``critic_step``) sum the gradients over that group first. The core then gives each replica its own
prompt groups; every rank of a replica gets the same ones."""
CAPABILITIES = (CRITIC, REFERENCE, ROLLOUT_WEIGHTS, ADAPTER, DATA_PARALLEL)


class Prompt(Protocol):
    """An encoded prompt; a backend may carry more (image tensors) but the core reads only the ids."""

    input_ids: list[int]


class Generator(Protocol):
    """What generates rollouts: a backend itself, or a rollout engine in front of it."""

    def generate(
        self,
        prompts: list[Any],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
        return_logprobs: bool = False,
    ) -> list[list[int]] | tuple[list[list[int]], list[list[float]]]:
        """One completion per prompt, each ending at (and including) its EOS token; with ``return_logprobs``
        also each sampled token's log-prob under the tempered distribution before top-p."""
        ...


@runtime_checkable
class Backend(Generator, Protocol):
    """A model backend (``register_models``): encodes prompts, generates, scores, trains and saves."""

    capabilities: frozenset[str]
    tokenizer: Any
    eos_ids: set[int]

    def encode(self, messages: list[dict[str, Any]], images: list[Any] = (), sample_id: str = "") -> Prompt:
        """The chat-templated prompt; raises ``DataError`` naming ``sample_id`` for an unreadable image."""
        ...

    def encode_continuation(
        self, history: list[dict[str, Any]], new: list[dict[str, Any]], images: list[Any] = (), sample_id: str = ""
    ) -> Prompt:
        """The tokens that follow an assistant turn when ``new`` messages are appended (multi-turn envs)."""
        ...

    def decode(self, ids: list[int]) -> str: ...

    def logprobs(
        self,
        prompts: list[Prompt],
        completions: list[list[int]],
        temperature: float = 1.0,
        reference: bool = False,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(logp [B, T], mask [B, T], entropy [B, T] | None)`` of each completion token."""
        ...

    def train(self) -> None: ...

    def eval(self) -> None: ...

    def make_optimizer(
        self, lr: float, weight_decay: float, betas: tuple[float, float], freeze: list[str] = ()
    ) -> torch.optim.Optimizer: ...

    def clip_grad_norm(self, max_norm: float) -> float: ...

    def save(self, out_dir: Any) -> None:
        """A Hugging Face checkpoint at ``out_dir``. Collective under torchrun: non-zero ranks pass None."""
        ...

    def close(self) -> None:
        """Free what the backend holds (a later stage builds its own)."""
        ...


class WithReference(Protocol):
    """Declared by ``REFERENCE`` in ``capabilities``."""

    def make_reference(self, path: str | None = None) -> None: ...


class WithCritic(Protocol):
    """Declared by ``CRITIC`` in ``capabilities``."""

    def make_critic(self, lr: float) -> None: ...

    def values(self, prompts: list[Prompt], completions: list[list[int]]) -> torch.Tensor: ...

    def critic_step(self, max_norm: float) -> float: ...

    def critic_state(self) -> dict[str, Any]: ...

    def load_critic_state(self, state: dict[str, Any]) -> None: ...


class WithRolloutWeights(Protocol):
    """Declared by ``ROLLOUT_WEIGHTS`` in ``capabilities``: what a rollout engine reads off its backend."""

    path: str
    dtype: torch.dtype
    device: torch.device
    is_vl: bool

    def rollout_state_dict(self) -> dict[str, torch.Tensor]: ...


class WithAdapter(Protocol):
    """Declared by ``ADAPTER`` in ``capabilities``."""

    def save_merged(self, out_dir: Any) -> None:
        """The base plus the adapter as plain Hugging Face weights in ``out_dir`` (beside what ``save`` wrote).
        Collective under torchrun: non-zero ranks pass None."""
        ...


class WithDataParallel(Protocol):
    """Declared by ``DATA_PARALLEL`` in ``capabilities``."""

    def data_parallel(self) -> tuple[int, int, Any]: ...


@runtime_checkable
class RolloutEngine(Generator, Protocol):
    """A rollout engine (``register_rollout_engines``): generates in place of the backend.

    ``separate_logprobs``: its log-probs come from other kernels than the trainer's, so the core keeps
    them (``rollout/logp_abs_diff``, truncated importance sampling). ``last_sync_s`` is logged as
    ``rollout/sync_s``.
    """

    separate_logprobs: bool
    last_sync_s: float

    def weights_changed(self) -> None:
        """The trainer took an optimizer step: load its weights before the next ``generate``."""
        ...

    def close(self) -> None: ...


class RolloutEngineFactory(Protocol):
    def __call__(self, backend: Backend, model: Any, stage: Any) -> RolloutEngine | None:
        """An engine for ``stage`` (``model``: the stage file's ``model`` section), or None when the stage
        generates nothing (sft)."""
        ...


class Algorithm(Protocol):
    """A policy-optimisation algorithm (``register_algorithms``); its factory takes the stage file's
    ``algorithm`` options. ``value_targets`` and ``value_loss`` are called only when ``needs_critic``."""

    needs_critic: bool
    dynamic_sampling: bool
    default_loss_agg: str
    min_group_size: int  # 2 for group-relative algorithms: with one sample per prompt every advantage is 0

    def shape_rewards(self, rewards: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int) -> torch.Tensor: ...

    def advantages(
        self,
        rewards: torch.Tensor,
        group_size: int,
        mask: torch.Tensor,
        kl_reward: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def policy_loss(
        self, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def value_targets(
        self, rewards: torch.Tensor, mask: torch.Tensor, kl_reward: torch.Tensor | None, values: torch.Tensor
    ) -> torch.Tensor: ...

    def value_loss(
        self, values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor: ...


@runtime_checkable
class Env(Protocol):
    """A multi-turn environment (``register_envs``); the factory takes the stage file's ``env`` options.

    ``reset`` is deterministic per seed. ``step`` takes the model's whole response (any text, garbage
    included, without raising) and returns ``(observation, reward, done, info)``; ``info["success"]``
    marks a solved episode.
    """

    def reset(self, seed: int) -> Observation: ...

    def step(self, action: str) -> tuple[Observation, float, bool, dict[str, Any]]: ...


class Reward(Protocol):
    """TRL's reward contract (``register_rewards``): one score per completion, None for "not applicable".

    Dataset columns (``answer``, ``images``, ``id``, ``completion_ids``, ...) arrive as keyword lists, and
    ``trainer_state`` as TRL passes it. Options from the stage file are the function's own keyword
    parameters. ``conversational = True`` on the function asks for TRL's conversational completions
    (``[[{"role": "assistant", "content": text}], ...]``) instead of strings. Worker processes call a
    reward one sample at a time (so a time limit costs only the slow sample); ``batched = True`` asks
    for one call per worker's chunk instead (a remote scorer taking a batch per request). ``warmup``, a
    function of no arguments, runs once in the trainer before the workers start: they fork from it with
    whatever it loaded (a parser's tables, lazily imported modules), and a step does not wait for that.
    """

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]: ...


class DatasetLoader(Protocol):
    """A dataset loader (``register_datasets``); its keyword parameters are the data entry's options."""

    def __call__(self, **options: Any) -> Iterable[Sample]: ...


def require(obj: Any, capability: str, why: str) -> None:
    """A clear error when a stage needs a capability the backend does not declare."""
    from lmmr1_core.errors import ConfigError

    if capability not in obj.capabilities:
        raise ConfigError(f"{why} needs a model backend with the {capability!r} capability; "
                          f"{type(obj).__name__} declares {sorted(obj.capabilities) or 'none'}")  # fmt: skip
