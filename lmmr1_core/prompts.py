"""Chat messages: the one place that reads and rewrites them (templates, system prompt, text, images).

A message's ``content`` is a string or a list of items (``{"type": "text", "text": ...}``,
``{"type": "image", "image": ...}``); every function here accepts both.
"""

from __future__ import annotations

from typing import Any

NOT_SHOWN = "[an earlier observation image, not shown]"


def items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's content as a list of items (a string is one text item)."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [i for i in content or [] if isinstance(i, dict)]


def message_text(message: dict[str, Any]) -> str:
    return "\n".join(i.get("text", "") for i in items(message) if i.get("type") == "text")


def user_text(messages: list[dict[str, Any]]) -> str:
    """The last user message's text (what samples.jsonl shows as the prompt)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return message_text(m)
    return ""


def build_messages(messages: list[dict], template: str | None, system: str | None) -> list[dict]:
    """``template`` applied to the last user text (``{prompt}`` stands for it), ``system`` put first."""
    if template:
        messages = [dict(m) for m in messages]
        for m in reversed(messages):
            if m.get("role") != "user":
                continue
            if isinstance(m.get("content"), str):
                m["content"] = template.replace("{prompt}", m["content"])
            elif isinstance(m.get("content"), list):
                new = [dict(i) for i in m["content"]]
                texts = [i for i in new if i.get("type") == "text"]
                if texts:
                    texts[-1]["text"] = template.replace("{prompt}", texts[-1].get("text", ""))
                m["content"] = new
            break
    if system and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def observation_message(obs: Any, instruction: str | None) -> dict[str, Any]:
    """An env observation as a user turn: its images, then its text (and the stage's instruction)."""
    text = obs.text + (f"\n{instruction}" if instruction else "")
    return {
        "role": "user",
        "content": [*({"type": "image", "image": im} for im in obs.images), {"type": "text", "text": text}],
    }


def last_images_view(messages: list[dict[str, Any]], keep: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """The conversation with only its last ``keep`` images; older ones become a short text note."""
    total = sum(1 for m in messages for i in items(m) if i.get("type") == "image")
    seen, view, images = 0, [], []
    for m in messages:
        if not isinstance(m.get("content"), list):
            view.append(m)
            continue
        kept = []
        for item in items(m):
            if item.get("type") == "image":
                seen += 1
                if seen <= total - keep:
                    kept.append({"type": "text", "text": NOT_SHOWN})
                    continue
                images.append(item["image"])
            kept.append(item)
        view.append({**m, "content": kept})
    return view, images
