"""The plugin manager: the built-in plugins, installed ones, and one typed method per hook.

Every hook is called through pluggy's own ``HookCaller`` (``pm.hook.<name>(...)``), so pluggy's
call order (installed plugins before built-ins, ``tryfirst``/``trylast``), new-style wrappers
(``@hookimpl(wrapper=True)``), old-style ``hookwrapper``\\ s, tracing and hook-call monitoring all
work as pluggy documents them. Only :mod:`archfleet.pipeline` calls these methods (and the CLI's
``plugins`` listing reads the registrations).

Async hooks (``archfleet_probe``, ``archfleet_offer``, ``archfleet_connect``, ``archfleet_run``,
``archfleet_session_end``) return awaitables from pluggy; the typed methods here await them, so
the pipeline sees plain values.

Errors name the plugin. Each implementation pluggy calls is wrapped once (transparently: its
arguments and answer are unchanged): an exception that is not an
:class:`~archfleet.errors.ArchfleetError` becomes a :class:`~archfleet.errors.PluginError`
naming the plugin and the hook (also when it is raised later, by the awaitable the
implementation returned); an ``ArchfleetError`` passes through unchanged, since its type says
what the executor does with it. An answer of the wrong type is reported naming the plugin that
gave it. Cancellation is never wrapped.

Environment: ``ARCHFLEET_DISABLE_PLUGINS=name,...`` keeps plugins (built-in or installed) from
being registered; ``ARCHFLEET_TRACE_PLUGINS=1`` turns on pluggy's own tracing, written to stderr
(the values of build args are never shown: :class:`~archfleet.model.BuildRequest`'s repr hides
them).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import sys
from typing import Any, Awaitable, Iterable, Mapping

import pluggy

from . import hookspecs
from .errors import ArchfleetError, PluginError, UsageError
from .model import NodeFacts, NodeSpec, Option, PlatformResult

BUILTIN_PLUGINS = (
    "archfleet.plugins.local",
    "archfleet.plugins.native",
    "archfleet.plugins.qemu",
    "archfleet.plugins.cross",
    "archfleet.plugins.estimates",
    "archfleet.plugins.ssh",
    "archfleet.plugins.reuse",
)
ENTRY_POINT_GROUP = "archfleet"


def disabled_plugins(environ: Mapping[str, str]) -> set[str]:
    """Plugin names in ``ARCHFLEET_DISABLE_PLUGINS`` (comma-separated)."""
    raw = environ.get("ARCHFLEET_DISABLE_PLUGINS", "")
    return {item.strip() for item in raw.split(",") if item.strip()}


class Hooks:
    """archfleet's plugin manager: a pluggy ``PluginManager`` (:attr:`pm`) and one typed method
    per hook of :mod:`archfleet.hookspecs`. Make one with :func:`make_hooks`."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._origin: dict[int, str] = {}  # id(answer) -> plugin, for the answers of one call

    # --- registration -----------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions); its name.
        Raises :class:`UsageError` (one line) if it implements a hook archfleet does not have."""
        registered = self.pm.register(plugin, name=name)
        self.check()
        return registered

    def check(self) -> None:
        """Every registered implementation is of a hook archfleet has (``check_pending``); else a
        :class:`UsageError` naming the plugin as registered and every hook it has that archfleet
        has not (optional hooks are allowed)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise UsageError(self._unknown_hooks(exc.plugin)) from None

    def _unknown_hooks(self, plugin) -> str:
        unknown = sorted(hook for hook, caller in vars(self.pm.hook).items()
                         if not hook.startswith("_") and not caller.has_spec()
                         and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()))
        return (f"plugin {self.plugin_name(plugin)!r} implements {', '.join(unknown) or 'a hook'}, which archfleet "
                "does not have (see its hook reference, or disable it with ARCHFLEET_DISABLE_PLUGINS)")

    def plugin_name(self, plugin: object) -> str:
        """The name ``plugin`` is registered under (else its ``__name__``)."""
        return self.pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))

    def strategies(self) -> set[str]:
        """Names of the plugins that implement ``archfleet_offer`` (the strategies)."""
        return {impl.plugin_name for impl in self.pm.hook.archfleet_offer.get_hookimpls()}

    # --- calling --------------------------------------------------------------------------------

    def _call(self, hook: str, **kwargs) -> Any:
        """Call ``hook`` through pluggy, with every plain implementation wrapped (module doc)."""
        caller = getattr(self.pm.hook, hook)
        for impl in caller.get_hookimpls():
            if not (impl.wrapper or impl.hookwrapper) and not getattr(impl.function, "_archfleet_named", False):
                impl.function = _named(impl.function, impl.plugin_name, hook, self._origin)
        self._origin.clear()
        return caller(**kwargs)

    def _who(self, answer: Any) -> str:
        """The plugin that gave ``answer`` in the call just made (a wrapper may have replaced it)."""
        return self._origin.get(id(answer), "a hook wrapper")

    def add_nodes(self, config, session) -> list[tuple[str, NodeSpec]]:
        """``archfleet_add_nodes``: (plugin, node) for every node a plugin contributes."""
        answers = self._call("archfleet_add_nodes", config=config, session=session)
        out = []
        for answer in answers:
            name = self._who(answer)
            if not isinstance(answer, (list, tuple)):
                raise PluginError(f"plugin {name!r} answered archfleet_add_nodes with {type(answer).__name__}, "
                                  "not a list of NodeSpec")
            for node in answer:
                if not isinstance(node, NodeSpec):
                    raise PluginError(f"plugin {name!r} contributed {node!r}, not a NodeSpec")
                out.append((name, node))
        return out

    def node_keys(self) -> dict[str, Mapping]:
        """``archfleet_node_keys``: transport name -> the nodes.toml keys its plugin reads."""
        out: dict[str, Mapping] = {}
        for answer in self._call("archfleet_node_keys"):
            name = self._who(answer)
            if not isinstance(answer, Mapping):
                raise PluginError(f"plugin {name!r} answered archfleet_node_keys with {type(answer).__name__}, "
                                  "not a mapping of transport to keys")
            for transport, keys in answer.items():
                if transport in out:
                    raise PluginError(f"plugin {name!r} declares keys for transport {transport!r}, "
                                      "which another plugin already declared")
                out[transport] = keys
        return out

    async def probe(self, node: NodeSpec, config, session) -> NodeFacts:
        """``archfleet_probe`` (firstresult): the facts of ``node``. A node no plugin answers for,
        or a plugin failing, gives facts with ``reachable=False`` and the reason: one node's
        problem never takes the others down."""
        try:
            answer = self._call("archfleet_probe", node=node, config=config, session=session)
            if answer is None:
                return NodeFacts(node, False, error=f"no plugin handles transport {node.transport!r}")
            name = self._who(answer)
            facts = await answer if inspect.isawaitable(answer) else answer
        except ArchfleetError as exc:
            return NodeFacts(node, False, error=str(exc))
        if not isinstance(facts, NodeFacts):
            return NodeFacts(node, False, error=f"plugin {name!r} answered archfleet_probe with "
                                                f"{type(facts).__name__}, not NodeFacts")
        return facts

    async def prepare(self, request, session) -> None:
        """``archfleet_prepare``: every plugin's look-ups that need no node, awaited together."""
        import asyncio

        answers = self._call("archfleet_prepare", request=request, session=session)
        await asyncio.gather(*(_resolved(a) for a in answers))

    async def offer(self, platform, request, facts: tuple[NodeFacts, ...], session=None) -> list[Option]:
        """``archfleet_offer``: every strategy's options for ``platform``, checked (an Option for
        this platform on a probed node). Answers that are awaitables are awaited together."""
        answers = self._call("archfleet_offer", platform=platform, request=request, facts=facts, session=session)
        named = [(self._who(a), a) for a in answers]
        import asyncio

        got = await asyncio.gather(*(_resolved(a) for _, a in named))
        known = {f.name for f in facts}
        out: list[Option] = []
        for (name, _), options in zip(named, got):
            if not isinstance(options, (list, tuple)):
                raise PluginError(f"plugin {name!r} answered archfleet_offer with {type(options).__name__}, "
                                  "not a list of Option")
            for opt in options:
                if not isinstance(opt, Option) or opt.platform != platform or opt.node not in known:
                    raise PluginError(f"plugin {name!r} offered {opt!r}: expected an Option for {platform} "
                                      "on a known node")
                out.append(opt)
        return out

    def estimate(self, option: Option, request, facts: NodeFacts | None, history) -> tuple[float, str] | None:
        """``archfleet_estimate`` (firstresult): (seconds, basis) for ``option``, or None to keep
        the offer's estimate. Seconds must be a finite number >= 0."""
        answer = self._call("archfleet_estimate", option=option, request=request, facts=facts, history=history)
        if answer is None:
            return None
        name = self._who(answer)
        seconds, basis = answer if isinstance(answer, tuple) and len(answer) == 2 else (answer, f"from plugin {name}")
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            raise PluginError(f"plugin {name!r} answered archfleet_estimate with {answer!r}, not seconds") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise PluginError(f"plugin {name!r} estimated {seconds} seconds for {option}")
        return seconds, str(basis)

    async def connect(self, node: NodeSpec, facts: NodeFacts, session):
        """``archfleet_connect`` (firstresult): a transport to ``node`` for this command."""
        from .errors import InfrastructureError

        answer = self._call("archfleet_connect", node=node, facts=facts, session=session)
        if answer is None:
            raise InfrastructureError(node.name, f"no plugin can connect to transport {node.transport!r}")
        return await _resolved(answer)

    async def run(self, option: Option, request, job, session=None) -> PlatformResult:
        """``archfleet_run`` (firstresult): build (and push) ``option`` with ``job``."""
        answer = self._call("archfleet_run", option=option, request=request, job=job, session=session)
        if answer is None:
            raise PluginError(f"no plugin runs strategy {option.strategy!r} (offered for {option.platform})")
        name = self._who(answer)
        result = await _resolved(answer)
        if not isinstance(result, PlatformResult):
            raise PluginError(f"plugin {name!r} answered archfleet_run for {option} with {type(result).__name__}, "
                              "not PlatformResult")
        return result

    def build_finished(self, result: PlatformResult) -> None:
        """``archfleet_build_finished``: a platform is done (answers ignored)."""
        self._call("archfleet_build_finished", result=result)

    def index_pushed(self, ref: str, digest: str) -> None:
        """``archfleet_index_pushed``: the index went to ``ref`` (answers ignored)."""
        self._call("archfleet_index_pushed", ref=ref, digest=digest)

    async def session_end(self, session) -> None:
        """``archfleet_session_end``: plugins close what they hold. Never raises an
        ArchfleetError: closing up must not hide the command's own outcome."""
        try:
            answers = self._call("archfleet_session_end", session=session)
        except ArchfleetError:
            return
        for answer in answers:
            try:
                await _resolved(answer)
            except ArchfleetError:
                pass


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


async def _resolved(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _named(fn, plugin: str, hook: str, origin: dict[int, str]):
    """``fn`` (a hook implementation) with its failures named and its answers' origin noted."""

    def fail(exc: Exception) -> PluginError:
        return PluginError(f"plugin {plugin!r} failed in {hook}: {type(exc).__name__}: {_first_line(exc)}")

    async def awaited(aw: Awaitable):
        try:
            return await aw
        except ArchfleetError:
            raise
        except Exception as exc:
            raise fail(exc) from exc

    @functools.wraps(fn)
    def call(*args):
        try:
            answer = fn(*args)
        except ArchfleetError:
            raise
        except Exception as exc:
            raise fail(exc) from exc
        if inspect.isawaitable(answer):
            answer = awaited(answer)
        if answer is not None:
            origin[id(answer)] = plugin
        return answer

    call._archfleet_named = True
    return call


def make_hooks(environ: Mapping[str, str] | None = None, *, load_entrypoints: bool = True,
               builtins: Iterable[str] = BUILTIN_PLUGINS) -> Hooks:
    """A manager with the hook specs, the built-ins and (optionally) installed plugins
    (``archfleet`` entry points), minus those ``ARCHFLEET_DISABLE_PLUGINS`` names. Raises
    :class:`UsageError` when an installed plugin fails to import or implements an unknown hook."""
    import os

    environ = os.environ if environ is None else environ
    pm = pluggy.PluginManager("archfleet")
    pm.add_hookspecs(hookspecs)
    disabled = disabled_plugins(environ)
    for name in disabled:
        pm.set_blocked(name)
    for dotted in builtins:
        name = dotted.rsplit(".", 1)[-1]
        if name not in disabled:
            pm.register(importlib.import_module(dotted), name=name)
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # an installed plugin that fails to import
            raise UsageError(f"an installed archfleet plugin failed to load: {exc}") from None
    if environ.get("ARCHFLEET_TRACE_PLUGINS") == "1":
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    hooks = Hooks(pm)
    hooks.check()
    return hooks
