"""The push gate (README: "holds every push until all platforms are built"; design.md "The push
gate"): it opens only when every platform is built, one platform failing for good raises in
every strategy waiting there so nothing is pushed, --allow-partial lets the others push, a
strategy that never pushes still counts as built, and a strategy frees its node's build slot
when it reaches the gate.

Each test scripts the strategies (``stubs.Scripted``) and synchronises on events the plays set,
never on sleeps. A rule that breaks shows as a wrong order in the log, or as a run that never
ends (bounded by ``BOUND`` seconds)."""

from __future__ import annotations

import asyncio

import pytest

from archfleet.errors import Aborted, BuildFailed
from archfleet.executor import Job, PushGate, Slot

from stubs import (wired, AMD, ARM, S390, Recorder, builds, facts, plan, raises, request, scripted,
                   scripted_option as option)

BOUND = 10.0  # seconds: a gate that never opens fails the test instead of hanging the suite


def executor(pm, chosen, *, max_builds=4, **req):
    nodes = sorted({o.node for o in chosen})
    return wired(pm, request(*[o.platform for o in chosen], **req), facts(*nodes, max_builds=max_builds),
                 Recorder(), chosen)


async def bounded(awaitable):
    return await asyncio.wait_for(awaitable, BOUND)


# -- PushGate on its own --------------------------------------------------------------------------

def test_the_gate_opens_only_when_the_last_platform_is_built():
    async def scenario():
        gate = PushGate([AMD, ARM, S390])
        waiter = asyncio.ensure_future(gate.wait())
        for p in (AMD, ARM):
            gate.built(p)
            await asyncio.sleep(0)  # let the waiter run if it could
            assert not waiter.done(), f"the gate opened with {p} built but not linux/s390x"
        gate.built(AMD)  # built twice: still one platform, the gate stays shut
        await asyncio.sleep(0)
        assert not waiter.done()
        gate.built(S390)
        await bounded(waiter)

    asyncio.run(scenario())


def test_only_a_builds_one_platform_may_push_while_it_exports():
    """Rule (Job.alone): with more platforms the gate opens only once every export is read, so a
    platform whose export fails has let nothing be pushed; alone, nothing else can be."""
    assert PushGate([AMD]).alone(AMD)
    assert not PushGate([AMD]).alone(ARM)
    two = PushGate([AMD, ARM])
    two.built(ARM)
    assert not two.alone(AMD)  # the last to build, but not alone: it pushes after its export
    broken = PushGate([AMD])
    broken.fail("linux/amd64 failed")
    assert not broken.alone(AMD)


def test_a_failure_raises_aborted_in_every_waiter_with_the_first_reason():
    async def scenario():
        gate = PushGate([AMD, ARM, S390])
        gate.built(AMD)
        gate.built(S390)
        waiters = [asyncio.ensure_future(gate.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        gate.fail("linux/arm64 failed")
        gate.fail("linux/s390x failed")  # a later failure does not replace the first reason
        got = await bounded(asyncio.gather(*waiters, return_exceptions=True))
        assert [type(e) for e in got] == [Aborted] * 3
        assert {str(e) for e in got} == {"linux/arm64 failed"}
        assert gate.failed == "linux/arm64 failed"
        gate.built(ARM)  # built after the failure: the gate stays broken
        with pytest.raises(Aborted):
            await bounded(gate.wait())

    asyncio.run(scenario())


def test_ready_to_push_frees_the_slot_before_it_waits():
    async def scenario():
        semaphore = asyncio.Semaphore(1)
        slot = Slot(semaphore)
        await slot.acquire()
        gate = PushGate([AMD, ARM])
        job = Job(option(AMD, "n1"), None, None, Recorder(), gate, slot)
        waiting = asyncio.ensure_future(job.ready_to_push())
        await asyncio.sleep(0)
        assert not semaphore.locked(), "the slot is still held while the strategy waits at the gate"
        assert not waiting.done()
        gate.built(ARM)
        await bounded(waiting)
        slot.release()  # released once only: a second release must not add a slot
        await semaphore.acquire()
        assert semaphore.locked(), "the slot was released twice: the node now runs one build too many"

    asyncio.run(scenario())


# -- the gate in a run ------------------------------------------------------------------------------

def test_no_platform_pushes_before_every_platform_is_built():
    """amd64 reaches the gate first; arm64 is still building. amd64 must not push until arm64 is
    built: in the log, ("built", arm64) comes before any ("pushed", ...)."""
    arm_may_finish, amd_at_gate = asyncio.Event(), asyncio.Event()
    pm, strategy = scripted({(AMD, "n1"): builds(at_gate=amd_at_gate), (ARM, "n2"): builds(until=arm_may_finish)})
    chosen = [option(AMD, "n1"), option(ARM, "n2")]

    async def scenario():
        run = asyncio.ensure_future(executor(pm, chosen).run(plan(*chosen)))
        await bounded(amd_at_gate.wait())
        arm_may_finish.set()
        return await bounded(run)

    outcome = asyncio.run(scenario())
    assert outcome.failures == () and {r.platform for r in outcome.results} == {AMD, ARM}
    log = strategy.log
    first_push = min(i for i, e in enumerate(log) if e[0] == "pushed")
    assert log.index(("built", ARM)) < first_push, log
    assert {e[1] for e in log if e[0] == "pushed"} == {AMD, ARM}


def test_one_failure_raises_in_every_waiting_strategy_and_nothing_is_pushed():
    """amd64 and s390x wait at the gate; then arm64 fails for good. Both waiters' ready_to_push
    raises (the run cancels them, or the gate's Aborted), neither pushes, arm64 is the failure."""
    amd_at, s390_at = asyncio.Event(), asyncio.Event()
    both_waiting = asyncio.Event()
    pm, strategy = scripted({(AMD, "n1"): builds(at_gate=amd_at), (S390, "n1"): builds(at_gate=s390_at),
                             (ARM, "n2"): raises(BuildFailed("build failed: exit code: 1"), after=both_waiting)})
    chosen = [option(AMD, "n1"), option(ARM, "n2"), option(S390, "n1")]

    async def scenario():
        run = asyncio.ensure_future(executor(pm, chosen).run(plan(*chosen)))
        await bounded(asyncio.gather(amd_at.wait(), s390_at.wait()))
        both_waiting.set()
        return await bounded(run)

    outcome = asyncio.run(scenario())
    assert [f.platform for f in outcome.failures] == [ARM]
    assert outcome.results == ()
    assert not [e for e in strategy.log if e[0] == "pushed"], strategy.log
    raised = {e[1]: e[2] for e in strategy.log if e[0] == "gate raised"}
    assert set(raised) == {AMD, S390}
    assert set(raised.values()) <= {"CancelledError", "Aborted"}


def test_with_allow_partial_the_others_push_without_the_failed_platform():
    amd_at, s390_at = asyncio.Event(), asyncio.Event()
    both_waiting = asyncio.Event()
    pm, strategy = scripted({(AMD, "n1"): builds(at_gate=amd_at), (S390, "n1"): builds(at_gate=s390_at),
                             (ARM, "n2"): raises(BuildFailed("build failed: exit code: 1"), after=both_waiting)})
    chosen = [option(AMD, "n1"), option(ARM, "n2"), option(S390, "n1")]

    async def scenario():
        run = asyncio.ensure_future(executor(pm, chosen, allow_partial=True).run(plan(*chosen)))
        await bounded(asyncio.gather(amd_at.wait(), s390_at.wait()))
        both_waiting.set()
        return await bounded(run)

    outcome = asyncio.run(scenario())
    assert [f.platform for f in outcome.failures] == [ARM]
    assert {r.platform for r in outcome.results} == {AMD, S390}
    log = strategy.log
    assert {e[1] for e in log if e[0] == "pushed"} == {AMD, S390}
    assert log.index(("raised", ARM, "BuildFailed")) < min(i for i, e in enumerate(log) if e[0] == "pushed")


def test_a_strategy_that_never_pushes_still_counts_as_built():
    """A strategy may finish without reaching the gate (a reuse plugin, a build without --push):
    the platform counts as built, so the gate still opens for the others."""
    pm, strategy = scripted({(AMD, "n1"): builds(push=False), (ARM, "n2"): builds()})
    chosen = [option(AMD, "n1"), option(ARM, "n2")]
    outcome = asyncio.run(bounded(executor(pm, chosen).run(plan(*chosen))))
    assert outcome.failures == ()
    assert ("pushed", ARM) in strategy.log and ("pushed", AMD) not in strategy.log


def test_a_strategy_at_the_gate_frees_its_node_slot_for_a_queued_build():
    """Node n1 has one build slot and two platforms. amd64 builds first and waits at the gate;
    arm64, queued for the slot, must start then (or the run would wait for ever: amd64 waits for
    arm64 to be built, arm64 for amd64's slot). Never two builds on n1 at once."""
    pm, strategy = scripted({(AMD, "n1"): builds(), (ARM, "n1"): builds()})
    chosen = [option(AMD, "n1"), option(ARM, "n1")]
    outcome = asyncio.run(bounded(executor(pm, chosen, max_builds=1).run(plan(*chosen))))
    assert outcome.failures == ()
    log = [e[:2] for e in strategy.log]
    assert log[:3] == [("start", AMD), ("built", AMD), ("start", ARM)], strategy.log
    assert log.index(("built", ARM)) < log.index(("pushed", AMD))
