"""Run by tests/test_vllm.py in a subprocess whose PYTHONPATH holds a torchvision (vLLM's Qwen2.5-VL code
imports it); prints one JSON line of what the test asserts on. Kept out of the test process so no other
test sees that torchvision."""

import json
import sys

import torch
from PIL import Image


def main(model_path: str) -> None:
    from lmmr1_plugins.models.vllm_engine import VLLMRollout

    from lmmr1_core import load_model

    backend = load_model("hf", path=model_path, device="cpu")
    engine = VLLMRollout(backend, max_model_len=1024, enforce_eager=True, kv_cache_gb=0.25)
    images = [Image.new("RGB", (56 + 28 * i, 56 + 14 * i), (60 * i, 120, 200 - 50 * i)) for i in range(3)]
    prompts = [
        backend.encode([{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": q}]}],
                       [im])  # fmt: skip
        for im, q in zip(images, ["How many circles?", "What colour?", "Which side?"])
    ]

    def gap() -> float:
        completions, logp = engine.generate(prompts, 8, return_logprobs=True)
        with torch.no_grad():
            trainer, _, _ = backend.logprobs(prompts, completions)
        return max(abs(trainer[i, j].item() - x) for i, row in enumerate(logp) for j, x in enumerate(row))

    result = {"greedy_equal": engine.generate(prompts, 12, greedy=True) == backend.generate(prompts, 12, greedy=True)}
    result["gap_before"] = gap()
    optimizer = backend.make_optimizer(1e-2, 0.0, (0.9, 0.999))
    logp, mask, _ = backend.logprobs(prompts, [[300, 301, 302]] * 3)
    (-(logp * mask).sum()).backward()
    optimizer.step()
    engine.weights_changed()
    result["gap_after_sync"] = gap()
    result["synced"] = engine.last_sync_s > 0
    # multi-turn Sokoban with board images: every turn's context carries all boards so far
    from lmmr1_plugins.envs import env_seeds

    from lmmr1_core.config import StageConfig
    from lmmr1_core.episodes import run_episodes
    from lmmr1_core.trainer import StageContext

    cfg = StageConfig(kind="rl", data=[{"dataset": "env_seeds"}], steps=1, micro_batch_size=4,
                      env={"name": "sokoban", "dim": [6, 6], "num_boxes": 1, "max_turns": 3},
                      generation={"max_new_tokens": 6})  # fmt: skip
    seeds = env_seeds(n=2, seed=3)
    runs = [run_episodes(StageContext("t", cfg, None, None, backend, [], "", None, engine=e), seeds, greedy=True)
            for e in (engine, None)]  # fmt: skip
    result["episodes_equal"] = all(a.completion == b.completion for a, b in zip(*runs))
    result["episode_images"] = [len(e.images) for e in runs[0]]
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
