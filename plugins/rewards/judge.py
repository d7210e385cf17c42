"""Answer checking by a judge model behind an OpenAI-compatible URL (as LMM-R1's evaluation does
with a 14B judge): for free-form answers no rule extracts reliably."""

from __future__ import annotations

from typing import Any

from lmmr1_plugins.rewards.choice import _prompt_text
from lmmr1_plugins.rewards.http import post_json

from lmmr1_core.errors import RewardError

JUDGE_PROMPT = """You grade answers. Question:
{question}

Reference answer: {answer}

Model response:
{response}

Is the final answer in the model response equivalent to the reference answer? Reply with one word: yes or no."""


def judge_accuracy(
    prompts,
    completions,
    answer,
    url: str = "",
    model: str = "judge",
    api_key: str | None = None,
    request_timeout_s: float = 60.0,
    retries: int = 3,
    backoff_s: float = 0.5,
    max_response_chars: int = 8000,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the judge says yes, 0.0 for no, ``None`` for an unclear verdict or no gold answer."""
    if not url:
        raise RewardError("judge_accuracy: set `url` (an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1)")
    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    scores: list[float | None] = []
    for prompt, completion, gold in zip(prompts, completions, answer):
        if gold is None:
            scores.append(None)
            continue
        text = JUDGE_PROMPT.format(
            question=_prompt_text(prompt), answer=gold, response=(completion or "")[-max_response_chars:]
        )
        body = {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 4}
        try:
            reply = post_json(endpoint, body, request_timeout_s, retries, backoff_s, headers)
        except RewardError as exc:
            raise RewardError(f"judge_accuracy: {exc}") from None
        try:
            verdict = str(reply["choices"][0]["message"]["content"]).strip().lower()
        except (KeyError, IndexError, TypeError):
            raise RewardError(f"judge_accuracy: {endpoint} answered {str(reply)[:200]!r}") from None
        scores.append(1.0 if verdict.startswith("yes") else 0.0 if verdict.startswith("no") else None)
    return scores
