"""The plugin manager: loads the ``lmmr1`` entry points and keeps what each plugin registered.

Built-in plugins come through the same entry-point group as third-party ones, so the path a
user's ``pip install`` depends on is the one our own code runs every day.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from lmmr1_core import hookspecs
from lmmr1_core.errors import PluginError

KINDS = ("rewards", "datasets", "envs", "models", "stages", "algorithms", "rollout_engines")
_SINGULAR = {
    "rewards": "reward",
    "datasets": "dataset",
    "envs": "env",
    "models": "model backend",
    "stages": "stage kind",
    "algorithms": "algorithm",
    "rollout_engines": "rollout engine",
}


@dataclass
class Registered:
    name: str
    obj: Any
    plugin: str


@dataclass
class BrokenPlugin:
    name: str
    distribution: str
    error: str


_pm: pluggy.PluginManager | None = None
_dists: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
_broken: dict[str, BrokenPlugin] = {}


def _names_from_env(var: str) -> set[str] | None:
    value = os.environ.get(var, "").strip()
    return {n.strip() for n in value.split(",") if n.strip()} if value else None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, entry points loaded once.

    ``LMMR1_LOAD_PLUGINS=a,b`` loads only those entry points; ``LMMR1_DISABLE_PLUGINS=a,b``
    blocks them. A plugin that fails to import is recorded with its error; the rest still load.
    """
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("lmmr1")
    pm.add_hookspecs(hookspecs)
    allow = _names_from_env("LMMR1_LOAD_PLUGINS")
    block = _names_from_env("LMMR1_DISABLE_PLUGINS") or set()
    for ep in metadata.entry_points(group="lmmr1"):
        if ep.name in block or (allow is not None and ep.name not in allow) or pm.has_plugin(ep.name):
            continue
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take down the rest
            _broken[ep.name] = BrokenPlugin(ep.name, dist, f"{type(exc).__name__}: {exc}")
            continue
        pm.register(module, name=ep.name)
        _dists[ep.name] = (dist, version)
    _pm = pm
    return pm


def reset_plugin_manager() -> None:
    """Forget loaded plugins (tests, or after ``pip install`` in the same process)."""
    global _pm
    _pm = None
    _dists.clear()
    _broken.clear()


def broken_plugins() -> list[BrokenPlugin]:
    get_plugin_manager()
    return list(_broken.values())


def registry(kind: str) -> dict[str, Registered]:
    """Everything registered for ``kind``, calling each plugin's hook so we know who registered what."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds are {', '.join(KINDS)}")
    pm = get_plugin_manager()
    found: dict[str, Registered] = {}
    hook = getattr(pm.hook, f"register_{kind}")
    for impl in hook.get_hookimpls():  # registration order
        plugin = impl.plugin_name

        def register(name: str, obj: Any, _plugin: str = plugin) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {_plugin!r} registered a {_SINGULAR[kind]} without a name")
            if not callable(obj):
                raise PluginError(
                    f"plugin {_plugin!r} registered {_SINGULAR[kind]} {name!r} as {obj!r}, which is not callable"
                )
            if name in found:
                raise PluginError(
                    f"{_SINGULAR[kind]} name {name!r} is registered by both plugin "
                    f"{found[name].plugin!r} and plugin {_plugin!r}; disable one with "
                    "LMMR1_DISABLE_PLUGINS"
                )
            found[name] = Registered(name, obj, _plugin)

        impl.function(register=register)
    return found


def lookup(kind: str, name: str) -> Registered:
    """The registered object, or an error listing the known names and the closest match."""
    items = registry(kind)
    if name in items:
        return items[name]
    what = _SINGULAR[kind]
    known = sorted(items)
    hint = difflib.get_close_matches(name, known, n=1)
    msg = f"unknown {what} {name!r}"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    msg += f"; known {kind}: {', '.join(known) if known else '(none)'}"
    if _broken:
        msg += "".join(f"\nplugin {b.name!r} ({b.distribution}) failed to load: {b.error}" for b in _broken.values())
    raise PluginError(msg)


def plugin_report() -> list[dict[str, Any]]:
    """One entry per plugin: its distribution, version, hooks and the names it registered."""
    pm = get_plugin_manager()
    by_plugin: dict[str, dict[str, list[str]]] = {}
    for kind in KINDS:
        for reg in registry(kind).values():
            by_plugin.setdefault(reg.plugin, {}).setdefault(kind, []).append(reg.name)
    report = []
    for name, plugin in pm.list_name_plugin():
        dist, version = _dists.get(name, ("(in-process)", ""))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        report.append(
            {
                "name": name,
                "distribution": dist,
                "version": version,
                "hooks": hooks,
                "registered": by_plugin.get(name, {}),
            }
        )
    for b in _broken.values():
        report.append({"name": b.name, "distribution": b.distribution, "error": b.error})
    return report
