"""A plugin's options are its own schema: checked against the stage file before any model loads.

A plugin declares its options by its signature (a reward's or loader's keyword parameters, an
algorithm's or env's ``__init__``), or, when its signature cannot say (a factory taking ``**cfg``, a
rollout engine taking the stage), by an ``options`` attribute: a pydantic model or a callable whose
signature lists them. A reward's ``**kwargs`` receives the dataset columns, never options, so every
reward is strict; another plugin whose signature ends in ``**kwargs`` without an ``options`` attribute
is open (its keys are not checked here).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from lmmr1_core.errors import ConfigError
from lmmr1_core.secrets import redact

# parameters that are the contract's own, not options
_RESERVED = {
    "rewards": {"prompts", "completions", "trainer_state"},
    "rollout_engines": {"backend", "model", "stage"},
}
COLUMNS = {"answer", "images", "id", "completion_ids"}  # what every reward call carries (``reward_columns``)


@dataclass
class Option:
    name: str
    annotation: Any  # a type, or inspect.Parameter.empty when undeclared
    default: Any  # inspect.Parameter.empty when required

    def describe(self) -> str:
        ann = _type_name(self.annotation) if self.annotation is not inspect.Parameter.empty else "any"
        default = "required" if self.default is inspect.Parameter.empty else f"default {self.default!r}"
        return f"{self.name}: {ann}, {default}"


@dataclass
class Schema:
    options: dict[str, Option]
    open: bool  # accepts keys it does not list (a **kwargs it passes on unchecked)


def _type_name(ann: Any) -> str:
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def _hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # an annotation that names something not importable here: no type checks
        return {}


def schema(kind: str, obj: Any) -> Schema:
    """The options ``obj`` (a registered plugin object) declares."""
    declared = getattr(obj, "options", None)
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        opts = {n: Option(n, f.annotation, inspect.Parameter.empty if f.is_required() else f.default)
                for n, f in declared.model_fields.items()}  # fmt: skip
        return Schema(opts, open=False)
    target = declared if callable(declared) else obj
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return Schema({}, open=True)
    hints = _hints(fn)
    reserved = _RESERVED.get(kind, set())
    if kind == "rewards":  # dataset columns arrive as parameters too; a reward may name its own in ``columns``
        reserved = reserved | COLUMNS | set(getattr(obj, "columns", ()))
    opts: dict[str, Option] = {}
    is_open = False
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            is_open = kind != "rewards"  # a reward's **kwargs takes the dataset columns
        elif p.kind is p.VAR_POSITIONAL or p.name in reserved or p.name == "self":
            continue
        elif kind == "rewards" and p.default is p.empty:
            continue  # a required parameter of a reward is a column (``answer``)
        else:
            opts[p.name] = Option(p.name, hints.get(p.name, p.annotation), p.default)
    return Schema(opts, is_open)


def check(kind: str, name: str, obj: Any, given: dict[str, Any], where: str) -> None:
    """Raise one ``ConfigError`` line naming ``where`` (file and key), the plugin and the option."""
    from lmmr1_core.plugins import _SINGULAR

    what = f"{_SINGULAR[kind]} {name!r}"
    sch = schema(kind, obj)
    for key, value in given.items():
        opt = sch.options.get(key)
        if opt is None:
            if sch.open:
                continue
            hint = difflib.get_close_matches(key, list(sch.options), n=1)
            known = ", ".join(sch.options) or "none"
            raise ConfigError(f"{where}.{key}: {what} has no option {key!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; its options: {known}")
        if opt.annotation is not inspect.Parameter.empty:
            try:
                TypeAdapter(opt.annotation).validate_python(value)
            except ValidationError:
                shown = redact({key: value}, getattr(obj, "secrets", ()))[key]  # an error message is a log too
                raise ConfigError(f"{where}.{key}: {what} expects {_type_name(opt.annotation)}, "
                                  f"got {shown!r}") from None
            except Exception:  # an annotation pydantic cannot build a validator for: unchecked
                pass
    missing = [o.name for o in sch.options.values() if o.default is inspect.Parameter.empty and o.name not in given]
    if kind in ("algorithms", "envs", "rollout_engines") and missing:
        raise ConfigError(f"{where}: {what} needs option(s) {', '.join(missing)}")


def describe(kind: str, obj: Any) -> list[str]:
    """One line per option, for ``lmmr1 reference``."""
    sch = schema(kind, obj)
    lines = [o.describe() for o in sch.options.values()]
    if sch.open:
        lines.append("(and keys it passes on unchecked)")
    return lines
