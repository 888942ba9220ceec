"""hookcall: an ArchfleetError a plugin raises keeps its type (Aborted stays an abort, so no
platform reports it as its own failure); anything else is a PluginError naming the plugin;
the trace never shows build-arg values."""

from __future__ import annotations

import asyncio

import pluggy
import pytest

from archfleet import hookspecs
from archfleet.api import hookimpl
from archfleet.errors import Aborted, InfrastructureError, PluginError
from archfleet.hookcall import call_first, resolve
from archfleet.model import BuildRequest

from stubs import AMD, option, request


def manager(plugin) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("archfleet")
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name="p")
    return pm


def run_hook(raising: BaseException):
    class P:
        @hookimpl
        def archfleet_run(self, option, request, context):
            async def go():
                raise raising
            return go()

    pm = manager(P())
    name, awaitable = call_first(pm, "archfleet_run", option=option(AMD, "n1"), request=request(), context=None)
    return asyncio.run(resolve(name, "archfleet_run", awaitable))


@pytest.mark.parametrize("exc", [Aborted("linux/arm64 failed"), InfrastructureError("n1", "engine gone")])
def test_archfleet_errors_pass_through_with_their_type(exc):
    with pytest.raises(type(exc)) as info:
        run_hook(exc)
    assert info.value is exc


def test_other_exceptions_name_the_plugin_and_hook():
    with pytest.raises(PluginError, match="^plugin 'p' failed in archfleet_run: ValueError: bad$"):
        run_hook(ValueError("bad"))


def test_trace_hides_build_arg_values(monkeypatch, capsys):
    monkeypatch.setenv("ARCHFLEET_TRACE_PLUGINS", "1")

    class P:
        @hookimpl
        def archfleet_offer(self, platform, request, facts):
            return []

    req = BuildRequest("c", "D", (AMD,), build_args=[("NPM_TOKEN", "s3cr3t-value")])  # short: not truncated
    call_first(manager(P()), "archfleet_offer", platform=AMD, request=req, facts=())
    err = capsys.readouterr().err
    assert "NPM_TOKEN" in err and "s3cr3t-value" not in err and "'***'" in err
