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
    assert any("busy" in r.why for r in plan.rejected)


def test_unplannable_platform_is_reported():
    plan = schedule([A, C], [opt(A, "native", "x", 10)], {"x": 1})
    assert [p for p, _ in plan.unplannable] == [C]


def test_deterministic_ties():
    options = [opt(A, "qemu", "b", 10, True), opt(A, "native", "a", 10), opt(A, "native", "c", 10)]
    first = schedule([A], options, {"a": 1, "b": 1, "c": 1})
    second = schedule([A], list(reversed(options)), {"a": 1, "b": 1, "c": 1})
    assert first == second and str(first.option_for(A)) == "native@a"


def test_node_without_capacity_is_not_used():
    plan = schedule([A], [opt(A, "native", "x", 1), opt(A, "native", "y", 5)], {"x": 0, "y": 1})
    assert str(plan.option_for(A)) == "native@y"
