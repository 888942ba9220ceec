"""Calling hooks one implementation at a time, so a plugin that raises or answers with the wrong
type is named in the error instead of surfacing as a bare traceback.

``ARCHFLEET_TRACE_PLUGINS=1`` prints every call (plugin, hook, arguments, result) to stderr,
with the values of build args hidden (they may be tokens).

Errors: an :class:`ArchfleetError` a plugin raises passes through unchanged (its type says what
the executor does with it: :class:`~archfleet.errors.Aborted` stays an abort,
:class:`~archfleet.errors.InfrastructureError` is retried elsewhere); anything else becomes a
:class:`PluginError` naming the plugin and the hook. Cancellation (``asyncio.CancelledError``,
a ``BaseException``) is never wrapped.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

import attrs

from .errors import ArchfleetError, PluginError

__all__ = ["PluginError", "call_each", "call_first", "resolve", "impls", "plugin_name"]


def _trace(name: str, hook: str, kwargs: dict, result: Any) -> None:
    if os.environ.get("ARCHFLEET_TRACE_PLUGINS") == "1":
        args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
        sys.stderr.write(f"[trace] {name}.{hook}({args}) -> {_short(result)}\n")


def _short(value: Any) -> str:
    text = repr(_redacted(value))
    return text if len(text) <= 160 else text[:157] + "..."


def _redacted(value: Any) -> Any:
    """``value`` with build-arg values replaced by ``***`` (a BuildRequest, or a value holding one
    as ``request``), for the trace only."""
    from .model import BuildRequest

    if isinstance(value, BuildRequest) and value.build_args:
        return attrs.evolve(value, build_args=tuple((k, "***") for k, _ in value.build_args))
    return value


def plugin_name(pm, plugin) -> str:
    return pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))


def impls(pm, hook: str):
    """Implementations in pluggy's call order (last registered first)."""
    return list(reversed(getattr(pm.hook, hook).get_hookimpls()))


def _call(pm, impl, hook: str, kwargs: dict) -> tuple[str, Any]:
    """One implementation's answer, with its plugin's name; a crash is a PluginError naming it."""
    name = plugin_name(pm, impl.plugin)
    args = {k: kwargs[k] for k in impl.argnames}
    try:
        result = impl.function(**args)
    except ArchfleetError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed in {hook}: {type(exc).__name__}: {exc}") from exc
    _trace(name, hook, args, result)
    return name, result


def call_each(pm, hook: str, **kwargs) -> list[tuple[str, Any]]:
    """Every implementation's answer (None answers dropped), as (plugin name, answer)."""
    answers = (_call(pm, impl, hook, kwargs) for impl in impls(pm, hook))
    return [(name, result) for name, result in answers if result is not None]


def call_first(pm, hook: str, **kwargs) -> tuple[str | None, Any]:
    """The first non-None answer (a firstresult hook), with the plugin that gave it."""
    for impl in impls(pm, hook):
        name, result = _call(pm, impl, hook, kwargs)
        if result is not None:
            return name, result
    return None, None


async def resolve(name: str, hook: str, value: Any) -> Any:
    """Await ``value`` if the plugin returned an awaitable, naming the plugin if it raises."""
    if not inspect.isawaitable(value):
        return value
    try:
        return await value
    except ArchfleetError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed in {hook}: {type(exc).__name__}: {exc}") from exc
