"""The plugin manager calls every hook through pluggy's own HookCaller: pluggy's wrappers,
ordering and tracing work for plugin authors as pluggy documents them, and archfleet still
names the plugin behind a failure."""

from __future__ import annotations

import asyncio

import pytest

from archfleet.api import hookimpl
from archfleet.errors import Aborted, InfrastructureError, PluginError
from archfleet.manager import make_hooks
from archfleet.model import BuildRequest, NodeFacts, NodeSpec, Option, PlatformResult
from archfleet.platforms import parse

from stubs import AMD, option, request

ARM = parse("linux/arm64")


def hooks_with(plugin, name="p", builtins=()):
    hooks = make_hooks({}, load_entrypoints=False, builtins=builtins)
    hooks.register(plugin, name=name)
    return hooks


def run_hook(raising: BaseException):
    class P:
        @hookimpl
        def archfleet_run(self, option, request, job):
            async def go():
                raise raising
            return go()

    return asyncio.run(hooks_with(P()).run(option(AMD, "n1"), request(), None))


@pytest.mark.parametrize("exc", [Aborted("linux/arm64 failed"), InfrastructureError("n1", "engine gone")])
def test_archfleet_errors_pass_through_with_their_type(exc):
    # the type decides retry-elsewhere vs report: a plugin's ArchfleetError is never re-wrapped
    with pytest.raises(type(exc)) as info:
        run_hook(exc)
    assert info.value is exc


def test_other_exceptions_name_the_plugin_and_hook():
    with pytest.raises(PluginError, match="^plugin 'p' failed in archfleet_run: ValueError: bad$"):
        run_hook(ValueError("bad"))


def test_a_synchronous_failure_names_the_plugin_too():
    class P:
        @hookimpl
        def archfleet_estimate(self, option):
            raise KeyError("x")

    with pytest.raises(PluginError, match="^plugin 'p' failed in archfleet_estimate: KeyError: "):
        hooks_with(P()).estimate(option(AMD, "n1"), request(), None, None)


def test_a_wrong_answer_names_the_plugin_that_gave_it():
    class P:
        @hookimpl
        def archfleet_run(self, option, request, job):
            async def go():
                return "not a result"
            return go()

    with pytest.raises(PluginError, match="^plugin 'p' answered archfleet_run for stub@n1 with str"):
        asyncio.run(hooks_with(P()).run(option(AMD, "n1"), request(), None))


def test_a_new_style_wrapper_sees_and_changes_the_answers():
    """Rule: hooks go through pluggy, so a ``@hookimpl(wrapper=True)`` plugin wraps the whole
    call: it sees every plugin's answer and what it returns is what archfleet uses."""
    seen = []

    class Strategy:
        @hookimpl
        def archfleet_offer(self, platform, request, facts):
            return [Option(platform, "s", "n1", 10.0)]

    class Halve:
        @hookimpl(wrapper=True)
        def archfleet_offer(self, platform):
            answers = yield
            seen.append(answers)
            return [[o.__class__(o.platform, o.strategy, o.node, o.estimate / 2) for o in got] for got in answers]

    hooks = hooks_with(Strategy(), "s")
    hooks.register(Halve(), name="halve")
    facts = (NodeFacts(NodeSpec("n1", transport="test"), True),)
    got = asyncio.run(hooks.offer(AMD, request(), facts))
    assert [o.estimate for o in got] == [5.0]
    assert seen == [[[Option(AMD, "s", "n1", 10.0)]]]


def test_a_wrapper_written_for_seconds_and_basis_still_works_on_an_estimate_answer():
    """Rule: archfleet_estimate answered (seconds, basis) before it could answer an Estimate;
    an Estimate unpacks as that pair, so a wrapper doing ``seconds, basis = yield`` works."""
    from archfleet.model import Estimate

    class Parts:
        @hookimpl
        def archfleet_estimate(self, option):
            return Estimate(4.0, "in parts", (("fixed", 1.0), ("transfer", 0.0), ("work", 3.0), ("push", 0.0)))

    class Old:
        @hookimpl(wrapper=True)
        def archfleet_estimate(self, option):
            seconds, basis = yield
            return seconds * 2, basis + " (doubled)"

    hooks = hooks_with(Parts(), "parts")
    hooks.register(Old(), name="old")
    got = hooks.estimate(option(AMD, "n1"), request(), None, None)
    assert (got.seconds, got.basis) == (8.0, "in parts (doubled)")


def test_tryfirst_decides_a_firstresult_hook():
    class Late:
        @hookimpl
        def archfleet_estimate(self, option):
            return 9.0, "late"

    class Early:
        @hookimpl(tryfirst=True)
        def archfleet_estimate(self, option):
            return 1.0, "early"

    hooks = hooks_with(Early(), "early")
    hooks.register(Late(), name="late")  # registered last: pluggy would call it first without tryfirst
    got = hooks.estimate(option(AMD, "n1"), request(), None, None)
    assert (got.seconds, got.basis) == (1.0, "early")


def test_trace_uses_pluggys_tracing_and_hides_build_arg_values(capsys):
    class P:
        @hookimpl
        def archfleet_estimate(self, option):
            return None

    hooks = make_hooks({"ARCHFLEET_TRACE_PLUGINS": "1"}, load_entrypoints=False, builtins=())
    hooks.register(P(), name="p")
    req = BuildRequest("c", "D", (AMD,), build_args=[("NPM_TOKEN", "s3cr3t-value"), ("VERSION", "1.2.3")])
    hooks.estimate(option(AMD, "n1"), req, None, None)
    err = capsys.readouterr().err
    assert "archfleet_estimate [hook]" in err  # pluggy's own trace format
    assert "NPM_TOKEN" in err and "s3cr3t-value" not in err and "1.2.3" not in err


def test_session_end_errors_never_hide_the_commands_outcome():
    class P:
        @hookimpl
        def archfleet_session_end(self, session):
            raise RuntimeError("closing failed")

    asyncio.run(hooks_with(P()).session_end(object()))  # no exception
