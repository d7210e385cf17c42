"""Everything lmmr1 can only check on a GPU, in one run of under 8 minutes: the first thing to run whenever a
GPU machine is available (``bash benchmarks/gpu_check.sh``, which installs the missing wheels first).

    python benchmarks/gpu_check.py [--device auto|cpu|cuda] [--out DIR] [--skip-bench] [--budget SECONDS]

Checks, each on a tiny model built here (no download):

- hf vs megatron scoring: the two backends' log-probs and entropies of the same VL batch (images of two
  sizes, left padding, 3-D positions, a text-only row) in bf16;
- one megatron bf16 step: loss, gradient norm and AdamW step finite, log-probs moved;
- hf vs megatron after the step: megatron's weights saved as an HF checkpoint and loaded by the hf backend
  give its log-probs, and greedy generation (megatron syncs its shards into its HF generator) gives the
  same tokens;
- the CUDA RNG through a checkpoint: written with the trainer state, scrambled, read back, the same draws;
- a resumed rl stage equals an uninterrupted one (sampling on the device: the restored RNG at work);
- AutoProcessor (torchvision) against the torchvision-free image path (``processor`` unset: the slow image
  processor plus our placeholder expansion): identical ``input_ids``, ``image_grid_thw``, ``pixel_values``;

then the 3B-shaped step (benchmarks/megatron_step.py: Qwen2.5-VL-3B shapes, random bf16 weights; text
prompts, and prompts with a 448x448 image) on both backends, and one table: check, result, figure.

``--device cpu`` (automatic without CUDA) runs the same checks in fp32 on the CPU where they can run, the
benchmark on the tiny model, and marks the rest "skipped: needs CUDA" (or torchvision): it proves the
script's logic on a machine without a GPU. ``--out DIR`` also writes the table and the raw figures there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class Skip(Exception):
    """A check that cannot run on this machine: ``Skip(result, why)``."""


def _vl_batch(backend):
    """Two prompts with images of different sizes and one text-only prompt, with completions of 2-5 tokens."""
    from PIL import Image

    def msgs(text):
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    prompts = [
        backend.encode(msgs("what is the red box"), [Image.new("RGB", (56, 84), (200, 30, 30))]),
        backend.encode(msgs("how many"), [Image.new("RGB", (112, 56), (20, 30, 230))]),
        backend.encode([{"role": "user", "content": "what is 2 plus 3"}]),
    ]
    return prompts, [[10, 11, 12, 13, 14], [15, 16], [17, 18, 19]]


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a.float() - b.float()) * mask).abs().max())


class Checks:
    """The checks share one tiny VL model directory and one megatron backend (process groups are per process)."""

    def __init__(self, device: str, work: Path) -> None:
        self.device, self.work = device, work
        self.cuda = device == "cuda"
        self.dtype = "bfloat16" if self.cuda else "float32"
        self.tol = 5e-2 if self.cuda else 1e-4  # bf16 kernels differ in rounding; fp32 ones agree to 1e-4
        self._model: Path | None = None
        self._mg = None

    @property
    def model(self) -> Path:
        if self._model is None:
            from lmmr1_plugins.models.tiny import build_tiny_model

            self._model = build_tiny_model(self.work / "tiny-vl", "vl", hidden=128, layers=2, seed=0)
        return self._model

    def megatron(self):
        if self._mg is None:
            try:
                import megatron.core  # noqa: F401
            except ImportError as exc:
                raise Skip("skipped: no megatron-core", f"{exc}; see benchmarks/gpu_wheels.sh") from None
            from lmmr1_plugins.models.megatron.backend import MegatronBackend

            self._mg = MegatronBackend(str(self.model), dtype=self.dtype, device=self.device)
        return self._mg

    # -- the checks ------------------------------------------------------------------------------

    def environment(self) -> tuple[str, str]:
        import importlib

        missing = []
        for mod in ("megatron.core", "math_verify", "pydantic", "datasets", "torchvision", "lmmr1_plugins"):
            try:
                importlib.import_module(mod)
            except Exception as exc:  # a wheel built for another torch fails with other errors than ImportError
                missing.append(f"{mod} ({type(exc).__name__})")
        from lmmr1_core.plugins import registry

        models = sorted(registry("models"))
        gpu = torch.cuda.get_device_name() if self.cuda else "no CUDA"
        result = "ok" if not missing else "missing: " + ", ".join(missing)
        return result, f"torch {torch.__version__}, {gpu}, backends {','.join(models)}"

    def scoring_parity(self) -> tuple[str, str]:
        mg = self.megatron()
        prompts, completions = _vl_batch(mg)
        with torch.no_grad():
            logp, mask, ent = mg.logprobs(prompts, completions, with_entropy=True)
            ref, ref_mask, ref_ent = mg.hf.logprobs(prompts, completions, with_entropy=True)
        assert torch.equal(mask, ref_mask)
        d_logp, d_ent = _max_diff(logp, ref, mask), _max_diff(ent, ref_ent, mask)
        ok = d_logp < self.tol and d_ent < self.tol
        figure = f"max |d logp| {d_logp:.2e}, |d entropy| {d_ent:.2e} ({self.dtype}, tol {self.tol:g})"
        return ("PASS" if ok else "FAIL"), figure

    def megatron_step(self) -> tuple[str, str]:
        mg = self.megatron()
        prompts, completions = _vl_batch(mg)
        optimizer = mg.make_optimizer(1e-3, 0.0, (0.9, 0.999))
        mg.train()
        with torch.no_grad():
            before, mask, _ = mg.logprobs(prompts, completions)
        t0 = time.perf_counter()
        logp, mask, _ = mg.logprobs(prompts, completions)
        loss = -(logp * mask).sum() / mask.sum()
        loss.backward()
        norm = mg.clip_grad_norm(1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            after, _, _ = mg.logprobs(prompts, completions)
        moved = _max_diff(after, before, mask)
        finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(after).all()) and norm == norm
        ok = finite and norm > 0 and moved > 0
        self.stepped = True
        return ("PASS" if ok else "FAIL"), (f"loss {loss.item():.4f}, grad norm {norm:.3g}, logp moved {moved:.2e}, "
                                            f"{seconds:.2f} s ({self.dtype})")

    def parity_after_step(self) -> tuple[str, str]:
        from lmmr1_plugins.models.hf import HFBackend

        mg = self.megatron()
        if not getattr(self, "stepped", False):
            raise Skip("skipped", "the megatron step did not run")
        out = self.work / "megatron-stepped"
        mg.save(out)
        hf = HFBackend(str(out), dtype=self.dtype, device=self.device)
        prompts, completions = _vl_batch(mg)
        with torch.no_grad():
            logp, mask, _ = mg.logprobs(prompts, completions)
            ref, _, _ = hf.logprobs(prompts, completions)
        d = _max_diff(logp, ref, mask)
        gen_mg = mg.generate(prompts, 12, greedy=True)  # syncs megatron's shards into its HF generator first
        gen_hf = hf.generate(prompts, 12, greedy=True)
        same = sum(a == b for x, y in zip(gen_mg, gen_hf) for a, b in zip(x, y))
        total = sum(max(len(x), len(y)) for x, y in zip(gen_mg, gen_hf))
        ok = d < self.tol and gen_mg == gen_hf
        return ("PASS" if ok else "FAIL"), f"max |d logp| {d:.2e}; greedy tokens equal {same}/{total}"

    def cuda_rng(self) -> tuple[str, str]:
        if not self.cuda:
            raise Skip("skipped: needs CUDA", "")
        from lmmr1_core.checkpoint import read_trainer_state, write_trainer_state

        torch.cuda.init()
        torch.cuda.manual_seed_all(1234)
        torch.rand(3, device="cuda")  # advance past the seed: the saved state is mid-stream
        d = self.work / "rng"
        d.mkdir(exist_ok=True)
        write_trainer_state(d, {}, {})
        want = torch.rand(1000, device="cuda")
        torch.cuda.manual_seed_all(99)  # a resumed process starts elsewhere
        torch.rand(7, device="cuda")
        read_trainer_state(d)
        got = torch.rand(1000, device="cuda")
        return ("PASS" if torch.equal(want, got) else "FAIL"), f"{int((want == got).sum())}/1000 draws equal"

    def resume(self) -> tuple[str, str]:
        """A 5-step rl stage, whole and cut after step 3 (checkpoint at 2): every metric but the timings."""
        from lmmr1_plugins.models.tiny import build_tiny_model

        from lmmr1_core import hookimpl
        from lmmr1_core.config import RunConfig

        class InterruptAt:
            @hookimpl
            def on_step_end(self, stage, step, metrics):
                if stage == "rl" and step == 3:
                    raise KeyboardInterrupt

        model = build_tiny_model(self.work / "tiny-text", "text", hidden=64, layers=2, seed=0)

        def cfg(out: Path) -> RunConfig:
            return RunConfig.model_validate({
                "name": "resume", "output_dir": str(out), "logging": {"tensorboard": False},
                "model": {"backend": "hf", "path": str(model), "device": self.device, "dtype": "float32"},
                "stages": {"rl": {
                    "kind": "rl", "data": [{"dataset": "arithmetic", "n": 16, "seed": 3}],
                    "rewards": [{"name": "length_penalty", "max_tokens": 6, "buffer": 5}],
                    "algorithm": {"name": "grpo", "group_size": 4, "kl": {"coef": 0.01}},
                    "generation": {"max_new_tokens": 8}, "steps": 5, "batch_size": 2, "micro_batch_size": 4,
                    "optim": {"lr": 1e-3}, "save_every": 2}},
            })  # fmt: skip

        # the same kernels in both runs: what differs after the resume is then the state the checkpoint restored
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._resume(cfg, InterruptAt)
        finally:
            torch.use_deterministic_algorithms(deterministic)

    def _resume(self, cfg, InterruptAt) -> tuple[str, str]:
        from lmmr1_core.plugins import get_plugin_manager
        from lmmr1_core.run import run

        run(cfg(self.work / "whole"), "gpu_check")
        pm = get_plugin_manager()
        pm.register(InterruptAt(), name="gpu_check_interrupt")
        try:
            run(cfg(self.work / "cut"), "gpu_check")
            return "FAIL", "the interrupt did not stop the run"
        except KeyboardInterrupt:
            pass
        finally:
            pm.unregister(name="gpu_check_interrupt")
        run(cfg(self.work / "cut"), "gpu_check")
        timing = {"tokens_per_s", "step_s", "generation_s", "scoring_s", "train_s", "rollout/sync_s"}
        rows = []
        for d in ("whole", "cut"):
            lines = (self.work / d / "resume/rl/metrics.jsonl").read_text().splitlines()
            rows.append([{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines])
        a, b = rows
        if [r["step"] for r in b] != [1, 2, 3, 4, 5]:
            return "FAIL", f"steps {[r['step'] for r in b]}"
        diffs = [abs(x[k] - y[k]) for x, y in zip(a, b) for k in x if isinstance(x[k], float) and k in y]
        lengths_equal = [x.get("response_length") for x in a] == [y.get("response_length") for y in b]
        exact = a == b
        ok = exact or (lengths_equal and max(diffs, default=0.0) < 1e-4)
        what = "identical" if exact else f"max |d metric| {max(diffs, default=0.0):.2e}, lengths equal {lengths_equal}"
        rng = "CUDA RNG" if self.cuda else "CPU RNG only"
        return ("PASS" if ok else "FAIL"), f"steps 3-5 after resuming at 2: {what} ({rng})"

    def processor(self) -> tuple[str, str]:
        try:
            import torchvision  # noqa: F401
        except Exception:
            raise Skip("skipped: needs torchvision", "Qwen2.5-VL's AutoProcessor imports it; the GPU image has it"
                       ) from None
        from lmmr1_plugins.models.hf import HFBackend
        from PIL import Image
        from transformers import AutoImageProcessor

        hf = HFBackend(str(self.model), dtype="float32", device="cpu")
        if hf.processor is None:
            return "FAIL", "AutoProcessor did not load although torchvision imports"
        g = torch.Generator().manual_seed(0)
        sizes = [(56, 84), (57, 91), (640, 480), (1000, 30), (333, 777)]
        images = [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
                  for w, h in sizes]  # fmt: skip
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is shown"}]}]
        auto = [hf.encode(msgs, [im]) for im in images]
        processor = hf.processor
        # the torchvision-free path (a machine without torchvision): the PIL image processor, our expansion
        import transformers

        pil = getattr(transformers, "Qwen2VLImageProcessorPil", None)
        hf.processor = None
        hf.image_processor = (pil.from_pretrained(str(self.model)) if pil is not None
                              else AutoImageProcessor.from_pretrained(str(self.model), use_fast=False))  # fmt: skip
        ours = [hf.encode(msgs, [im]) for im in images]
        classes = f"{type(processor.image_processor).__name__} vs {type(hf.image_processor).__name__}"
        hf.processor = processor
        ids = all(a.input_ids == o.input_ids for a, o in zip(auto, ours))
        grid = all(torch.equal(a.image_grid_thw, o.image_grid_thw) for a, o in zip(auto, ours))
        shapes = all(a.pixel_values.shape == o.pixel_values.shape for a, o in zip(auto, ours))
        pix = max(float((a.pixel_values - o.pixel_values).abs().max()) for a, o in zip(auto, ours)) if shapes else -1
        ok = ids and grid and pix == 0.0
        figure = (f"{classes}, {len(sizes)} image sizes: input_ids {'identical' if ids else 'DIFFER'}, "
                  f"image_grid_thw {'identical' if grid else 'DIFFER'}, pixel_values max |d| {pix:.2e}")  # fmt: skip
        return ("PASS" if ok else "FAIL"), figure


def benchmark(device: str, image_sizes: list[int], timeout: float) -> list[tuple[str, str, str]]:
    """benchmarks/megatron_step.py in a fresh process (its own process group and memory): each backend loaded
    once, one row per backend and prompt kind (text; an S x S image)."""
    cmd = [sys.executable, str(HERE / "megatron_step.py"), "--json", "--model", "3b" if device == "cuda" else "tiny",
           "--image-size", ",".join(map(str, image_sizes))]  # fmt: skip
    shapes = "3B shapes bf16" if device == "cuda" else "tiny fp32 (cpu)"
    name = f"step, {shapes}"
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}  # no deterministic kernels here
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # keep the rows it printed before its time ran out
        stdout, stderr, code = exc.stdout or "", f"over {timeout:.0f} s", "timeout"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    rows = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            prompts = f"{r['image_size']}px image" if r["image_size"] else "text"
            prompts += f", {r['prompt_tokens']:.0f}-token prompts"
            fig = (f"gen {r['gen_tok_s']:.0f} tok/s, logprob {r['logprob_tok_s']:.0f} tok/s, train "
                   f"{r['train_tok_s']:.0f} tok/s; TFLOP/s gen {r['tflops_generate']:.3g} / logprob "
                   f"{r['tflops_logprob']:.3g} / train {r['tflops_train']:.3g}")  # fmt: skip
            if "mfu_train" in r:
                fig += (f"; MFU gen {r['mfu_generate']:.1%} / logprob {r['mfu_logprob']:.1%} / train "
                        f"{r['mfu_train']:.1%}; peak {r['peak_mem_gb']:.1f} GiB")  # fmt: skip
            rows.append((f"{name}, {prompts}: {r['backend']}", "ok", fig))
    if code != 0 or not rows:
        tail = (stderr.strip().splitlines() or ["no output"])[-1][:200]
        rows.append((name, f"ERROR ({code})", tail))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--out", default=None, help="also write gpu_check.txt and gpu_check.json here")
    ap.add_argument("--skip-bench", action="store_true", help="only the checks, not the step benchmark")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds for everything after start-up; the benchmark gets what the checks leave")  # fmt: skip
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    else:  # deterministic cuBLAS for the resume comparison; read when CUDA starts, so set before
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="lmmr1-gpu-check-"))
    checks = Checks(device, work)
    table: list[tuple[str, str, str]] = []
    plan = [
        ("environment", checks.environment),
        ("hf vs megatron: scoring", checks.scoring_parity),
        ("megatron: one step", checks.megatron_step),
        ("hf vs megatron: after the step", checks.parity_after_step),
        ("checkpoint restores the CUDA RNG", checks.cuda_rng),
        ("resumed rl stage = uninterrupted", checks.resume),
        ("AutoProcessor vs our image path", checks.processor),
    ]
    for name, fn in plan:
        t0 = time.monotonic()
        try:
            result, figure = fn()
        except Skip as exc:
            result, figure = exc.args
        except Exception as exc:  # one failing check must not hide the others
            traceback.print_exc()
            result, figure = "ERROR", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        table.append((name, result, f"{figure} [{time.monotonic() - t0:.0f} s]"))
        print(f"{name}: {result} {figure}", file=sys.stderr, flush=True)
    if not args.skip_bench:
        left = args.budget - (time.monotonic() - start)
        if left < 90:
            table.append(("step benchmark", "skipped", f"{left:.0f} s of the budget left"))
        else:
            table += benchmark(device, [0, 448], timeout=left - 10)
    text = render(table, device, time.monotonic() - start)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.txt").write_text(text + "\n")
        (out / "gpu_check.json").write_text(json.dumps([dict(zip(("check", "result", "figure"), r)) for r in table],
                                                       indent=1))  # fmt: skip
    if any(r[1] in ("FAIL", "ERROR") or r[1].startswith("ERROR") for r in table):
        sys.exit(1)


def render(table: list[tuple[str, str, str]], device: str, seconds: float) -> str:
    w0 = max(len(r[0]) for r in table)
    w1 = max(len(r[1]) for r in table)
    lines = [f"gpu_check on {device}, {seconds:.0f} s", f"{'check':{w0}}  {'result':{w1}}  figure",
             f"{'-' * w0}  {'-' * w1}  ------"]  # fmt: skip
    lines += [f"{a:{w0}}  {b:{w1}}  {c}" for a, b, c in table]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
