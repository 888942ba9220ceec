from archfleet.model import Option
from archfleet.planner import schedule
from archfleet.platforms import parse

A, B, C = parse("linux/amd64"), parse("linux/arm64"), parse("linux/s390x")


def opt(p, strategy, node, est, emulated=False):
    return Option(p, strategy, node, est, emulated=emulated)


def test_fastest_option_per_platform():
    plan = schedule([A, B], [opt(A, "native", "x", 10), opt(B, "qemu", "x", 80, True), opt(B, "native", "pi", 30)],
                    {"x": 4, "pi": 1})
    assert str(plan.option_for(B)) == "native@pi"
    assert plan.makespan == 30


def test_capacity_moves_work_to_another_node():
    # one slot on x: the second platform finishes sooner on the slower y than queued on x
    plan = schedule([A, B], [opt(A, "native", "x", 10), opt(B, "native", "x", 10), opt(B, "qemu", "y", 15, True)],
                    {"x": 1, "y": 1})
    assert {str(plan.option_for(A)), str(plan.option_for(B))} == {"native@x", "qemu@y"}
    assert plan.makespan == 15
    assert any("slots are taken" in r.why for r in plan.rejected)


def test_unplannable_platform_is_reported():
    plan = schedule([A, C], [opt(A, "native", "x", 10)], {"x": 1})
    assert [p for p, _ in plan.unplannable] == [C]


def test_nothing_plannable_at_all():
    for exact in (None, False):
        plan = schedule([A, C], [opt(A, "native", "down", 10)], {"down": 0}, exact=exact)
        assert [p for p, _ in plan.unplannable] == [A, C] and plan.chosen == () and plan.makespan == 0


def test_deterministic_ties():
    options = [opt(A, "qemu", "b", 10, True), opt(A, "native", "a", 10), opt(A, "native", "c", 10)]
    first = schedule([A], options, {"a": 1, "b": 1, "c": 1})
    second = schedule([A], list(reversed(options)), {"a": 1, "b": 1, "c": 1})
    assert first == second and str(first.option_for(A)) == "native@a"


def test_node_without_capacity_is_not_used():
    plan = schedule([A], [opt(A, "native", "x", 1), opt(A, "native", "y", 5)], {"x": 0, "y": 1})
    assert str(plan.option_for(A)) == "native@y"


def test_exact_beats_greedy_where_greedy_is_fooled():
    # Greedy (longest first, each to its earliest finish) puts A on x (finish 10), then B and C
    # both want x... The optimum spreads them: A on y (12), B and C on x (10, 10) -> makespan 12? no:
    # x has one slot: B, C on x run one after the other. Hand-checked below.
    plats = [A, B, C]
    opts = [opt(A, "native", "x", 10), opt(A, "native", "y", 11),
            opt(B, "native", "x", 6), opt(B, "qemu", "y", 20, True),
            opt(C, "native", "x", 6), opt(C, "qemu", "y", 20, True)]
    greedy = schedule(plats, opts, {"x": 1, "y": 1}, exact=False)
    exact = schedule(plats, opts, {"x": 1, "y": 1}, exact=True)
    # greedy: A->x (10), B->x (16) vs y (20): x; C->x (22) vs y (20): y  => makespan 20
    assert greedy.makespan == 20
    # exact: A->y (11), B->x (6), C->x (12) => makespan 12
    assert exact.makespan == 12
    assert str(exact.option_for(A)) == "native@y"


def test_busy_slots_delay_a_node():
    plan = schedule([A], [opt(A, "native", "x", 10), opt(A, "native", "y", 14)], {"x": 1, "y": 1}, busy={"x": [8]})
    assert str(plan.option_for(A)) == "native@y" and plan.makespan == 14
    why = next(r.why for r in plan.rejected if r.option.node == "x")
    assert "1 by other archfleet runs (the first free in ~8s)" in why and "this run" not in why


def test_an_overcommitted_node_frees_a_slot_when_enough_builds_end():
    # three builds from other runs on two slots: one slot frees when two of them are done (at 5)
    plan = schedule([A], [opt(A, "native", "x", 1)], {"x": 2}, busy={"x": [1, 5, 9]})
    assert plan.chosen[0].start == 5


def test_pins():
    from archfleet.planner import apply_pins, parse_pins

    opts = [opt(A, "native", "x", 10), opt(A, "qemu", "y", 5, True), opt(B, "qemu", "x", 80, True),
            opt(B, "native", "pi", 30)]
    only_qemu_b = apply_pins(opts, parse_pins(["linux/arm64=qemu"], []))
    assert {str(o) for o in only_qemu_b} == {"native@x", "qemu@y", "qemu@x"}
    pinned = apply_pins(opts, parse_pins([], ["linux/arm64=native@pi"]))
    assert [str(o) for o in pinned if o.platform == B] == ["native@pi"]
    everywhere_x = apply_pins(opts, parse_pins([], ["x"]))
    assert {o.node for o in everywhere_x} == {"x"}


def test_pin_errors():
    import pytest

    from archfleet.errors import UsageError
    from archfleet.planner import parse_pins

    with pytest.raises(UsageError, match="--node 'linux/arm65=pi'"):
        parse_pins([], ["linux/arm65=pi"])
    with pytest.raises(UsageError, match="--strategy"):
        parse_pins(["linux/arm64="], [])


def test_deterministic_exact_with_many_equal_options():
    opts = [opt(p, s, n, 10) for p in (A, B, C) for s in ("native", "cross") for n in ("a", "b", "c")]
    plans = {schedule([A, B, C], opts, {"a": 1, "b": 1, "c": 1}) for _ in range(3)}
    plans.add(schedule([A, B, C], list(reversed(opts)), {"a": 1, "b": 1, "c": 1}))
    assert len(plans) == 1
    assert next(iter(plans)).makespan == 10


def test_equal_makespan_prefers_the_plan_where_platforms_finish_sooner():
    """s390x on y sets the makespan either way; amd64 must not queue behind the two emulated
    builds on x (finishing at 20) when the idle z finishes it at 3."""
    D = parse("linux/arm/v7")
    opts = [opt(A, "native", "x", 2), opt(A, "native", "z", 3),
            opt(B, "qemu", "x", 18, True), opt(D, "qemu", "x", 18, True), opt(C, "qemu", "y", 22, True)]
    plan = schedule([A, B, D, C], opts, {"x": 2, "y": 2, "z": 2})
    assert plan.makespan == 22
    assert str(plan.option_for(A)) == "native@z"
    assert any(r.option.node == "x" and "slots are taken" in r.why for r in plan.rejected)
