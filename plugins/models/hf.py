"""The Hugging Face backend: any causal LM or Qwen2.5-VL through ``from_pretrained``.

Generation with a KV-cached sampling loop (``decode.py``); log-probs with a plain forward. Prompts are left-padded and
completions right-padded, so every completion token sits in the last ``T`` positions and only
those logits are computed (``logits_to_keep``) — the vocabulary projection is the memory peak.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lmmr1_plugins.models.decode import sample, sampling_logits

from lmmr1_core.contracts import ADAPTER, CRITIC, DATA_PARALLEL, REFERENCE, ROLLOUT_WEIGHTS
from lmmr1_core.distributed import sum_gradients
from lmmr1_core.errors import ConfigError, DataError
from lmmr1_core.threads import PhaseThreads

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


@dataclass
class Prompt:
    """An encoded prompt: token ids plus the image tensors its placeholders stand for."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    images: list[Any] | None = None  # the decoded images, for engines that run their own processor (vLLM)


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


MAX_IMAGE_PIXELS = 8192 * 8192
"""Images larger than this are refused from their header, before decoding (a decompression bomb: a small file
that decodes to gigabytes). Far above what a VL processor keeps (Qwen2.5-VL: 12.8M pixels at most)."""


def _decoded(im, sample_id: str, what: str):
    if im.width * im.height > MAX_IMAGE_PIXELS:
        raise DataError(f"sample {sample_id}: {what} is {im.width}x{im.height} pixels, over the limit of "
                        f"{MAX_IMAGE_PIXELS:,} (refused before decoding)")  # fmt: skip
    return im.convert("RGB")


def _load_image(image: Any, sample_id: str):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray)):
        import io

        try:
            with Image.open(io.BytesIO(image)) as im:
                return _decoded(im, sample_id, "its embedded image")
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"sample {sample_id}: cannot read embedded image bytes: {exc}") from None
    path = str(image)
    if path.startswith("file://"):
        path = path[len("file://") :]
    try:
        with Image.open(path) as im:
            return _decoded(im, sample_id, f"image {path}")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"sample {sample_id}: image file not found: {path}") from None
    except Exception as exc:
        raise DataError(f"sample {sample_id}: cannot read image {path}: {exc}") from None


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    suppress: list[int] = (),
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(target)`` under the sampling distribution, ``[B, T]`` (and its entropy).

    That distribution is the tempered softmax without the ``suppress`` tokens (image placeholders are never
    sampled), so their logits are pushed far down, not to -inf: an env-written placeholder in a multi-turn
    completion must still get a finite (loss-masked) value.
    """
    logits = sampling_logits(logits, temperature, suppress, floor=-1e4)
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, entropy


def _adamw(params: list[torch.nn.Parameter], **kwargs: Any) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel (CPU, CUDA): one kernel per parameter instead of a dozen small
    ops each, which on a CPU cost more than the update itself (TRL's default optimizer is the fused one too)."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of a hub model (what ``from_pretrained`` read), without any download."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


class HFBackend:
    """Policy (and optional frozen reference) as a transformers model on one device.

    Under torchrun every rank holds a full copy (data parallel): each rolls out and trains its own rows,
    and the gradients are summed over the ranks before each step (``clip_grad_norm``), so the copies stay
    equal. No DDP wrapper: its backward hooks would make every rank run the same number of micro-batches.
    """

    capabilities = frozenset({CRITIC, REFERENCE, ROLLOUT_WEIGHTS, DATA_PARALLEL})

    def __init__(
        self,
        path: str,
        dtype: str = "auto",
        device: str = "auto",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        gradient_checkpointing: bool = False,
        lora: dict[str, Any] | None = None,
        tune_threads: bool = True,
        **unused: Any,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.path = self.checkpoint_dir = str(path)
        self.device = _pick_device(device)
        self.dtype = _pick_dtype(dtype, self.device)
        config = AutoConfig.from_pretrained(self.path)
        self.is_vl = getattr(config, "vision_config", None) is not None
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, padding_side="left")
        self.chat_template = self.tokenizer.chat_template or self._chat_template_json()
        self.processor = None
        self.image_processor = None
        if self.is_vl:
            from transformers import AutoModelForImageTextToText as AutoModel

            self._load_processors(min_pixels, max_pixels)
            self.image_token = "<|image_pad|>"
        else:
            from transformers import AutoModelForCausalLM as AutoModel
        # a sampled image placeholder would make the next forward fail (tokens != features)
        self.suppress = [
            i
            for i in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None))
            if i is not None
        ]
        self._load_model(AutoModel, lora)
        self.source_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            if self.peft is not None:  # frozen embeddings: checkpointed blocks still need an input with grad
                self.model.enable_input_require_grads()
        self.reference: torch.nn.Module | None = None
        self._reference_is_base = False  # LoRA: the reference is the model with its adapter off
        self.critic: torch.nn.Module | None = None
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.eos_ids.add(self.tokenizer.eos_token_id)
        self.tune_threads = tune_threads
        self._phases: dict[str, PhaseThreads] = {}  # made on first use: the CLI sets torch's threads after loading
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else next(iter(self.eos_ids))

    # -- loading ---------------------------------------------------------------------------------

    def _load_model(self, auto_model, lora: dict[str, Any] | None) -> None:
        """``self.model``; with ``lora`` an adapter is injected (``self.peft``: the ``PeftModel`` around it).

        A directory holding only an adapter (a LoRA checkpoint) loads the weights it names plus the adapter:
        it trains on with ``lora``, and is merged into the weights without. ``self.path`` is then those base
        weights (what a rollout engine loads; the KL reference).
        """
        from lmmr1_plugins.models import lora as lora_mod

        base = lora_mod.adapter_base(self.path)
        self.path = base or self.path
        self.model = auto_model.from_pretrained(self.path, dtype=self.dtype).to(self.device)
        self.peft = None
        if base is not None:
            self.peft = lora_mod.load_adapter(self.model, self.checkpoint_dir, trainable=lora is not None)
            if lora is None:
                self.model = self.peft.merge_and_unload()
                self.peft = None
        elif lora is not None:
            self.peft = lora_mod.wrap(self.model, lora, self.path)
        if self.peft is not None:
            self.capabilities = type(self).capabilities | {ADAPTER}

    def _chat_template_json(self) -> str | None:
        p = Path(self.path) / "chat_template.json"
        return json.loads(p.read_text())["chat_template"] if p.exists() else None

    def _load_processors(self, min_pixels: int | None, max_pixels: int | None) -> None:
        """AutoProcessor where torchvision imports; else tokenizer + PIL image processor.

        Qwen2.5-VL's AutoProcessor needs torchvision (its video processor), which has no CPU
        build for our torch; the fallback expands image placeholders itself, the same way.
        """
        from transformers import AutoImageProcessor, AutoProcessor

        kwargs = {k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v}
        self.pixel_bounds = kwargs  # a rollout engine must resize images the same way (vLLM: mm_processor_kwargs)
        if importlib.util.find_spec("torchvision") is not None:
            try:
                self.processor = AutoProcessor.from_pretrained(self.path, **kwargs)
                self.image_processor = self.processor.image_processor
                return
            except Exception:  # fall through to the torchvision-free path
                self.processor = None
        self.image_processor = AutoImageProcessor.from_pretrained(self.path, **kwargs)

    # -- prompts ---------------------------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, chat_template=self.chat_template
        )

    def encode(self, messages: list[dict[str, Any]], images: list[Any] = (), sample_id: str = "") -> Prompt:
        """Render with the chat template; each image placeholder becomes one token per feature."""
        return self._encode_text(self.render(messages), images, sample_id)

    def encode_continuation(
        self, history: list[dict[str, Any]], new: list[dict[str, Any]], images: list[Any] = (), sample_id: str = ""
    ) -> Prompt:
        """The tokens that follow an assistant turn (which ended at its EOS) when ``new`` messages are
        appended: the env's next observation and the next assistant header. Rendering the whole
        conversation and keeping the text after the last EOS keeps every template's own separators."""
        eos = self.tokenizer.eos_token
        before = self.tokenizer.apply_chat_template(history, tokenize=False, chat_template=self.chat_template)
        full = self.render(history + new)
        cut = before.rfind(eos) + len(eos)
        if cut < len(eos) or full[:cut] != before[:cut]:
            raise DataError(f"sample {sample_id}: the chat template renders earlier turns differently once a turn "
                            "is added; multi-turn rollouts need a template that only appends")  # fmt: skip
        return self._encode_text(full[cut:], images, sample_id)

    def _encode_text(self, text: str, images: list[Any], sample_id: str) -> Prompt:
        if not images:
            return Prompt(self.tokenizer(text, add_special_tokens=False).input_ids)
        if not self.is_vl:
            raise DataError(f"sample {sample_id}: has images but model {self.path} is text-only")
        n_slots = text.count(self.image_token)
        if n_slots != len(images):
            raise DataError(
                f"sample {sample_id}: {len(images)} images but {n_slots} image placeholders in its messages"
            )
        pil = [_load_image(im, sample_id) for im in images]
        if self.processor is not None:
            out = self.processor(text=[text], images=pil, return_tensors="pt")
            ids = out["input_ids"][0].tolist()
        else:
            out = self.image_processor(images=pil, return_tensors="pt")
            merge = getattr(self.image_processor, "merge_size", 2) ** 2
            parts = text.split(self.image_token)
            expanded = parts[0]
            for grid, part in zip(out["image_grid_thw"], parts[1:]):
                expanded += self.image_token * int(grid.prod().item() // merge) + part
            ids = self.tokenizer(expanded, add_special_tokens=False).input_ids
        return Prompt(ids, out["pixel_values"], out["image_grid_thw"], pil)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- batching --------------------------------------------------------------------------------

    def _batch(self, prompts: list[Prompt], completions: list[list[int]] | None = None) -> dict[str, Any]:
        """Left-pad prompts, right-pad completions, concatenate images in order."""
        plen = max(len(p.input_ids) for p in prompts)
        clen = max((len(c) for c in completions), default=0) if completions else 0
        ids = torch.full((len(prompts), plen + clen), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            n = len(p.input_ids)
            ids[i, plen - n : plen] = torch.tensor(p.input_ids)
            mask[i, plen - n : plen] = 1
            if completions:
                c = completions[i]
                ids[i, plen : plen + len(c)] = torch.tensor(c, dtype=torch.long)
                mask[i, plen : plen + len(c)] = 1
        batch: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        pix = [p.pixel_values for p in prompts if p.pixel_values is not None]
        if pix:
            batch["pixel_values"] = torch.cat(pix).to(self.device, self.dtype)
            batch["image_grid_thw"] = torch.cat([p.image_grid_thw for p in prompts if p.pixel_values is not None]).to(
                self.device
            )
            # Qwen2.5-VL (transformers 5) builds its 3-D positions from these; without them it silently
            # falls back to 1-D positions that ignore the image grid
            config = self.model.config
            kinds = (ids == config.image_token_id).int() + 2 * (ids == getattr(config, "video_token_id", -1)).int()
            batch["mm_token_type_ids"] = kinds.to(self.device)
        if not self.is_vl:  # VL models derive (multimodal) positions from the mask themselves
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        return batch

    @torch.no_grad()
    def generate(
        self,
        prompts: list[Prompt],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
        return_logprobs: bool = False,
    ) -> list[list[int]] | tuple[list[list[int]], list[list[float]]]:
        """Sample (or greedily decode) one completion per prompt; each ends at (and includes) its EOS token.

        ``return_logprobs``: also each sampled token's log-prob under the sampling distribution (after the
        temperature, before top-p), the same quantity the vllm engine reports.
        """
        batch = self._batch(prompts)
        self.model.eval()
        completions, logps = sample(
            self.model, batch, max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy,
            eos_ids=self.eos_ids, suppress=self.suppress, prefill_threads=self._threads("prefill"),
            decode_threads=self._threads("decode"),
        )  # fmt: skip
        return (completions, logps) if return_logprobs else completions

    def _threads(self, phase: str) -> PhaseThreads:
        """This phase's thread tuner (CPU); on a GPU one that leaves torch's thread count alone."""
        if phase not in self._phases:
            full = torch.get_num_threads() if self.device.type == "cpu" else None
            self._phases[phase] = PhaseThreads(full, tune=self.tune_threads)
        return self._phases[phase]

    def rollout_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a rollout engine loads, under Hugging Face names (tied weights included); with LoRA the
        adapter merged in."""
        if self.peft is not None:
            from lmmr1_plugins.models.lora import merged_state_dict

            return merged_state_dict(self.model)
        return self.model.state_dict()

    def logprobs(
        self,
        prompts: list[Prompt],
        completions: list[list[int]],
        temperature: float = 1.0,
        reference: bool = False,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs of each completion: ``(logp [B, T], mask [B, T], entropy | None)``."""
        if reference and self.reference is None and self._reference_is_base:
            with self.peft.disable_adapter():  # LoRA: the base weights are the reference
                return self._logprobs(self.model, prompts, completions, temperature, with_entropy)
        model = self.reference if reference else self.model
        if model is None:
            raise RuntimeError("no reference model: call make_reference() first")
        return self._logprobs(model, prompts, completions, temperature, with_entropy)

    def _logprobs(self, model, prompts, completions, temperature: float, with_entropy: bool):
        batch = self._batch(prompts, completions)
        T = max(len(c) for c in completions)
        phase = "forward" if torch.is_grad_enabled() else "scoring"  # with a backward to follow, or without
        forward = lambda: model(**batch, use_cache=False, logits_to_keep=T + 1)  # noqa: E731
        logits = self._threads(phase).run(forward, batch["input_ids"].numel()).logits[:, :-1]
        mask = batch["attention_mask"][:, -T:].float()
        logp, entropy = token_logprobs(logits, batch["input_ids"][:, -T:], temperature, self.suppress, with_entropy)
        return logp * mask, mask, entropy

    # -- training --------------------------------------------------------------------------------

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def close(self) -> None:
        """Nothing beyond what garbage collection frees."""

    def make_reference(self, path: str | None = None) -> None:
        """A frozen model for the KL term: the weights at ``path``, or a copy of the current policy. With LoRA
        and ``path`` the base weights, no copy: the base is the model with its adapter off."""
        if self.peft is not None and (path is None or Path(path) == Path(self.path)):
            self._reference_is_base = True
            return
        if path is None or Path(path) == Path(self.path):
            self.reference = copy.deepcopy(self.model)
        else:
            self.reference = type(self.model).from_pretrained(str(path), dtype=self.dtype).to(self.device)
        self.reference.eval().requires_grad_(False)

    def make_optimizer(self, lr: float, weight_decay: float, betas: tuple[float, float], freeze: list[str] = ()):
        """AdamW over the trainable parameters; names starting with a ``freeze`` prefix stay fixed."""
        names = [n for n, _ in self.model.named_parameters()]
        for prefix in freeze:
            if not any(n.startswith(prefix) for n in names):
                near = sorted({n.split(".")[0] + "." + n.split(".")[1] for n in names if "." in n})
                raise ConfigError(f"optim.freeze: no parameter name starts with {prefix!r} (top-level: {near})")
        for n, p in self.model.named_parameters():
            if any(n.startswith(prefix) for prefix in freeze):
                p.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        return _adamw(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))

    # -- critic (ppo) ----------------------------------------------------------------------------

    def make_critic(self, lr: float) -> None:
        """A value model: a copy of the policy's weights plus a zero-initialised linear value head."""
        self.critic = copy.deepcopy(self.model).train().requires_grad_(True)
        cfg = self.model.config
        hidden = getattr(cfg, "text_config", cfg).hidden_size
        self.value_head = torch.nn.Linear(hidden, 1, device=self.device, dtype=torch.float32)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        params = [*self.critic.parameters(), *self.value_head.parameters()]
        self.critic_optimizer = _adamw(params, lr=lr)

    def values(self, prompts: list[Prompt], completions: list[list[int]]) -> torch.Tensor:
        """``V(s_t)`` for each completion token: the state before the token is emitted, ``[B, T]``."""
        batch = self._batch(prompts, completions)
        T = max(len(c) for c in completions)
        out = self.critic(**batch, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1][:, -(T + 1) : -1].float()
        return self.value_head(hidden).squeeze(-1) * batch["attention_mask"][:, -T:].float()

    def critic_step(self, max_norm: float) -> float:
        params = [*self.critic.parameters(), *self.value_head.parameters()]
        sum_gradients([p for p in params if p.requires_grad])
        norm = float(torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm))
        self.critic_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)
        return norm

    def critic_state(self) -> dict[str, Any]:
        return {
            "model": self.critic.state_dict(),
            "head": self.value_head.state_dict(),
            "optimizer": self.critic_optimizer.state_dict(),
        }

    def load_critic_state(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["model"])
        self.value_head.load_state_dict(state["head"])
        self.critic_optimizer.load_state_dict(state["optimizer"])

    def data_parallel(self) -> tuple[int, int, Any]:
        """Every rank is a replica (the default process group joins them)."""
        import torch.distributed as dist

        if not dist.is_initialized():
            return 0, 1, None
        return dist.get_rank(), dist.get_world_size(), None

    def clip_grad_norm(self, max_norm: float) -> float:
        sum_gradients([p for p in self.model.parameters() if p.requires_grad])  # torchrun: over the replicas
        params = [p for p in self.model.parameters() if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0

    # -- saving ----------------------------------------------------------------------------------

    def save(self, out_dir: str | Path) -> None:
        """Write an HF checkpoint that keeps the source's config, tokenizer and processor files verbatim.

        vLLM and transformers then load it exactly as they load the original checkpoint. With LoRA: the
        adapter (``adapter/``) beside those files, no weights; ``save_merged`` adds the merged weights.
        """
        if out_dir is None:  # torchrun, not rank 0: the replicas are equal, rank 0 writes
            return
        out_dir = Path(out_dir)
        if self.peft is not None:
            from lmmr1_plugins.models.lora import save_adapter

            save_adapter(self.peft, out_dir, self.path)
            self.model.config.save_pretrained(str(out_dir))
        else:
            self._save_weights(out_dir, self.model.state_dict())
        self._copy_source_files(out_dir)

    def save_merged(self, out_dir: str | Path) -> None:
        """The base weights with the adapter folded in, as a plain HF checkpoint (``final/``)."""
        if out_dir is None:
            return
        from lmmr1_plugins.models.lora import merged_state_dict

        self._save_weights(Path(out_dir), merged_state_dict(self.model) if self.peft is not None else None)
        self._copy_source_files(Path(out_dir))

    def _save_weights(self, out_dir: Path, state: dict[str, torch.Tensor] | None) -> None:
        state = self.model.state_dict() if state is None else state
        if isinstance(self.source_dtype, torch.dtype) and self.source_dtype != self.dtype:
            state = {k: v.to(self.source_dtype) for k, v in state.items()}
        self.model.save_pretrained(str(out_dir), state_dict=state)

    def _copy_source_files(self, out_dir: Path) -> None:
        src = Path(self.path)
        if not src.is_dir():  # a hub id: its files in the local cache are the source, copied as they are
            src = _hub_snapshot(self.path) or src
        if src.is_dir():  # the model card (README.md) describes the source: each final/ gets its own
            for f in src.iterdir():
                if (f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not f.name.startswith(".")
                        and f.name != "README.md"):  # fmt: skip
                    shutil.copy2(f, out_dir / f.name)
        else:  # a hub id: save what we loaded
            self.tokenizer.save_pretrained(str(out_dir))
            if self.processor is not None:
                self.processor.save_pretrained(str(out_dir))
            elif self.image_processor is not None:
                self.image_processor.save_pretrained(str(out_dir))
