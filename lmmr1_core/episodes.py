"""Multi-turn episodes: the model and an env take turns; one training sequence per episode.

Each turn the model sees the whole conversation so far (every observation image kept, so
Qwen2.5-VL's multimodal positions are computed over the real sequence) and answers; the env steps
on the answer and its next observation is appended as a user turn. The training sequence is the
first prompt plus everything after it; the tokens the env wrote (its observations, the chat
headers) carry loss mask 0, so only the model's own turns are trained. An episode ends when the
env says done, after ``max_turns``, or when the next turn would pass ``max_episode_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lmmr1_core import Sample, load_env
from lmmr1_core.prompts import build_messages, last_images_view, observation_message
from lmmr1_core.secrets import resolve
from lmmr1_core.trainer import StageContext, generate


@dataclass
class Episode:
    env: Any
    sample: Sample
    messages: list[dict[str, Any]]
    prompt: Any  # the first turn's encoded prompt
    completion: list[int] = field(default_factory=list)  # all tokens after the first prompt
    loss_mask: list[float] = field(default_factory=list)  # 1 for the model's tokens, 0 for the env's
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    grids: list[torch.Tensor] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)  # index in ``completion`` of each turn's last model token
    done: bool = False
    success: bool = False
    units: list[tuple[Any, list[int]]] = field(default_factory=list)  # keep_images: (turn prompt, response)
    images: list[Any] = field(default_factory=list)  # the decoded images, for engines with their own processor
    rollout_logp: list[float] = field(default_factory=list)  # the engine's log-prob per completion token (env: 0)
    unit_logps: list[list[float]] = field(default_factory=list)  # keep_images: the same, per turn

    def _with_images(self, input_ids: list[int]):
        pix = torch.cat(self.pixel_values) if self.pixel_values else None
        grid = torch.cat(self.grids) if self.grids else None
        return type(self.prompt)(input_ids, pix, grid, list(self.images) or None)

    def context(self):
        """The whole conversation so far as one prompt (all images, in order)."""
        return self._with_images(self.prompt.input_ids + self.completion)

    def training_prompt(self):
        """The first prompt carrying every image of the episode (later ones sit in the completion)."""
        return self._with_images(self.prompt.input_ids)

    def _add_images(self, encoded) -> None:
        if encoded.pixel_values is not None:
            self.pixel_values.append(encoded.pixel_values)
            self.grids.append(encoded.image_grid_thw)
            self.images += encoded.images or []


def run_episodes(
    ctx: StageContext, samples: list[Sample], greedy: bool = False, with_logprobs: bool = False
) -> list[Episode]:
    """Play one episode per sample (its ``env_seed``), all episodes' turns generated as one batch.

    ``with_logprobs``: keep the rollout engine's log-prob of every sampled token (``Episode.rollout_logp``).
    """
    cfg, backend, spec = ctx.config, ctx.backend, ctx.config.env
    gen = cfg.generation
    eos = backend.tokenizer.eos_token_id
    episodes = []
    for sample in samples:
        env = load_env(spec.name, **resolve(spec.env_config(), f"env {spec.name}"))
        obs = env.reset(sample.meta["env_seed"])
        first = [observation_message(obs, spec.instruction)]
        messages = build_messages(first, cfg.prompt_template, cfg.system_prompt)
        ep = Episode(env, sample, messages, prompt=backend.encode(messages, obs.images, sample.id))
        ep._add_images(ep.prompt)
        episodes.append(ep)
    for _turn in range(spec.max_turns):
        active = [e for e in episodes if not e.done]
        if not active:
            break
        if spec.keep_images is None:
            contexts = [e.context() for e in active]
        else:  # each turn re-rendered with only the last k images: one training unit per turn
            contexts = []
            for e in list(active):
                prompt = backend.encode(*last_images_view(e.messages, spec.keep_images), e.sample.id)
                if len(prompt.input_ids) + gen.max_new_tokens > spec.max_episode_tokens:
                    e.done = True  # the context budget is spent
                    active.remove(e)
                    continue
                contexts.append(prompt)
        outs, logps = generate(ctx, contexts, greedy=greedy, with_logprobs=with_logprobs)
        logps = logps or [[0.0] * len(c) for c in outs]
        for ep, ids, lp, context in zip(active, outs, logps, contexts):
            text = backend.decode(ids)
            if spec.keep_images is not None:
                ep.units.append((context, ids))
                ep.unit_logps.append(list(lp))
            ep.completion += ids
            ep.loss_mask += [1.0] * len(ids)
            ep.rollout_logp += list(lp)
            ep.turn_ends.append(len(ep.completion) - 1)
            if not ids or ids[-1] not in backend.eos_ids:  # cut off: close the turn (not trained on)
                ep.completion.append(eos)
                ep.loss_mask.append(0.0)
                ep.rollout_logp.append(0.0)
            obs, reward, done, info = ep.env.step(text)
            ep.responses.append(text)
            ep.turn_rewards.append(float(reward))
            ep.success = bool(info.get("success", False))
            ep.messages.append({"role": "assistant", "content": text})
            if done or len(ep.responses) >= spec.max_turns:
                ep.done = True
                continue
            new = [observation_message(obs, spec.instruction)]
            if spec.keep_images is not None:
                ep.messages += new
                continue
            seg = backend.encode_continuation(ep.messages, new, obs.images, ep.sample.id)
            if len(ep.prompt.input_ids) + len(ep.completion) + len(seg.input_ids) > spec.max_episode_tokens:
                ep.done = True  # the context budget is spent
                continue
            ep.messages += new
            ep.completion += seg.input_ids
            ep.loss_mask += [0.0] * len(seg.input_ids)
            ep.rollout_logp += [0.0] * len(seg.input_ids)
            ep._add_images(seg)
    return episodes


def episode_reward(ep: Episode, how: str) -> float:
    return float(ep.success) if how == "success" else sum(ep.turn_rewards)


def dense_rewards(episodes: list[Episode], T: int) -> torch.Tensor:
    """``[B, T]``: each turn's env reward on that turn's last model token (``reward: per_turn``)."""
    out = torch.zeros(len(episodes), T)
    for i, ep in enumerate(episodes):
        for end, r in zip(ep.turn_ends, ep.turn_rewards):
            out[i, end] += r
    return out


def episode_record(ep: Episode) -> dict[str, Any]:
    """What ``episodes.jsonl`` keeps: enough to replay the episode (env, seed, responses)."""
    return {"id": ep.sample.id, "env_seed": ep.sample.meta["env_seed"], "responses": ep.responses,
            "turn_rewards": ep.turn_rewards, "return": sum(ep.turn_rewards), "success": ep.success}  # fmt: skip
