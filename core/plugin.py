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
        raise UsageError(f"plugin {exc.plugin!r} implements a hook archfleet does not have: {exc}") from exc
    return pm


def get_manager() -> pluggy.PluginManager:
    """The process-wide manager, made on first use."""
    global _manager
    if _manager is None:
        _manager = make_manager()
    return _manager
