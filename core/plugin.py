"""The plugin manager: built-in plugins, then installed ones (``archfleet`` entry points).

``ARCHFLEET_DISABLE_PLUGINS=name,...`` keeps plugins from being registered (built-in or not).
"""

from __future__ import annotations

import importlib
import os

import pluggy

from . import hookspecs
from .errors import UsageError

BUILTIN_PLUGINS = (
    "archfleet.plugins.local",
    "archfleet.plugins.native",
    "archfleet.plugins.qemu",
    "archfleet.plugins.cross",
    "archfleet.plugins.estimates",
    "archfleet.plugins.ssh",
)

_manager: pluggy.PluginManager | None = None


def _disabled() -> set[str]:
    raw = os.environ.get("ARCHFLEET_DISABLE_PLUGINS", "")
    return {item.strip() for item in raw.split(",") if item.strip()}


def make_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A fresh manager with the hook specs, the built-ins and (optionally) installed plugins."""
    pm = pluggy.PluginManager("archfleet")
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    for dotted in BUILTIN_PLUGINS:
        name = dotted.rsplit(".", 1)[-1]
        if name in disabled:
            pm.set_blocked(name)
            continue
        pm.register(importlib.import_module(dotted), name=name)
    for name in disabled:
        pm.set_blocked(name)
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints("archfleet")
        except Exception as exc:  # an installed plugin that fails to import
            raise UsageError(f"an installed archfleet plugin failed to load: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UsageError(_unknown_hooks(pm, exc.plugin)) from exc
    return pm


def _unknown_hooks(pm: pluggy.PluginManager, plugin) -> str:
    """The one line for a plugin implementing hooks archfleet does not have: the plugin by its
    registered name (an installed plugin's entry-point name) and every such hook."""
    name = pm.get_name(plugin) or repr(plugin)
    unknown = sorted(hook for hook, caller in vars(pm.hook).items()
                     if not hook.startswith("_") and not caller.has_spec()
                     and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()))
    return (f"plugin {name!r} implements {', '.join(unknown) or 'a hook'}, which archfleet does not have "
            "(see its hook reference, or disable it with ARCHFLEET_DISABLE_PLUGINS)")


def get_manager() -> pluggy.PluginManager:
    """The process-wide manager, made on first use."""
    global _manager
    if _manager is None:
        _manager = make_manager()
    return _manager
