"""What the executor does with a failing platform (archfleet.executor's docstring): the error's
type decides; a failure for good cancels the platforms still running unless --allow-partial,
and only the failing platform is reported."""

from __future__ import annotations

import asyncio

import pytest

from archfleet import pipeline
from archfleet.errors import BuildFailed, PlatformsFailed

from stubs import AMD, ARM, S390, Recorder, StubTransport, executor, facts, fails, ok, option, plan, request, slow

FAIL_LINES = ("#5 0.1 Connection refused",
              "executor failed running [/bin/sh -c echo Connection refused && exit 1]: exit code: 1")


def run(transports, chosen, options=None, **req):
    reporter = Recorder()
    platforms = tuple(o.platform for o in chosen)
    ex = executor(transports, request(*platforms, **req), facts(*transports), reporter, list(options or chosen))
    outcome = asyncio.run(ex.run(plan(*chosen)))
    return outcome, reporter, ex


def test_build_failure_printing_connection_refused_is_not_retried_on_another_node():
    n1 = StubTransport("n1", fails(*FAIL_LINES), alive=True)
    n2 = StubTransport("n2", ok())
    first = option(AMD, "n1", 1.0)
    outcome, reporter, ex = run({"n1": n1, "n2": n2}, [first], [first, option(AMD, "n2", 5.0)])
    assert [f.platform for f in outcome.failures] == [AMD]
    assert isinstance(outcome.failures[0].error, BuildFailed)
    assert n2.runs == [] and outcome.replans == () and ex.down == {}


def test_engine_gone_is_replanned_on_the_next_option():
    n1 = StubTransport("n1", fails(*FAIL_LINES), alive=False)
    n2 = StubTransport("n2", ok())
    first = option(AMD, "n1", 1.0)
    outcome, reporter, ex = run({"n1": n1, "n2": n2}, [first], [first, option(AMD, "n2", 5.0)])
    assert outcome.failures == ()
    assert [r.option.node for r in outcome.results] == ["n2"]
    assert "n1" in ex.down and len(outcome.replans) == 1
    assert reporter.of("replanned")[0][1] == option(AMD, "n2", 5.0)


def test_no_option_left_names_the_platform():
    n1 = StubTransport("n1", fails(*FAIL_LINES), alive=False)
    outcome, _, _ = run({"n1": n1}, [option(AMD, "n1")])
    (failure,) = outcome.failures
    assert failure.line().startswith("linux/amd64 failed on stub@n1: node n1: engine gone")
    assert failure.line().endswith("; no other option left")


def test_a_failure_for_good_cancels_the_platforms_still_building():
    n1 = StubTransport("n1", fails(*FAIL_LINES, delay=0.05))
    n2 = StubTransport("n2", slow(30))
    outcome, reporter, _ = run({"n1": n1, "n2": n2}, [option(AMD, "n1"), option(ARM, "n2")])
    assert len(n2.cancelled) == 1  # the transport saw the cancellation (it kills the CLI there)
    assert n2.leases_taken == n2.leases_dropped == 1  # and the lease was released
    assert [f.platform for f in outcome.failures] == [AMD]
    assert outcome.results == ()
    assert [a.outcome for a in outcome.attempts if a.option.platform == ARM] == ["cancelled"]


def test_with_allow_partial_the_others_go_on():
    n1 = StubTransport("n1", fails(*FAIL_LINES, delay=0.05))
    n2 = StubTransport("n2", slow(0.3))
    outcome, reporter, _ = run({"n1": n1, "n2": n2}, [option(AMD, "n1"), option(ARM, "n2")], allow_partial=True)
    assert n2.cancelled == []
    assert [r.platform for r in outcome.results] == [ARM]
    assert [f.platform for f in outcome.failures] == [AMD]


def test_platforms_stopped_by_a_failure_are_not_reported_as_failures():
    # arm64 and s390x are built and wait at the push gate when amd64 fails
    n1 = StubTransport("n1", fails(*FAIL_LINES, delay=0.2))
    n2 = StubTransport("n2", ok())
    chosen = [option(AMD, "n1"), option(ARM, "n2"), option(S390, "n2")]
    outcome, reporter, _ = run({"n1": n1, "n2": n2}, chosen, push=True, tags=("reg/app:1",))
    assert [f.platform for f in outcome.failures] == [AMD]
    assert [call[0].platform for call in reporter.of("failed")] == [AMD]
    stopped = [state for o, state in reporter.of("status") if o.platform != AMD and state.startswith("cancelled")]
    assert stopped == ["cancelled: linux/amd64 failed"] * 2


def test_the_final_error_is_one_line_naming_the_failing_platform_once():
    n1 = StubTransport("n1", fails(*FAIL_LINES, delay=0.2))
    n2 = StubTransport("n2", ok())
    chosen = [option(AMD, "n1"), option(ARM, "n2"), option(S390, "n2")]
    outcome, _, _ = run({"n1": n1, "n2": n2}, chosen, push=True, tags=("reg/app:1",))
    err = pipeline.failed(outcome.failures, pushed_nothing=True)
    assert isinstance(err, PlatformsFailed) and err.exit_code == 1
    assert str(err) == ("linux/amd64 failed on stub@n1: build failed: executor failed running "
                        "[/bin/sh -c echo Connection refused && exit 1]: exit code: 1; nothing was pushed to the tags")
    assert "\n" not in str(err) and "Aborted" not in str(err)


def test_a_reporter_that_raises_does_not_fail_the_build(capsys):
    class Broken:
        def __getattr__(self, name):
            def method(*args):
                raise ValueError(f"closing tag '[/]' in {name}")
            return method

    n1 = StubTransport("n1", ok(["#5 [2/2] RUN sed -i s/[/]/-/g /etc/motd"]))
    ex = executor({"n1": n1}, request(AMD), facts("n1"), Broken(), [option(AMD, "n1")])
    outcome = asyncio.run(ex.run(plan(option(AMD, "n1"))))
    assert outcome.failures == () and [r.platform for r in outcome.results] == [AMD]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("archfleet: warning: progress output failed")


def test_a_platform_after_another_of_the_same_run_on_a_one_slot_node_does_not_wait_on_its_lease(tmp_path, monkeypatch):
    """Rule (executor._claim_slot): the leases this run's finished builds on a node are dropping
    are gone before the next build there claims; the fresh-user helper saw arm64 wait ~1 s on
    amd64's lease (dropped in the background) and say "other archfleet runs" held the slot."""
    from archfleet import leases

    class SlowDrop(leases.LocalLeases):
        async def drop(self, root, key, name, timeout=5):
            await asyncio.sleep(0.3)  # a node a round trip away
            await super().drop(root, key, name, timeout)

    class Node(StubTransport):
        @property
        def leases(self):
            return SlowDrop()

    monkeypatch.setenv(leases.ROOT_ENV, str(tmp_path))
    n1 = Node("n1", ok())
    reporter = Recorder()
    chosen = [option(AMD, "n1"), option(ARM, "n1")]
    ex = executor({"n1": n1}, request(AMD, ARM), facts("n1", max_builds=1), reporter, chosen)

    async def scenario():
        outcome = await ex.run(plan(*chosen))
        await ex.close()
        return outcome

    outcome = asyncio.run(scenario())
    assert sorted(str(r.platform) for r in outcome.results) == ["linux/amd64", "linux/arm64"]
    assert not [s for s in reporter.of("status") if "waiting for a slot" in s[1]], reporter.of("status")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # both leases dropped
