"""The executor's fallback (concepts.md "The run", archfleet.executor's docstring), rules not
covered by test_executor_failures.py: an InfrastructureError re-plans the platform on the
next-best option, judged by its estimate plus the wait for a slot on its node; the failed node
is marked down and no later re-plan uses it; every error that is not an InfrastructureError
fails the platform where it happened, with no other node tried."""

from __future__ import annotations

import asyncio

import pytest

from archfleet.errors import (BuildFailed, InfrastructureError, PluginError, RegistryError, RegistryRefused,
                              VerificationFailed)

from stubs import (wired, AMD, ARM, Recorder, builds, facts, plan, raises, request, scripted,
                   scripted_option as option)

BOUND = 10.0


def run(plays, chosen, options, *, max_builds=4, busy=None, until=None, **req):
    """Run ``chosen`` with ``options`` as the alternatives; ``until``: an awaitable-maker run
    beside the executor (to release a play once something happened)."""
    pm, strategy = scripted(plays)
    nodes = sorted({o.node for o in options})
    ex = wired(pm, request(*dict.fromkeys(o.platform for o in chosen), **req),
               facts(*nodes, max_builds=max_builds, busy=busy), Recorder(), options)

    async def scenario():
        running = asyncio.ensure_future(ex.run(plan(*chosen)))
        if until is not None:
            await asyncio.wait_for(until(), BOUND)
        return await asyncio.wait_for(running, BOUND)

    return asyncio.run(scenario()), strategy, ex


def nodes_tried(strategy, platform):
    return [e[2] for e in strategy.log if e[0] == "start" and e[1] == platform]


ENGINE_GONE = InfrastructureError("n1", "engine gone")


@pytest.mark.parametrize("busy,expected", [
    (None, "n2"),                       # n2: 5 s, free  -> beats n3's 20 s
    ({"n2": (100.0, 100.0)}, "n3"),     # n2: 5 s after ~100 s for a slot other runs hold -> n3's 20 s wins
])
def test_the_next_best_option_counts_the_wait_for_a_slot(busy, expected):
    chosen = option(AMD, "n1", 1.0)
    alternatives = [chosen, option(AMD, "n2", 5.0), option(AMD, "n3", 20.0)]
    plays = {(AMD, "n1"): raises(ENGINE_GONE), (AMD, "n2"): builds(), (AMD, "n3"): builds()}
    outcome, strategy, ex = run(plays, [chosen], alternatives, max_builds=2, busy=busy)
    assert outcome.failures == ()
    assert nodes_tried(strategy, AMD) == ["n1", expected]
    assert [r.option.node for r in outcome.results] == [expected]
    assert outcome.replans == ((AMD, "scripted@n1", "node n1: engine gone"),)


def test_this_runs_own_builds_count_in_the_wait_too():
    """arm64 holds n2's only slot for its 100 s estimate: amd64's fallback goes to n3 (20 s)
    rather than queue behind it for a 5 s build."""
    arm_go, amd_at_gate = asyncio.Event(), asyncio.Event()
    arm = option(ARM, "n2", 100.0)
    amd = option(AMD, "n1", 1.0)
    plays = {(ARM, "n2"): builds(until=arm_go), (AMD, "n1"): raises(ENGINE_GONE),
             (AMD, "n2"): builds(), (AMD, "n3"): builds(at_gate=amd_at_gate)}

    async def then_release_arm():
        await amd_at_gate.wait()
        arm_go.set()

    outcome, strategy, _ = run(plays, [amd, arm], [amd, arm, option(AMD, "n2", 5.0), option(AMD, "n3", 20.0)],
                               max_builds=1, until=then_release_arm)
    assert outcome.failures == ()
    assert nodes_tried(strategy, AMD) == ["n1", "n3"]


def test_a_node_marked_down_is_not_used_again_in_the_run():
    """n1 fails amd64 (engine gone): n1 is down. amd64's next options, another strategy on n1
    (cheaper) and n2, give n2; n2 then fails too, and n3 is next, never n1."""
    first = option(AMD, "n1", 1.0)
    alternatives = [first, option(AMD, "n1", 2.0, strategy="other"), option(AMD, "n2", 10.0),
                    option(AMD, "n3", 30.0)]
    plays = {(AMD, "n1"): raises(ENGINE_GONE), (AMD, "n2"): raises(InfrastructureError("n2", "connection lost")),
             (AMD, "n3"): builds()}
    outcome, strategy, ex = run(plays, [first], alternatives)
    assert outcome.failures == ()
    assert nodes_tried(strategy, AMD) == ["n1", "n2", "n3"]
    assert set(ex.down) == {"n1", "n2"} and ex.down["n1"] == "node n1: engine gone"
    assert [r.option.node for r in outcome.results] == ["n3"]
    assert [why for _, _, why in outcome.replans] == ["node n1: engine gone", "node n2: connection lost"]


def test_the_node_the_error_names_is_the_one_marked_down():
    """An InfrastructureError names the node that failed; it is that node (here the registry
    proxy n9, not n1 where the build ran) that is not used again."""
    first = option(AMD, "n1", 1.0)
    alternatives = [first, option(AMD, "n9", 2.0), option(AMD, "n1", 3.0, strategy="other")]
    plays = {(AMD, "n1", "scripted"): raises(InfrastructureError("n9", "tunnel closed")),
             (AMD, "n1", "other"): builds(), (AMD, "n9"): builds()}
    outcome, strategy, ex = run(plays, [first], alternatives)
    assert set(ex.down) == {"n9"}
    assert [r.option for r in outcome.results] == [option(AMD, "n1", 3.0, strategy="other")]


def test_no_option_left_fails_naming_the_platform_and_every_node_was_tried_once():
    first = option(AMD, "n1", 1.0)
    alternatives = [first, option(AMD, "n2", 5.0)]
    plays = {(AMD, "n1"): raises(ENGINE_GONE), (AMD, "n2"): raises(InfrastructureError("n2", "out of disk"))}
    outcome, strategy, _ = run(plays, [first], alternatives)
    assert nodes_tried(strategy, AMD) == ["n1", "n2"]
    (failure,) = outcome.failures
    assert isinstance(failure.error, BuildFailed)
    assert failure.line() == "linux/amd64 failed on scripted@n2: node n2: out of disk; no other option left"


@pytest.mark.parametrize("error", [
    BuildFailed("build failed: executor failed running [/bin/sh -c make]: exit code: 2"),
    RegistryError("manifest invalid", 400),
    RegistryRefused("push refused: denied", 403),
    VerificationFailed("requested linux/amd64 but the image pushed for it is linux/386"),
], ids=lambda e: type(e).__name__)
def test_an_error_that_is_not_the_nodes_is_not_retried_elsewhere(error):
    first = option(AMD, "n1", 1.0)
    plays = {(AMD, "n1"): raises(error), (AMD, "n2"): builds()}
    outcome, strategy, ex = run(plays, [first], [first, option(AMD, "n2", 5.0)])
    assert nodes_tried(strategy, AMD) == ["n1"]
    assert ex.down == {} and outcome.replans == ()
    (failure,) = outcome.failures
    assert failure.error is error and failure.line() == f"linux/amd64 failed on scripted@n1: {error}"


def test_a_plugin_crash_is_a_plugin_error_naming_it_and_is_not_retried():
    first = option(AMD, "n1", 1.0)
    plays = {(AMD, "n1"): raises(KeyError("arch")), (AMD, "n2"): builds()}
    outcome, strategy, ex = run(plays, [first], [first, option(AMD, "n2", 5.0)])
    assert nodes_tried(strategy, AMD) == ["n1"] and ex.down == {}
    (failure,) = outcome.failures
    assert isinstance(failure.error, PluginError)
    assert str(failure.error) == "plugin 'scripted' failed in archfleet_run: KeyError: 'arch'"
