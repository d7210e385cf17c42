"""``MegatronBackend``: the language model on megatron-core (TP/PP/DP), everything else through ``HFBackend``.

Who does what:
- an ``HFBackend`` (one per rank) holds the tokenizer, the image processor, the chat template, the
  vision tower (replicated, trained with the rest), rollout generation and HF-format saving;
- a megatron-core ``GPTModel`` (this rank's tensor/pipeline shard) computes log-probs and is trained.
  Image features from the HF vision tower replace the image-token embeddings of its decoder input;
  3-D multimodal positions come from the HF model's own ``get_rope_index``.

Weights flow one way: after each optimizer step the HF language weights are stale; before the next
``generate`` or ``save`` each data-parallel replica's shards are gathered and converted into its first
rank's HF model (the replica's leader). The leader generates (with the hf engine) and broadcasts the
completions and its RNG state over the replica's model-parallel group, so its TP/PP ranks train on the
same rows and draw the same random numbers afterwards. Rank 0 alone writes files.

Data parallel: ``world_size / (TP x PP)`` model replicas (``data_parallel()``). Under torchrun the core
gives each replica its own prompt groups (``lmmr1_core.distributed``); ``logprobs`` and ``values`` see
only those rows, and ``clip_grad_norm`` sums the gradients over the replicas before the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lmmr1_plugins.models.hf import HFBackend, Prompt, _pick_device, token_logprobs
from lmmr1_plugins.models.megatron import pipeline
from lmmr1_plugins.models.megatron.convert import from_megatron, hf_lm_params, to_megatron
from lmmr1_plugins.models.megatron.model import build_gpt, lm_shape
from lmmr1_plugins.models.megatron.parallel import init_parallel
from lmmr1_plugins.models.megatron.train import MegatronAdamW, clip_grad_norm

from lmmr1_core.contracts import CRITIC, DATA_PARALLEL, REFERENCE, ROLLOUT_WEIGHTS
from lmmr1_core.errors import ConfigError


class MegatronBackend:
    """Policy (and optional frozen reference) as megatron-core shards; see the module docstring."""

    capabilities = frozenset({CRITIC, REFERENCE, ROLLOUT_WEIGHTS, DATA_PARALLEL})

    def __init__(
        self,
        path: str,
        dtype: str = "auto",
        device: str = "auto",
        tensor_parallel: int = 1,
        pipeline_parallel: int = 1,
        **hf_kwargs: Any,
    ) -> None:
        from megatron.core import parallel_state as mpu

        if hf_kwargs.get("lora") is not None:
            raise ConfigError("model.lora: the megatron backend trains all weights (megatron-core has no peft "
                              "adapters); for LoRA use `model.backend: hf` (or drop `model.lora`)")  # fmt: skip
        self.path = str(path)
        init_parallel(tensor_parallel, pipeline_parallel, _pick_device(device))
        self.hf = HFBackend(path, dtype=dtype, device=device, **hf_kwargs)
        self.device, self.dtype = self.hf.device, self.hf.dtype
        self.tp, self.pp = tensor_parallel, pipeline_parallel
        self.tp_rank = mpu.get_tensor_model_parallel_rank()
        self.pp_rank = mpu.get_pipeline_model_parallel_rank()
        self.first, self.last = mpu.is_pipeline_first_stage(), mpu.is_pipeline_last_stage()
        self.dp, self.dp_rank = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()
        self.dp_group = mpu.get_data_parallel_group()
        self.rank = dist.get_rank()
        self.mp_group = mpu.get_model_parallel_group()
        self.leader_rank = dist.get_global_rank(self.mp_group, 0)  # generates and holds the HF weights
        self.leader = self.rank == self.leader_rank
        self.shape = lm_shape(self.hf.model.config, tensor_parallel)
        self.gpt = build_gpt(self.shape, tensor_parallel, pipeline_parallel, self.dtype, self.device)
        self.load_hf_weights(self.gpt, hf_lm_params(self.hf.model))
        for p in hf_lm_params(self.hf.model).values():  # trained in megatron; refreshed from it
            p.requires_grad_(False)
        self.model = self.gpt
        self.reference: tuple[torch.nn.Module, torch.nn.Module | None] | None = None
        self.critic: torch.nn.Module | None = None  # ppo's value model (make_critic): a GPTModel
        self._anchor = torch.zeros(0, device=self.device, requires_grad=True)  # see pipeline.RecvForward
        self._hf_stale = False

    # -- what the loops use from the hf side ------------------------------------------------------

    @property
    def tokenizer(self):
        return self.hf.tokenizer

    @property
    def eos_ids(self) -> set[int]:
        return self.hf.eos_ids

    def encode(self, messages: list[dict[str, Any]], images: list[Any] = (), sample_id: str = "") -> Prompt:
        return self.hf.encode(messages, images, sample_id)

    def encode_continuation(self, history, new, images=(), sample_id: str = "") -> Prompt:
        return self.hf.encode_continuation(history, new, images, sample_id)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids)

    # -- weights ---------------------------------------------------------------------------------

    def load_hf_weights(self, gpt: torch.nn.Module, hf_state: dict[str, torch.Tensor]) -> None:
        """Fill ``gpt`` (this rank's shard) from a full HF language-model state."""
        hf_state = {k: v.detach() for k, v in hf_state.items()}
        shard = to_megatron(hf_state, self.shape, self.tp_rank, self.tp, self.pp_rank, self.pp)
        own = {k for k in gpt.state_dict() if not k.endswith("_extra_state")}
        if set(shard) != own:
            raise RuntimeError(
                f"conversion mismatch: missing {sorted(own - set(shard))}, extra {sorted(set(shard) - own)}"
            )
        with torch.no_grad():
            for name, p in gpt.named_parameters():
                p.copy_(shard[name])

    def gather_hf_state(self, gpt: torch.nn.Module | None = None) -> dict[str, torch.Tensor] | None:
        """The full HF language-model state of ``gpt`` (the policy by default), merged from this replica's
        shards: on the replica's leader (its first rank; None elsewhere), on each of its ranks with pipeline
        parallel 1. Rank 0 leads the first replica.

        Collective over the ranks of each replica (the model-parallel group)."""
        from megatron.core import parallel_state as mpu

        gpt = self.gpt if gpt is None else gpt
        local = {k: v.detach() for k, v in gpt.state_dict().items() if not k.endswith("_extra_state")}
        shards: list[dict[str, torch.Tensor]] = [local]
        if self.tp > 1:
            group = mpu.get_tensor_model_parallel_group()
            shards = [{} for _ in range(self.tp)]
            for key in sorted(local):
                parts = [torch.empty_like(local[key]) for _ in range(self.tp)]
                dist.all_gather(parts, local[key].contiguous(), group=group)
                for i, part in enumerate(parts):
                    shards[i][key] = part
        if self.pp == 1:  # every rank of the replica holds every shard now: each converts (a rollout engine
            return from_megatron(shards, self.shape, 0, 1)  # with the same tensor_parallel loads on each)
        part = from_megatron(shards, self.shape, self.pp_rank, self.pp) if self.tp_rank == 0 else {}
        # each stage's tensor-rank-0 sends its HF tensors to the replica's leader
        group = mpu.get_model_parallel_group()
        metas: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(metas, {k: (tuple(v.shape), v.dtype) for k, v in part.items()}, group=group)
        full = dict(part) if self.leader else None
        for src, meta in enumerate(metas):
            if src == 0 or not meta:
                continue
            src_rank = dist.get_global_rank(group, src)
            for key in sorted(meta):
                if self.rank == src_rank:
                    dist.send(part[key], self.leader_rank)
                elif self.leader:
                    buf = torch.empty(meta[key][0], dtype=meta[key][1], device=self.device)
                    dist.recv(buf, src_rank)
                    full[key] = buf
        return full

    def _sync_hf(self) -> None:
        """Refresh rank 0's HF language weights from the megatron shards, if a step changed them."""
        if not self._hf_stale:
            return
        state = self.gather_hf_state()
        if state is not None:
            params = hf_lm_params(self.hf.model)
            with torch.no_grad():
                for key, value in state.items():
                    params[key].copy_(value)
        self._hf_stale = False

    # -- rollouts --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 greedy: bool = False, return_logprobs: bool = False):  # fmt: skip
        """The replica's leader generates with the HF model (weights synced from megatron); every rank of
        the replica gets its result (they all pass the same prompts)."""
        self._sync_hf()
        args = (prompts, max_new_tokens, temperature, top_p, greedy, return_logprobs)
        if dist.get_world_size(self.mp_group) == 1:
            return self.hf.generate(*args)
        payload: list[Any] = [None]
        if self.leader:
            completions = self.hf.generate(*args)
            cuda_rng = torch.cuda.get_rng_state() if self.device.type == "cuda" else None
            payload = [(completions, torch.get_rng_state(), cuda_rng)]
        device = self.device if self.device.type == "cuda" else None
        dist.broadcast_object_list(payload, self.leader_rank, group=self.mp_group, device=device)
        completions, cpu_rng, cuda_rng = payload[0]
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)
        return completions

    def data_parallel(self) -> tuple[int, int, Any]:
        return self.dp_rank, self.dp, self.dp_group

    @property
    def is_vl(self) -> bool:
        return self.hf.is_vl

    def rollout_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights under HF names, for a rollout engine: every rank of the replica holds them with
        pipeline parallel 1 (an engine per rank, or one per replica with the same tensor_parallel)."""
        self._sync_hf()
        return self.hf.rollout_state_dict()

    # -- log-probs -------------------------------------------------------------------------------

    def positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[3, B, S]`` rotary positions: Qwen2.5-VL's 3-D ones for image tokens, else the token index
        among non-padding tokens (the same position in all three rows)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.shape.is_vl and "image_grid_thw" in batch:
            cfg = self.hf.model.config
            types = (ids == cfg.image_token_id).int() + 2 * (ids == cfg.video_token_id).int()
            pos, _ = self.hf.model.model.get_rope_index(
                ids, mm_token_type_ids=types, image_grid_thw=batch["image_grid_thw"], attention_mask=mask
            )
            return pos
        return (mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)

    def _decoder_input(self, gpt, visual, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings ``[S, B, H]`` with the vision tower's features at the image-token positions."""
        emb = gpt.embedding(input_ids=batch["input_ids"], position_ids=None)
        if "pixel_values" not in batch:
            return emb
        feats = visual(batch["pixel_values"].to(visual.dtype), grid_thw=batch["image_grid_thw"]).pooler_output
        image = batch["input_ids"] == self.hf.model.config.image_token_id  # [B, S]
        if int(image.sum()) != feats.shape[0]:
            raise RuntimeError(f"{int(image.sum())} image tokens but {feats.shape[0]} image features")
        emb = emb.transpose(0, 1).clone()  # batch-major, the order the features come in
        emb[image] = feats.to(emb.dtype)
        return emb.transpose(0, 1).contiguous()

    def logits(self, prompts: list[Prompt], completions: list[list[int]], keep: int,
               reference: bool = False) -> torch.Tensor | None:  # fmt: skip
        """Logits ``[B, keep, V]`` of the last ``keep`` positions, on the last pipeline stage (None elsewhere).

        Not split over data-parallel replicas: each computes the whole batch (``logprobs`` splits)."""
        gpt, visual = self.reference if reference else (self.gpt, self._visual())
        batch = self.hf._batch(prompts, completions)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        pos = self.positions(batch)
        rotary = gpt.rotary_pos_emb(pos, gpt.mrope_section)
        pad = ~mask.bool()[:, None, None, :]  # [B, 1, 1, S] key padding; the causal part is SDPAttention's
        if self.first:
            hidden = self._decoder_input(gpt, visual, batch)
        else:
            shape = (ids.shape[1], ids.shape[0], self.shape.hidden)
            gpt.decoder.set_input_tensor(pipeline.RecvForward.apply(self._anchor, shape, self.dtype))
            hidden = None
        out = gpt.decoder(hidden_states=hidden, attention_mask=pad, rotary_pos_emb=rotary)
        if not self.last:
            self._stage_out = out
            return None
        weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
        logits, _ = gpt.output_layer(out[-keep:], weight=weight)
        return logits.transpose(0, 1)[..., : self.shape.vocab]

    def logprobs(
        self,
        prompts: list[Prompt],
        completions: list[list[int]],
        temperature: float = 1.0,
        reference: bool = False,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs of each completion: ``(logp [B, T], mask [B, T], entropy | None)``, the same
        values on every rank of the replica (each replica is given its own rows by the core)."""
        if reference and self.reference is None:
            raise RuntimeError("no reference model: call make_reference() first")
        T = max(len(c) for c in completions)
        mask = torch.tensor([[1.0] * len(c) + [0.0] * (T - len(c)) for c in completions], device=self.device)
        logp, entropy = self._replica_logprobs(prompts, completions, temperature, reference, with_entropy)
        return logp, mask, entropy

    def _replica_logprobs(self, prompts: list[Prompt], completions: list[list[int]], temperature: float,
                          reference: bool, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """``(logp, entropy | None)`` ``[b, t]`` of these rows through this replica's TP/PP ranks, the same
        (differentiable) tensor on each of them."""
        T = max(len(c) for c in completions)
        B = len(completions)
        mask = torch.tensor([[1.0] * len(c) + [0.0] * (T - len(c)) for c in completions], device=self.device)
        logits = self.logits(prompts, completions, T + 1, reference)
        entropy = None
        if self.last:
            targets = torch.tensor([c + [0] * (T - len(c)) for c in completions], device=self.device)
            # the hf backend's scoring: tempered, image placeholders outside the distribution
            logp, entropy = token_logprobs(logits[:, :-1], targets, temperature, self.hf.suppress, with_entropy)
            logp = logp * mask
            if entropy is not None:  # zero at padding, like logp: the same values however the batch is split
                entropy = entropy * mask
            if self.pp > 1:
                pipeline.broadcast_from_last(logp.detach().clone())
        else:
            logp = pipeline.SendForward.apply(self._stage_out, (B, T))
            self._stage_out = None
        if self.pp > 1 and with_entropy:
            entropy = entropy if entropy is not None else torch.empty(B, T, device=self.device)
            pipeline.broadcast_from_last(entropy)
        return logp, entropy

    # -- training --------------------------------------------------------------------------------

    def _visual(self):
        return getattr(self.hf.model.model, "visual", None)

    def train(self) -> None:
        self.gpt.train()
        if self._visual() is not None:
            self._visual().train()

    def eval(self) -> None:
        self.gpt.eval()
        self.hf.eval()

    def close(self) -> None:
        """The process group stays: later stages of the run reuse it."""

    def make_reference(self, path: str | None = None) -> None:
        """A frozen copy for the KL term: the weights at ``path`` (or the current policy), as megatron shards
        plus that checkpoint's vision tower."""
        import copy

        self.hf.make_reference(path)  # a frozen HF model: its vision tower and language weights
        ref_gpt = build_gpt(self.shape, self.tp, self.pp, self.dtype, self.device)
        if path is None:
            ref_gpt.load_state_dict(self.gpt.state_dict())
        else:
            self.load_hf_weights(ref_gpt, hf_lm_params(self.hf.reference))
        ref_gpt.eval().requires_grad_(False)
        visual = getattr(self.hf.reference.model, "visual", None)
        self.reference = (ref_gpt, copy.deepcopy(visual) if visual is not None else None)
        self.hf.reference = None

    def make_optimizer(self, lr: float, weight_decay: float, betas: tuple[float, float], freeze: list[str] = ()):
        """AdamW over the megatron shard plus the (HF) vision tower; ``freeze`` prefixes name vision
        parameters by their HF names (``model.visual``...) — the language model trains whole."""
        visual = {f"model.visual.{n}": p for n, p in (self._visual().named_parameters() if self._visual() else [])}
        for prefix in freeze:
            if not any(n.startswith(prefix) for n in visual):
                raise ConfigError(f"optim.freeze: {prefix!r}: the megatron backend freezes vision-tower parameters "
                                  "only (names starting with 'model.visual')")  # fmt: skip
        for n, p in visual.items():
            if any(n.startswith(prefix) for prefix in freeze):
                p.requires_grad_(False)
        params = [p for p in self.gpt.parameters() if p.requires_grad]
        params += [p for p in visual.values() if p.requires_grad]
        optimizer = MegatronAdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
        optimizer.register_step_post_hook(lambda *_: setattr(self, "_hf_stale", True))
        return optimizer

    def clip_grad_norm(self, max_norm: float) -> float:
        return clip_grad_norm(self.gpt, self._visual() if self.first else None, max_norm)

    # -- critic (ppo) ----------------------------------------------------------------------------

    def make_critic(self, lr: float) -> None:
        """A value model, as the hf backend's: a copy of the policy (its megatron shards and a copy of its
        vision tower, all trained) plus a zero-initialised fp32 linear value head over the final hidden
        state, replicated on every rank. Pipeline parallel 1 only."""
        import copy

        if self.pp > 1:
            raise ConfigError("algorithm ppo: the megatron backend's critic needs model.pipeline_parallel: 1 "
                              f"(got {self.pp}); tensor and data parallel work")  # fmt: skip
        self.critic = build_gpt(self.shape, self.tp, self.pp, self.dtype, self.device)
        self.critic.load_state_dict(self.gpt.state_dict())
        self.critic.train().requires_grad_(True)
        visual = self._visual()
        self.critic_visual = copy.deepcopy(visual).train().requires_grad_(True) if visual is not None else None
        self.value_head = torch.nn.Linear(self.shape.hidden, 1, device=self.device, dtype=torch.float32)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        params = [*self.critic.parameters(), *self._critic_extra().parameters()]
        self.critic_optimizer = MegatronAdamW(params, lr=lr)

    def _critic_extra(self) -> torch.nn.Module:
        """The critic's replicated (not tensor-split) parts: its vision tower and the value head."""
        return torch.nn.ModuleList([m for m in (self.critic_visual, self.value_head) if m is not None])

    def values(self, prompts: list[Prompt], completions: list[list[int]]) -> torch.Tensor:
        """``V(s_t)`` for each completion token: the value head over the critic's final (normed) hidden
        state before the token, ``[B, T]``, the same on every rank of the replica (the critic's gradients
        are summed over the replicas in ``critic_step``)."""
        if self.critic is None:
            raise RuntimeError("no critic: call make_critic() first")
        return self._replica_values(prompts, completions)

    def _replica_values(self, prompts: list[Prompt], completions: list[list[int]]) -> torch.Tensor:
        gpt = self.critic
        T = max(len(c) for c in completions)
        batch = self.hf._batch(prompts, completions)
        mask = batch["attention_mask"]
        rotary = gpt.rotary_pos_emb(self.positions(batch), gpt.mrope_section)
        pad = ~mask.bool()[:, None, None, :]
        hidden = self._decoder_input(gpt, self.critic_visual, batch)
        out = gpt.decoder(hidden_states=hidden, attention_mask=pad, rotary_pos_emb=rotary)  # [S, B, H], normed
        hidden = out[-(T + 1) : -1].transpose(0, 1).float()  # full size on every tensor rank
        return self.value_head(hidden).squeeze(-1) * mask[:, -T:].float()

    def critic_step(self, max_norm: float) -> float:
        """Sum the critic's gradients over the data-parallel replicas, clip by their global norm, step."""
        norm = clip_grad_norm(self.critic, self._critic_extra(), max_norm)
        self.critic_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)
        return norm

    def critic_state(self) -> dict[str, Any]:
        """Collective (every rank calls it, as ``optimizer.state_dict``): the critic's language weights
        under HF names (full, on rank 0), its vision tower, value head and optimizer state."""
        return {
            "model": self.gather_hf_state(self.critic),
            "visual": self.critic_visual.state_dict() if self.critic_visual is not None else None,
            "head": self.value_head.state_dict(),
            "optimizer": self.critic_optimizer.state_dict(),
        }

    def load_critic_state(self, state: dict[str, Any]) -> None:
        self.load_hf_weights(self.critic, state["model"])
        if self.critic_visual is not None:
            self.critic_visual.load_state_dict(state["visual"])
        self.value_head.load_state_dict(state["head"])
        self.critic_optimizer.load_state_dict(state["optimizer"])

    # -- saving ----------------------------------------------------------------------------------

    def save(self, out_dir: str | Path | None) -> None:
        """An HF checkpoint (the hf backend, eval and vllm read it). Collective: every rank calls it;
        rank 0 writes to ``out_dir`` (the others pass None)."""
        self._hf_stale = True  # the gather is collective: every rank takes part, whatever it did before
        self._sync_hf()
        if self.rank == 0 and out_dir is not None:
            self.hf.save(out_dir)
        if dist.get_world_size() > 1:
            dist.barrier()  # the next stage may load these files on every rank
