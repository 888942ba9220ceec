"""docs/plugins.md: "A plugin whose hook raises, answers with the wrong type, or implements a
hook archfleet does not have is named in a one-line error; the build does not end in a
traceback." test_plugins.py covers archfleet_offer and unknown hooks; here the other hooks a
build calls: archfleet_probe (a failing plugin takes down only its node), archfleet_estimate,
archfleet_connect and archfleet_run."""

from __future__ import annotations

import asyncio
import math

import pytest

from archfleet import pipeline
from archfleet.api import hookimpl
from archfleet.errors import ArchfleetError, InfrastructureError, PluginError
from archfleet.inventory import Config
from archfleet.manager import make_hooks
from archfleet.model import NodeFacts, NodeSpec
from archfleet.session import Session

from stubs import AMD, ConnectsStubs, Recorder, builds, facts, option, plan, request, scripted, scripted_option, wired


def manager(*plugins):
    hooks = make_hooks({}, load_entrypoints=False, builtins=())
    for name, plugin in plugins:
        hooks.register(plugin, name=name)
    return hooks


def refine(hooks, options, request, node_facts, history):
    return pipeline.estimates(hooks, options, request, node_facts, history)


# -- archfleet_probe ---------------------------------------------------------------------------

class Prober:
    """Answers archfleet_probe for transport "t": node "bad" as ``answer`` says, the others well."""

    def __init__(self, answer):
        self.answer = answer

    @hookimpl
    def archfleet_probe(self, node, config):
        if node.transport != "t":
            return None

        async def probe():
            if node.name != "bad":
                return NodeFacts(node, True, native=(AMD,), builder="buildkit")
            if isinstance(self.answer, BaseException):
                raise self.answer
            return self.answer
        return probe()


@pytest.mark.parametrize("answer,error", [
    (RuntimeError("uname: not found"), "plugin 'prober' failed in archfleet_probe: RuntimeError: uname: not found"),
    ({"reachable": True}, "plugin 'prober' answered archfleet_probe with dict, not NodeFacts"),
], ids=["raises", "wrong-type"])
def test_a_probe_plugin_that_fails_makes_its_node_unreachable_naming_it_and_nothing_else(answer, error):
    pm = manager(("prober", Prober(answer)))
    nodes = [NodeSpec("bad", transport="t"), NodeSpec("good", transport="t"), NodeSpec("odd", transport="nobody")]
    got = asyncio.run(pipeline.probe(pm, Config(local=False), Session(), nodes))
    assert (got["bad"].reachable, got["bad"].error) == (False, error)
    assert got["good"].can_build
    assert (got["odd"].reachable, got["odd"].error) == (False, "no plugin handles transport 'nobody'")


# -- archfleet_estimate ----------------------------------------------------------------------------

class Estimator:
    def __init__(self, answer):
        self.answer = answer

    @hookimpl
    def archfleet_estimate(self, option, request, facts, history):
        return self.answer


@pytest.mark.parametrize("answer,error", [
    ("soon", "plugin 'guess' answered archfleet_estimate with 'soon', not seconds"),
    ((None, "history"), "plugin 'guess' answered archfleet_estimate with (None, 'history'), not seconds"),
    (-1.0, "plugin 'guess' estimated -1.0 seconds for stub@n1"),
    (math.inf, "plugin 'guess' estimated inf seconds for stub@n1"),
    (math.nan, "plugin 'guess' estimated nan seconds for stub@n1"),
])
def test_an_estimate_that_is_not_seconds_names_the_plugin(answer, error):
    pm = manager(("guess", Estimator(answer)))
    with pytest.raises(PluginError) as err:
        refine(pm, [option(AMD, "n1")], request(AMD), facts("n1"), None)
    assert str(err.value) == error


@pytest.mark.parametrize("answer,estimate,basis", [
    ((12.345, "from the CI queue"), 12.35, "from the CI queue"),
    (7, 7.0, "from plugin guess"),
    (None, 10.0, "prior"),
])
def test_an_estimate_in_seconds_is_taken_with_its_basis(answer, estimate, basis):
    (got,) = refine(manager(("guess", Estimator(answer))), [option(AMD, "n1")], request(AMD), facts("n1"), None)
    assert (got.estimate, got.basis) == (estimate, basis)


# -- archfleet_connect and archfleet_run --------------------------------------------------------------

def run(pm, chosen, options):
    ex = wired(pm, request(AMD), facts(*sorted({o.node for o in options})), Recorder(), options)
    return asyncio.run(asyncio.wait_for(ex.run(plan(*chosen)), 10)), ex


def test_a_node_no_plugin_connects_to_is_a_node_failure_and_re_planned():
    """Node n1's transport has no plugin (it was uninstalled since the probe, say): n1 is down
    and amd64 is built on n2."""
    pm, _ = scripted({(AMD, "n2"): builds()}, connects={"n2"})
    first = scripted_option(AMD, "n1", 1.0)
    outcome, ex = run(pm, [first], [first, scripted_option(AMD, "n2", 5.0)])
    assert [r.option.node for r in outcome.results] == ["n2"]
    assert ex.down == {"n1": "node n1: no plugin can connect to transport 'stub'"}


def test_a_connect_plugin_reporting_the_node_gone_re_plans():
    pm, strategy = scripted({(AMD, "n2"): builds()})

    class Refuses:
        @hookimpl(tryfirst=True)
        def archfleet_connect(self, node, facts):
            async def connect():
                raise InfrastructureError(node.name, "SSH connection failed: [Errno 113] No route to host")
            return connect() if node.name == "n1" else None

    pm.register(Refuses(), name="refuses")
    first = scripted_option(AMD, "n1", 1.0)
    outcome, ex = run(pm, [first], [first, scripted_option(AMD, "n2", 5.0)])
    assert [r.option.node for r in outcome.results] == ["n2"]
    assert set(ex.down) == {"n1"}


def test_a_connect_plugin_that_crashes_is_named_and_not_retried():
    pm, strategy = scripted({(AMD, "n2"): builds()})

    class Crashes:
        @hookimpl(tryfirst=True)
        def archfleet_connect(self, node, facts):
            async def connect():
                raise OSError("bad file descriptor")
            return connect()

    pm.register(Crashes(), name="crashes")
    first = scripted_option(AMD, "n1", 1.0)
    outcome, ex = run(pm, [first], [first, scripted_option(AMD, "n2", 5.0)])
    (failure,) = outcome.failures
    assert isinstance(failure.error, PluginError) and ex.down == {}
    assert str(failure.error) == "plugin 'crashes' failed in archfleet_connect: OSError: bad file descriptor"


@pytest.mark.parametrize("answer,error", [
    ("done", "plugin 'sloppy' answered archfleet_run for scripted@n1 with str, not PlatformResult"),
    (None, "no plugin runs strategy 'scripted' (offered for linux/amd64)"),
])
def test_a_run_that_answers_no_platform_result_names_the_plugin_or_the_strategy(answer, error):
    class Sloppy(ConnectsStubs):
        @hookimpl
        def archfleet_run(self, option, request, job):
            if answer is None:
                return None

            async def run():
                return answer
            return run()

    first = scripted_option(AMD, "n1", 1.0)
    outcome, ex = run(manager(("sloppy", Sloppy())), [first], [first, scripted_option(AMD, "n2", 5.0)])
    (failure,) = outcome.failures
    assert isinstance(failure.error, ArchfleetError) and not failure.error.retry_elsewhere
    assert str(failure.error) == error and ex.down == {}
