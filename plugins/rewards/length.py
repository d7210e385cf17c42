"""DAPO's soft overlong punishment: nothing up to a soft limit, then linear down to -1."""

from __future__ import annotations


def length_penalty(
    prompts, completions, completion_ids=None, max_tokens: int = 1024, buffer: int = 256, **kwargs
) -> list[float]:
    """0 up to ``max_tokens - buffer`` tokens, ``-(len - (max - buffer)) / buffer`` after, ``-1`` past ``max_tokens``.

    Counts tokens (``completion_ids``) when given, else whitespace-separated words.
    """
    if buffer <= 0 or buffer > max_tokens:
        raise ValueError(f"length_penalty: need 0 < buffer <= max_tokens, got buffer={buffer}, max_tokens={max_tokens}")
    lengths = (
        [len(ids) for ids in completion_ids] if completion_ids is not None else [len(c.split()) for c in completions]
    )
    soft = max_tokens - buffer
    return [max(-1.0, min(0.0, (soft - n) / buffer)) for n in lengths]
