"""The built-in estimates through the real plugins and a real history file."""

import asyncio
from pathlib import Path

import attrs
import pytest

from archfleet.history import History, view_for
from archfleet.model import BuildRequest, NodeFacts, NodeSpec, PlatformResult
from archfleet.pipeline import estimates, offers
from archfleet.planner import node_speed, schedule
from archfleet.platforms import parse
from archfleet.manager import make_hooks

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "arch-test"
ARM, AMD = parse("linux/arm64"), parse("linux/amd64")


def lab(local_load: float = 0.0) -> dict[str, NodeFacts]:
    local = NodeFacts(NodeSpec("local"), True, native=[AMD], emulated=[ARM], builder="buildkit",
                      engine_cli=["docker"], cpus=2, score=1.0, load=local_load)
    board = NodeFacts(NodeSpec("armvm", transport="ssh", settings={"host": "127.0.0.1"}), True, native=[ARM], builder="buildkit",
                      engine_cli=["docker"], cpus=2, score=0.045)
    return {"local": local, "armvm": board}


def plan_arm64(tmp_path, record=(), local_load=0.0):
    request = BuildRequest(EXAMPLE, EXAMPLE / "Dockerfile", [ARM])
    facts = lab(local_load)
    history_path = tmp_path / "h.sqlite"
    view = view_for(request, history_path)
    for node, strategy, seconds in record:
        option = next(o for o in asyncio.run(offers(make_hooks(), request, facts))
                      if (o.node, o.strategy) == (node, strategy))
        # arch-test RUNs nothing: all of its time is the fixed part
        result = PlatformResult(ARM, option, seconds, parts={"fixed": seconds, "transfer": 0, "work": 0, "push": 0})
        view.record(result, speed=node_speed(facts[node]))
    options = estimates(make_hooks(), asyncio.run(offers(make_hooks(), request, facts)), request, facts,
                     view_for(attrs.evolve(request, build_args=[("N", "other")]), history_path))
    return schedule([ARM], options, {"local": 2, "armvm": 1})


def test_a_slow_native_board_does_not_make_the_fast_host_look_slow(tmp_path):
    """The CI failure this guards: the first build of a project in a fresh history was a 20 s
    native build on a slow arm64 VM; taken as raw seconds of 'this project's work', it scaled the
    x86 host's emulated option up tenfold and the planner sent a trivial image to the VM."""
    plan = plan_arm64(tmp_path, record=[("armvm", "native", 20.0)])
    chosen = plan.option_for(ARM)
    assert chosen.node == "local", (chosen, [r.option for r in plan.rejected])
    vm = next(r for r in plan.rejected if r.option.node == "armvm")
    assert vm.option.estimate >= 15 and "slower" in vm.why


def test_a_loaded_host_still_wins_a_build_that_runs_nothing_under_emulation(tmp_path):
    """The next CI failure: the VM itself loads the host (load 6 on 2 cores: a third of its
    speed), and the prior charged the QEMU factor on the whole build, though an image that RUNs
    nothing executes nothing under QEMU (resolving the base, exporting and pushing are native)."""
    plan = plan_arm64(tmp_path, record=[("armvm", "native", 16.0)], local_load=6.0)
    assert plan.option_for(ARM).node == "local", [r.option for r in plan.rejected]


def test_the_qemu_factor_applies_to_run_steps_only(tmp_path):
    from archfleet.planner import BASE_WORK, QEMU_FACTOR, RUN_WORK, prior_seconds

    facts = lab()["local"]
    trivial = BuildRequest(EXAMPLE, EXAMPLE / "Dockerfile", [ARM])
    assert prior_seconds(trivial, facts, emulated=True) == prior_seconds(trivial, facts, emulated=False) == BASE_WORK
    (tmp_path / "Dockerfile").write_text("FROM scratch\nRUN a\nRUN b\n")
    two_runs = BuildRequest(tmp_path, tmp_path / "Dockerfile", [ARM])
    assert prior_seconds(two_runs, facts, emulated=True) == BASE_WORK + 2 * RUN_WORK * QEMU_FACTOR


def test_without_history_the_slow_board_still_loses_for_a_trivial_image(tmp_path):
    plan = plan_arm64(tmp_path)
    assert plan.option_for(ARM).node == "local"


def test_context_transfer_uses_the_measured_link_rate(tmp_path):
    """A remote node that has not seen the context: its estimate adds bytes / the rate measured
    on earlier syncs to it, and says so; without a measurement, the assumed rate."""
    import os

    from archfleet.planner import LINK_RATE

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY blob /\n")
    (ctx / "blob").write_bytes(os.urandom(8_000_000))
    request = BuildRequest(ctx, ctx / "Dockerfile", [AMD])
    spec = NodeSpec("far", transport="ssh", settings={"host": "10.0.0.9"})

    def estimate(link_rate):
        facts = {"far": NodeFacts(spec, True, native=[AMD], builder="buildkit", engine_cli=["docker"], cpus=2,
                                  score=1.0, link_rate=link_rate)}
        options = estimates(make_hooks(), asyncio.run(offers(make_hooks(), request, facts)), request, facts,
                         view_for(request, tmp_path / "h.sqlite"))
        return next(o for o in options if o.strategy == "native")

    slow, assumed = estimate(2e6), estimate(None)
    assert "at 2 MB/s (measured)" in slow.basis and "(assumed)" in assumed.basis
    assert round(slow.estimate - assumed.estimate, 1) == round(8_000_000 / 2e6 - 8_000_000 / LINK_RATE, 1)


def test_the_engine_receiving_the_context_is_transfer_whole_when_new_to_the_node_then_only_what_changed(tmp_path):
    """Rule (BuildKit's "load build context" sends the files it lacks, by stat): on a node that
    never built the project, the transfer part counts the whole context at LOAD_RATE (a local
    node too: the CLI sends it to its engine); nothing once the node built these very files;
    after the node built the project, only the bytes of the files changed since archfleet last
    saw the context (here: one 2 MB file of an 8 MB context)."""
    import os

    from archfleet import filedigests
    from archfleet.history import context_files
    from archfleet.planner import LOAD_RATE

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (ctx / "blob").write_bytes(os.urandom(6_000_000))
    (ctx / "edited").write_bytes(os.urandom(2_000_000))
    request = BuildRequest(ctx, ctx / "Dockerfile", [AMD])
    facts = {"local": lab()["local"]}
    history_path = tmp_path / "h.sqlite"

    def local_option(req):
        options = estimates(make_hooks(), asyncio.run(offers(make_hooks(), req, facts)), req, facts,
                            view_for(req, history_path))
        option = next(o for o in options if o.strategy == "native")
        return option, dict(option.parts)["transfer"]

    first, transfer = local_option(request)
    assert transfer == pytest.approx(8_000_002 / LOAD_RATE, rel=0.01) and "(context) into the engine" in first.basis
    view = view_for(request, history_path)
    view.record(PlatformResult(AMD, first, 1.0, parts={"fixed": 0.5, "transfer": 0.08, "work": 0, "push": 0}))
    filedigests.store(context_files(request).digests)  # what the learn stage remembers
    assert local_option(request)[1] == 0.0  # the same files: its engine holds them
    (ctx / "edited").write_bytes(os.urandom(2_000_000))
    option, transfer = local_option(request)
    assert transfer == pytest.approx(2_000_000 / LOAD_RATE, rel=0.01) and "(changed)" in option.basis


def test_an_option_that_starts_warm_from_another_node_s_child_is_estimated_lower(tmp_path):
    """plugins/estimates (issues 14 and 17): when another node pushed the platform's last child,
    an option on a BuildKit node reads it as an inline cache, which holds the final stage's
    steps. Until history has that node's steps, they cost WARM_FACTOR of their cold work (the
    fixed part does not shrink); once it has them, the steps it ran count as cached."""
    from archfleet import steps
    from archfleet.buildcache import WARM_FACTOR
    from archfleet.model import WarmSource

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN make -j2 all\n")
    request = BuildRequest(ctx, ctx / "Dockerfile", [ARM])
    facts = lab()
    path = tmp_path / "h.sqlite"
    offered = asyncio.run(offers(make_hooks(), request, facts))
    cold = {(o.node, o.strategy): o for o in estimates(make_hooks(), offered, request, facts, view_for(request, path))}
    warm_request = attrs.evolve(request, warm=(WarmSource(ARM, "armvm", "r/app@sha256:" + "c" * 64),))

    def warm_estimates():
        return {(o.node, o.strategy): o
                for o in estimates(make_hooks(), offered, warm_request, facts, view_for(warm_request, path))}

    warm = warm_estimates()
    local = next(k for k in warm if k[0] == "local")
    parts, cold_parts = dict(warm[local].parts), dict(cold[local].parts)
    assert cold_parts["work"] > 0 and parts["fixed"] == cold_parts["fixed"]
    assert parts["work"] == pytest.approx(cold_parts["work"] * WARM_FACTOR, abs=0.01)
    assert "starts warm from armvm's child" in warm[local].basis
    board = next(k for k in warm if k[0] == "armvm")
    assert warm[board].estimate == cold[board].estimate  # its own child: nothing to start from

    # armvm's build of that child, as the learn stage keeps it: its steps, run natively
    option = cold[board]
    child = warm_request.warm[0].ref
    view_for(request, path).record(PlatformResult(ARM, option, 30.0, digest=child.split("@")[1], ref=child),
                                   speed=0.1, steps=[
        (p.key, p.chain, str(p.platform), False, 25.0, False) for p in option.steps])
    again = warm_estimates()
    assert dict(again[local].parts)["work"] == pytest.approx(steps.CACHED_SECONDS * len(option.steps), abs=0.01)
    assert all(p.basis.startswith("warm") for p in again[local].steps)


def test_a_warm_start_does_not_discount_a_step_the_warm_node_ran_with_other_inputs(tmp_path):
    """plugins/estimates: the warm child's inline cache helps only the steps it holds (the same
    cache chain, as the build that pushed it recorded them). A step that build ran with another
    build arg (same key, other chain: a new NONCE each build) runs again in full; the blind
    WARM_FACTOR is only for a child whose build recorded no steps. bench/estimates caught it:
    every pass-2 'sleep 4' estimated 2.1 s, ran 4.2 s."""
    from archfleet.model import WarmSource

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nARG NONCE\nRUN echo $NONCE > /n && sleep 4\n")
    facts = lab()
    path = tmp_path / "h.sqlite"

    def request_for(nonce, warm=()):
        return BuildRequest(ctx, ctx / "Dockerfile", [ARM], build_args=[("NONCE", nonce)], warm=warm)

    first = request_for("1")
    offered = asyncio.run(offers(make_hooks(), first, facts))
    board = next(o for o in estimates(make_hooks(), offered, first, facts, view_for(first, path))
                 if o.node == "armvm")
    child = "r/app@sha256:" + "c" * 64
    view_for(first, path).record(PlatformResult(ARM, board, 5.0, digest=child.split("@")[1], ref=child), speed=0.1,
                                 steps=[
        (p.key, p.chain, str(p.platform), False, 4.2, False) for p in board.steps])

    second = request_for("2", warm=(WarmSource(ARM, "armvm", child),))
    again = asyncio.run(offers(make_hooks(), second, facts))
    local = next(o for o in estimates(make_hooks(), again, second, facts, view_for(second, path))
                 if o.node == "local")
    run = local.steps[-1]
    assert "warm" not in run.basis and run.seconds >= 4.0, (run.seconds, run.basis)


def test_the_push_part_is_learned_from_builds_that_pushed_only(tmp_path):
    """plugins/estimates: a build without --push records a push of 0 s; it says nothing of what
    a push costs. The fresh-user helper saw 'push 0.4s: learned' become 'push 0.0s: learned'
    after two builds without --push."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    request = BuildRequest(ctx, ctx / "Dockerfile", [AMD], push=True, tags=["r.test/app:1"])
    facts = {"local": lab()["local"]}
    path = tmp_path / "h.sqlite"
    option = next(o for o in asyncio.run(offers(make_hooks(), request, facts)) if o.node == "local")
    child = "r.test/app@sha256:" + "d" * 64
    view_for(request, path).record(PlatformResult(AMD, option, 2.0, digest=child.split("@")[1], ref=child,
                                                  parts={"fixed": 0.6, "transfer": 0, "work": 1.0, "push": 0.4},
                                                  pushed_bytes=30_000_000))
    for _ in range(2):  # the same project built without --push
        view_for(request, path).record(PlatformResult(AMD, option, 1.6,
                                                      parts={"fixed": 0.6, "transfer": 0, "work": 1.0, "push": 0.0}))
    got = next(o for o in estimates(make_hooks(), [option], request, facts, view_for(request, path)))
    assert dict(got.parts)["push"] == pytest.approx(0.4)
