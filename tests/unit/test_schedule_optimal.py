"""The schedule's promises (planner.py): the exact search finds the least makespan, then the
least sum of finish times, then the first options by (estimate, emulated, strategy, node), as
checking every assignment would; the greedy schedule places the longest platform first, each on
the option that finishes earliest, the first such option on a tie; every rejected option says
why in one line.

The exhaustive check below is the specification: every assignment of one option per platform,
placed in the planner's order (longest fastest option first, then by name), each on its
node's earliest free slot. Estimates are multiples of 0.5 s, so a comparison that tolerated
more than the planner's 1e-9 s would pick a different plan somewhere.
"""

import heapq
import itertools
import random

import pytest

from archfleet.model import Option
from archfleet.planner import EXACT_LIMIT, _key, schedule
from archfleet.platforms import parse

PLATFORMS = [parse(p) for p in ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x")]


def place(assignment, capacity, busy):
    slots = {}
    for node, cap in capacity.items():
        taken = sorted(busy.get(node, ()))[-cap:] if cap > 0 else []
        slots[node] = list(taken) + [0.0] * (cap - len(taken))
        heapq.heapify(slots[node])
    finishes = []
    for opt in assignment:
        start = heapq.heappop(slots[opt.node])
        heapq.heappush(slots[opt.node], start + opt.estimate)
        finishes.append(start + opt.estimate)
    return max(finishes), sum(finishes)


def best_by_hand(platforms, options, capacity, busy):
    """(makespan, sum of finishes, key) of the best assignment, trying every one."""
    by = {p: sorted((o for o in options if o.platform == p), key=_key) for p in platforms}
    order = sorted(platforms, key=lambda p: (-by[p][0].estimate, str(p)))
    best = None
    for assignment in itertools.product(*(by[p] for p in order)):
        makespan, total = place(assignment, capacity, busy)
        cand = (makespan, total, tuple(_key(o) for o in assignment))
        if best is None or cand < best:
            best = cand
    return best


def random_case(rng: random.Random):
    nodes = [f"n{i}" for i in range(rng.randint(1, 3))]
    capacity = {n: rng.randint(1, 2) for n in nodes}
    busy = {n: [rng.randint(1, 12) / 2 for _ in range(rng.randint(0, capacity[n]))] for n in nodes}
    platforms = rng.sample(PLATFORMS, rng.randint(1, 4))
    options = []
    for p in platforms:
        for n in nodes:
            for strategy in rng.sample(["native", "qemu", "cross"], rng.randint(1, 2)):
                options.append(Option(p, strategy, n, rng.randint(1, 20) / 2, emulated=strategy == "qemu"))
        if not any(o.platform == p for o in options):
            options.append(Option(p, "qemu", nodes[0], 5.0, emulated=True))
    return platforms, options, capacity, busy


@pytest.mark.parametrize("seed", range(6))
def test_the_exact_schedule_is_the_best_of_every_assignment(seed):
    rng = random.Random(seed)
    for _ in range(40):
        platforms, options, capacity, busy = random_case(rng)
        plan = schedule(platforms, options, capacity, busy)
        assert plan.exact is True  # a small search space is searched exactly without being asked
        chosen = {s.option.platform: s.option for s in plan.chosen}
        order = sorted(platforms, key=lambda p: (-min(o.estimate for o in options if o.platform == p), str(p)))
        got = place([chosen[p] for p in order], capacity, busy)
        want = best_by_hand(platforms, options, capacity, busy)
        assert (got[0], got[1], tuple(_key(chosen[p]) for p in order)) == want
        assert plan.makespan == want[0]
        assert [s.option.platform for s in plan.chosen] == platforms  # in the order asked for
        assert len(plan.rejected) == len(options) - len(platforms)


def test_greedy_places_the_longest_platform_first():
    """Longest first: s390x takes n1, amd64 the other node. Name order would put amd64 on n1
    first and leave s390x 11 s on n2."""
    s390x, amd64 = parse("linux/s390x"), parse("linux/amd64")
    options = [Option(s390x, "qemu", "n1", 10.0), Option(s390x, "qemu", "n2", 11.0),
               Option(amd64, "native", "n1", 2.0), Option(amd64, "native", "n2", 3.0)]
    plan = schedule([amd64, s390x], options, {"n1": 1, "n2": 1}, exact=False)
    assert plan.exact is False
    assert {str(s.option.platform): s.option.node for s in plan.chosen} == {"linux/s390x": "n1", "linux/amd64": "n2"}
    assert plan.makespan == 10.0


def test_equal_platforms_are_placed_in_name_order():
    amd64, arm64 = parse("linux/amd64"), parse("linux/arm64")
    options = [Option(arm64, "qemu", "n", 5.0), Option(amd64, "native", "n", 5.0)]
    for exact in (True, False):
        plan = schedule([arm64, amd64], options, {"n": 1}, exact=exact)
        assert [(str(s.option.platform), s.start) for s in plan.chosen] == [("linux/arm64", 5.0), ("linux/amd64", 0.0)]


def test_greedy_keeps_the_first_option_on_a_tie():
    """Same finish time: the option sorted first (not emulated before emulated) wins."""
    arm64 = parse("linux/arm64")
    options = [Option(arm64, "qemu", "a", 4.0, emulated=True), Option(arm64, "native", "b", 4.0)]
    plan = schedule([arm64], options, {"a": 1, "b": 1}, exact=False)
    assert str(plan.chosen[0].option) == "native@b"


def test_greedy_waits_for_a_busy_slot_only_when_that_still_finishes_first():
    arm64 = parse("linux/arm64")
    options = [Option(arm64, "native", "fast", 2.0), Option(arm64, "qemu", "slow", 9.0, emulated=True)]
    assert str(schedule([arm64], options, {"fast": 1, "slow": 1}, {"fast": [6.0]}, exact=False).chosen[0].option) \
        == "native@fast"
    assert str(schedule([arm64], options, {"fast": 1, "slow": 1}, {"fast": [8.0]}, exact=False).chosen[0].option) \
        == "qemu@slow"


def test_options_on_nodes_without_slots_are_never_planned():
    arm64 = parse("linux/arm64")
    options = [Option(arm64, "native", "full", 1.0), Option(arm64, "native", "gone", 1.0),
               Option(arm64, "qemu", "ok", 9.0, emulated=True)]
    plan = schedule([arm64], options, {"full": 0, "ok": 1})  # "gone" has no capacity entry at all
    assert str(plan.chosen[0].option) == "qemu@ok" and plan.rejected == ()


def test_nothing_plannable_is_said_per_platform():
    arm64, s390x = parse("linux/arm64"), parse("linux/s390x")
    plan = schedule([arm64, s390x], [Option(arm64, "native", "n", 1.0)], {"n": 1})
    assert plan.unplannable == ((s390x, "no strategy offered a way to build it"),)
    empty = schedule([s390x], [], {"n": 1})
    assert (empty.chosen, empty.rejected, empty.exact) == ((), (), True)
    assert empty.unplannable == ((s390x, "no strategy offered a way to build it"),)


def test_a_search_space_of_exactly_the_limit_is_searched_exactly():
    arm64, amd64 = parse("linux/arm64"), parse("linux/amd64")
    nodes = {f"n{i}": 1 for i in range(1000)}
    a = [Option(arm64, "qemu", n, 100.0 + i) for i, n in enumerate(nodes)]
    b = [Option(amd64, "native", n, 1.0 + i) for i, n in enumerate(list(nodes)[: EXACT_LIMIT // 1000])]
    assert len(a) * len(b) == EXACT_LIMIT
    assert schedule([arm64, amd64], a + b, nodes).exact is True
    assert schedule([arm64, amd64], a + b + [Option(amd64, "native", "n999", 99.0)], nodes).exact is False


def test_each_rejected_option_says_why_in_one_line():
    arm64, amd64 = parse("linux/arm64"), parse("linux/amd64")
    options = [Option(arm64, "native", "pi", 10.0), Option(arm64, "qemu", "x86", 12.0),
               Option(amd64, "native", "x86", 3.0), Option(amd64, "native", "pi", 2.0)]
    plan = schedule([arm64, amd64], options, {"pi": 1, "x86": 1})
    assert {str(s.option) for s in plan.chosen} == {"native@pi", "native@x86"}
    assert {str(r.option): r.why for r in plan.rejected} == {
        "qemu@x86": "slower: 12.0s vs 10.0s",
        "native@pi": "faster alone (2.0s), but pi's slots are taken by other platforms of this run; "
                     "native@x86 ends sooner overall",
    }
    busy = schedule([amd64], options[2:], {"pi": 1, "x86": 1}, {"pi": [30.0]})
    assert [r.why for r in busy.rejected] == [
        "faster alone (2.0s), but pi's slots are taken 1 by other archfleet runs (the first free in ~30s); "
        "native@x86 ends sooner overall"]
    both = schedule([arm64, amd64], options, {"pi": 2, "x86": 1}, {"pi": [30.0]})
    assert {str(s.option) for s in both.chosen} == {"native@pi", "native@x86"}
    why = {str(r.option): r.why for r in both.rejected}
    assert why["native@pi"] == ("faster alone (2.0s), but pi's slots are taken 1 by other archfleet runs (the first "
                                "free in ~30s) and by other platforms of this run; native@x86 ends sooner overall")


@pytest.mark.parametrize("seed", [226, 430])
def test_a_better_makespan_with_a_larger_sum_is_not_pruned(seed):
    """Two cases where a plan 0.5 s shorter has a larger sum of finish times than the first one
    found: pruning by the sum may only cut plans at least as long as the best so far."""
    platforms, options, capacity, busy = random_case(random.Random(seed))
    assert schedule(platforms, options, capacity, busy).makespan == best_by_hand(platforms, options, capacity, busy)[0]


@pytest.mark.parametrize("seed", [94, 1045])
def test_on_a_tie_of_makespan_and_sum_the_first_options_win(seed):
    """Cases where two plans tie on both makespan and sum of finishes and the search meets the
    one with the later options first: the option order decides, so equal inputs give equal plans."""
    platforms, options, capacity, busy = random_case(random.Random(seed))
    plan = schedule(platforms, options, capacity, busy)
    chosen = {s.option.platform: s.option for s in plan.chosen}
    order = sorted(platforms, key=lambda p: (-min(o.estimate for o in options if o.platform == p), str(p)))
    assert tuple(_key(chosen[p]) for p in order) == best_by_hand(platforms, options, capacity, busy)[2]
