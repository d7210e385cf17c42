"""A reward computed by a server (a sandbox, a judge, LMM-R1's reward server): one POST per batch.

Request: ``{"prompts": [...], "completions": [...], "answers": [...], "columns": {...}}`` (columns
that are JSON-serialisable). Response: ``{"rewards": [...]}`` or a bare list, one score (or
null) per completion. Uses only the standard library.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from lmmr1_core.errors import RewardError


def _jsonable(values: list) -> bool:
    try:
        json.dumps(values)
        return True
    except (TypeError, ValueError):
        return False


def post_json(url: str, body: dict, request_timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5,
              headers: dict | None = None) -> Any:  # fmt: skip
    """POST ``body`` as JSON, return the decoded answer; 5xx and connection errors are retried with
    exponential backoff, then raised as ``RewardError`` (which stops the run with this message)."""
    data = json.dumps(body, default=str).encode()
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=request_timeout_s) as response:
                return json.loads(response.read().decode())
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500:  # the server understood and refused: retrying will not help
                raise RewardError(f"{url} answered {last}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        except json.JSONDecodeError as exc:
            raise RewardError(f"{url} did not answer JSON ({exc})") from None
    raise RewardError(f"{url} unreachable after {retries + 1} tries: {last}")


def http_reward(
    prompts,
    completions,
    answer=None,
    url: str = "",
    request_timeout_s: float = 30.0,
    retries: int = 3,
    backoff_s: float = 0.5,
    headers: dict | None = None,
    **columns,
) -> list[float | None]:
    """POST the batch to ``url``; retried with exponential backoff, then a clear error."""
    if not url:
        raise RewardError("http_reward: set `url` in the stage file's rewards entry")
    body = {
        "prompts": prompts,
        "completions": completions,
        "answers": answer if answer is not None else [None] * len(completions),
        "columns": {k: v for k, v in columns.items() if k != "images" and _jsonable(v)},
    }
    try:
        payload = post_json(url, body, request_timeout_s, retries, backoff_s, headers)
    except RewardError as exc:
        raise RewardError(f"http_reward: {exc}") from None
    scores = payload.get("rewards") if isinstance(payload, dict) else payload
    if not isinstance(scores, list) or len(scores) != len(completions):
        raise RewardError(f"http_reward: {url} answered {str(payload)[:200]!r}; expected {len(completions)} rewards")
    return [None if s is None else float(s) for s in scores]
