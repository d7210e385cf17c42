"""Plain data passed between plugins and the core."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One prompt of a dataset.

    ``messages`` are chat messages; an image appears inside a message's content list as
    ``{"type": "image", "image": path}`` and, in the same order, in ``images``. ``meta``
    holds every other column of the record; rewards receive each as a keyword argument.
    """

    messages: list[dict[str, Any]]
    answer: Any = None
    images: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    source: str = ""  # which data entry of the stage it came from (set by the runner; eval reports by it)


@dataclass
class Observation:
    """What a multi-turn environment shows the model after a reset or a step."""

    text: str
    images: list[Any] = field(default_factory=list)
