"""Secrets by reference: a stage file names an environment variable, the value is read at run time and
never written anywhere (config.yaml, model cards, trackers, logs, error messages).

``api_key: ${env:OPENAI_API_KEY}`` is a reference; the plugin receives the variable's value. An option is
secret when its plugin lists it in a ``secrets`` attribute, or when its name says so (``api_key``,
``token``, ``password``, ``headers`` ...). A secret's literal value is shown as ``***``; a reference stays
as written, since it holds nothing.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from lmmr1_core.errors import ConfigError

REDACTED = "***"
_REF = re.compile(r"^\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}$")
_SECRET_NAME = re.compile(r"(^|_)(api_?key|token|secret|password|passwd|credentials?|authorization|auth|cookies?|"
                          r"headers)$", re.IGNORECASE)  # a key ending so: `hf_token` is, `max_tokens` is not


def is_reference(value: Any) -> bool:
    return isinstance(value, str) and _REF.match(value) is not None


def is_secret_key(key: str, declared: tuple[str, ...] | list[str] = ()) -> bool:
    return key in declared or _SECRET_NAME.search(key) is not None


def resolve(value: Any, where: str = "") -> Any:
    """``value`` with every ``${env:NAME}`` (nested in lists and mappings too) replaced by the variable."""
    if isinstance(value, dict):
        return {k: resolve(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(value)]
    if isinstance(value, str) and (m := _REF.match(value)):
        name = m.group(1)
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set (the stage file reads it "
                              f"with ${{env:{name}}})")  # fmt: skip
        return os.environ[name]
    return value


def redact(value: Any, declared: tuple[str, ...] | list[str] = (), key: str = "") -> Any:
    """A copy fit to write down: literal values under secret keys become ``***`` (references are kept)."""
    if key and is_secret_key(key, declared):
        return _hide(value)
    if isinstance(value, dict):
        return {k: redact(v, declared, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, declared) for v in value]
    return value


def _hide(value: Any) -> Any:
    if is_reference(value) or value is None:
        return value
    if isinstance(value, dict):  # e.g. headers: each value may be a secret
        return {k: _hide(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v) for v in value]
    return REDACTED


def literal_secrets(options: dict[str, Any], declared: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The secret options given as literal values rather than references."""
    return [k for k, v in options.items() if is_secret_key(k, declared) and _hide(v) != v]


def warn_literal(where: str, keys: list[str]) -> None:
    for key in keys:
        print(f"warning: {where}.{key}: a secret written into the stage file ends up wherever the file goes; "
              f"pass it by reference instead, e.g. {key}: ${{env:{key.upper()}}}, and set that variable "
              "(the value is never written to the run directory)", file=sys.stderr)  # fmt: skip
