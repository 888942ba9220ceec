"""The planner's arithmetic and its pins, value by value (planner.py): a node's speed from its
score, cores and load; the prior of an option from the Dockerfile's RUN count; the estimate stage
(pipeline.estimates: every option's hook call gets the request, zero seconds is an estimate; the
other answers and their errors are test_plugin_errors.py's); what ``--node`` and ``--strategy``
pin; the line a rejected option prints when its node's slots are held."""

import pytest

from archfleet.api import hookimpl
from archfleet.errors import UsageError
from archfleet.manager import make_hooks
from archfleet.model import BuildRequest, NodeFacts, NodeSpec, Option
from archfleet.pipeline import estimates
from archfleet.planner import Pin, check_pin_strategies, node_speed, parse_pins, prior_seconds, reference_work, schedule
from archfleet.platforms import parse

ARM = parse("linux/arm64")


def facts(cpus=2, score=None, load=0.0, name="n"):
    return NodeFacts(NodeSpec(name, transport="test"), True, cpus=cpus, score=score, load=load)


@pytest.mark.parametrize("cpus,score,load,speed", [
    (2, None, 0.0, 1.0),              # the reference node: 2 CPUs, not measured, idle
    (8, 2.0, 0.0, 4.0),               # x score, x sqrt(cpus / 2)
    (8, 2.0, 12.0, 4.0 / 1.5),        # a load beyond the CPUs slows it by the excess per CPU
    (8, 2.0, 6.0, 4.0),               # a load below the CPUs does not
    (0, 1.0, 0.0, 0.5 ** 0.5),        # an unknown CPU count counts as one
    (1, 1.0, 3.0, 0.5 ** 0.5 / 3),    # one CPU with two runs waiting: a third of its speed
])
def test_node_speed_is_score_times_root_of_cores_over_load(cpus, score, load, speed):
    assert node_speed(facts(cpus, score, load)) == pytest.approx(speed)


def request_with(tmp_path, text):
    (tmp_path / "Dockerfile").write_text(text)
    return BuildRequest(tmp_path, tmp_path / "Dockerfile", [ARM])


def test_reference_work_is_the_fixed_prior_plus_3_s_per_run(tmp_path):
    """Priors of issue 17 (planner.BASE_WORK = FIXED_LOCAL 0.6 s, RUN_WORK 3 s): an offer's crude
    prior; the estimates plugin counts each step by what it runs instead."""
    assert reference_work(request_with(tmp_path, "FROM a\nRUN x\nRUN y\nRUN z\n")) == pytest.approx(9.6)


def test_a_dockerfile_that_cannot_be_analysed_counts_as_one_run(tmp_path):
    assert reference_work(request_with(tmp_path, "FROM\n")) == pytest.approx(3.6)


def test_prior_seconds_slows_only_the_run_work_under_qemu_rounded_to_hundredths(tmp_path):
    req = request_with(tmp_path, "FROM a\nRUN x\nRUN y\nRUN z\n")
    fast = facts(score=3.0)
    assert prior_seconds(req, fast, emulated=False) == 3.2            # 9.6 / 3
    assert prior_seconds(req, fast, emulated=True) == 24.2            # (0.6 + 9 x 8) / 3
    assert prior_seconds(req, fast, emulated=True, share=0.5) == 12.1


def test_node_pins_keep_the_strategy_they_name():
    assert parse_pins([], ["native@n1"]) == (Pin(None, "native", "n1"),)
    assert parse_pins([], ["linux/arm64=qemu@n2"]) == (Pin(ARM, "qemu", "n2"),)
    assert parse_pins(["linux/arm64=cross"], []) == (Pin(ARM, "cross", None),)


def test_only_a_pinned_strategy_must_exist():
    check_pin_strategies(parse_pins([], ["n1"]), [])  # a node pin names no strategy: nothing to check
    with pytest.raises(UsageError) as err:
        check_pin_strategies(parse_pins(["zig"], []), [])
    assert str(err.value) == "--strategy 'zig': no strategy named 'zig' (known: none; see archfleet plugins)"


class Estimates:
    def __init__(self, answers):
        self.answers = answers

        self.requests = []

    @hookimpl(tryfirst=True)
    def archfleet_estimate(self, option, request, facts, history):
        self.requests.append(request)
        return self.answers.get(option.node)


def refined(tmp_path, answers):
    """The estimate stage as the pipeline runs it, with one plugin answering ``answers`` (node ->
    answer) and no built-in plugin."""
    hooks = make_hooks({}, load_entrypoints=False, builtins=())
    plugin = Estimates(answers)
    hooks.register(plugin, name="guess")
    options = [Option(ARM, "qemu", n, 10.0) for n in ("a", "b", "c")]
    request = request_with(tmp_path, "FROM a\n")
    out = estimates(hooks, options, request, {}, None)
    assert plugin.requests == [request] * len(options)  # every estimate sees the request
    return out


def test_every_option_is_estimated_with_the_request_and_each_keeps_its_own_answer(tmp_path):
    out = refined(tmp_path, {"a": (12.345, "measured"), "b": 7})
    assert [(o.node, o.estimate, o.basis) for o in out] == [
        ("a", 12.35, "measured"), ("b", 7.0, "from plugin guess"), ("c", 10.0, "prior")]


def test_zero_seconds_is_an_estimate(tmp_path):
    assert refined(tmp_path, {"a": 0})[0].estimate == 0.0


def test_a_rejected_option_as_fast_as_the_winner_is_not_called_slower():
    amd = parse("linux/amd64")
    options = [Option(amd, "native", "pi", 3.0), Option(amd, "native", "x86", 3.0)]
    plan = schedule([amd], options, {"pi": 2, "x86": 1}, {"pi": [30.0, 40.0]})
    assert [r.why for r in plan.rejected] == [
        "faster alone (3.0s), but pi's slots are taken 2 by other archfleet runs (the first free in ~30s); "
        "native@x86 ends sooner overall"]


def test_a_pin_naming_what_is_not_there_says_what_is():
    from archfleet.planner import check_pins

    amd = parse("linux/amd64")
    with pytest.raises(UsageError) as err:
        check_pins(parse_pins([], ["linux/s390x=n1"]), [ARM, amd], ["n1"])
    assert str(err.value) == ("--node 'linux/s390x=n1': linux/s390x is not being built "
                              "(--platform: linux/arm64, linux/amd64)")
    with pytest.raises(UsageError) as err:
        check_pins(parse_pins([], ["n9"]), [ARM], ["n1", "n2"])
    assert str(err.value) == "--node 'n9': no node named 'n9' (known: n1, n2; see archfleet ls)"
    with pytest.raises(UsageError) as err:
        check_pins(parse_pins([], ["n9"]), [ARM], [])
    assert str(err.value) == "--node 'n9': no node named 'n9' (known: none; see archfleet ls)"
    check_pins(parse_pins(["qemu"], ["linux/arm64=n1"]), [ARM], ["n1"])  # a pin on every platform, one on arm64
