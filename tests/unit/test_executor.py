"""The executor's estimate of when a node has a free slot, which picks the fallback option."""

import time

from archfleet.executor import Executor
from archfleet.model import NodeFacts, NodeSpec
from archfleet.platforms import parse


def executor(busy=(), max_builds=2):
    facts = {"n": NodeFacts(NodeSpec("n", transport="ssh", settings={"host": "h"}, max_builds=max_builds), True, busy=busy)}
    return Executor(None, facts, None, connect=None, run_option=None, replan=None)


def test_free_node_has_no_wait():
    assert executor()._wait_for_slot("n") == 0.0


def test_other_runs_slots_count_until_they_end():
    ex = executor(busy=(30.0, 50.0))
    assert 29 <= ex._wait_for_slot("n") <= 30
    ex.t0 -= 40  # 40 s later: the first has ended
    assert ex._wait_for_slot("n") == 0.0


def test_own_and_foreign_builds_together():
    ex = executor(busy=(20.0,), max_builds=2)
    ex._busy["n"][parse("linux/amd64")] = (time.monotonic(), 10.0)
    assert 9 <= ex._wait_for_slot("n") <= 10  # two taken: the first ends after ~10 s
    ex._busy["n"][parse("linux/arm64")] = (time.monotonic(), 60.0)
    assert 19 <= ex._wait_for_slot("n") <= 20  # three on two slots: one frees when two have ended
