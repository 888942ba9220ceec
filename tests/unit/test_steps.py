"""Estimates in parts and per Dockerfile step (issue 17): reading BuildKit's own step timings
from the build's output, planning a build's steps and their keys, the step priors, what a step
learns from its past times, the parts the ``estimates`` plugin answers, and where the parts are
shown (``archfleet plan``) and recorded (``--metadata-file``, against its JSON schema)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import attrs
import pytest

from archfleet import cli, pipeline, steps
from archfleet.history import view_for
from archfleet.learn import Lessons, keep, steps_of
from archfleet.model import PARTS, BuildRequest, NodeFacts, NodeSpec, Option, PlatformResult, StepTime
from archfleet.planner import COMPILE_WORK, QEMU_FACTOR, RUN_OVERHEAD, UTILITY_WORK, Plan, Scheduled, node_speed, step_prior
from archfleet.platforms import parse
from archfleet.plugins import estimates as plugin

REPO = Path(__file__).resolve().parent.parent.parent
AMD, ARM = parse("linux/amd64"), parse("linux/arm64")
BASE = "127.0.0.1:5000/archfleet/busybox:latest"

TWO_STAGES = f"""FROM {BASE} AS build
RUN sleep 2
RUN cc -O2 -o /x x.c
FROM scratch
COPY --from=build /x /x
COPY . /src
"""

# what dockerd 20.10's BuildKit printed for TWO_STAGES (--progress=plain, --platform linux/arm64)
BUILDKIT_PLAIN = """\
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 160B done
#1 DONE 0.0s

#2 [internal] load .dockerignore
#2 DONE 0.0s

#3 [internal] load metadata for 127.0.0.1:5000/archfleet/busybox:latest
#3 DONE 0.1s

#4 [linux/arm64 build 1/3] FROM 127.0.0.1:5000/archfleet/busybox:latest@sha256:0123
#4 DONE 0.3s

#5 [linux/arm64 build 2/3] RUN sleep 2
#5 DONE 2.1s

#6 [linux/arm64 build 3/3] RUN cc -O2 -o /x x.c
#6 0.512 warning: something the compiler said
#6 DONE 17.25s

#7 [internal] load build context
#7 transferring context: 40B done
#7 DONE 0.0s

#8 [linux/arm64 stage-1 2/3] COPY --from=build /x /x
#8 CACHED

#9 [linux/arm64 stage-1 3/3] COPY . /src
#9 DONE 0.04s

#10 exporting to image
#10 exporting layers 0.1s done
#10 DONE 0.2s
"""


def facts(name="local", native=(AMD,), emulated=(ARM,), transport="local", score=1.0, **settings):
    return NodeFacts(NodeSpec(name, transport=transport, settings=settings), True, native=native, emulated=emulated,
                     builder="buildkit", engine_cli=["docker"], cpus=2, score=score)


@pytest.fixture
def ctx(tmp_path):
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text(TWO_STAGES)
    (d / "x.c").write_text("int main(void) { return 0; }\n")
    return d


def request_for(ctx, text=None, push=False, platforms=(ARM,)):
    if text is not None:
        (ctx / "Dockerfile").write_text(text)
    return BuildRequest(ctx, ctx / "Dockerfile", list(platforms),
                        tags=["127.0.0.1:5000/estimates/t:1"] if push else [], push=push)


# --- BuildKit's own step timings -------------------------------------------------------------------

def test_the_step_clock_reads_each_steps_own_time_from_buildkits_plain_progress():
    """Rule: a step's time is BuildKit's ``#N DONE s`` for the vertex ``#N [stage k/n] TEXT``
    (platform prefix dropped), ``#N CACHED`` is 0 s and cached; FROM and BuildKit's own vertices
    (internal, exporting) are not steps; output lines in between change nothing."""
    clock = steps.StepClock()
    for line in BUILDKIT_PLAIN.splitlines():
        clock.feed(line)
    assert clock.steps() == (
        StepTime("build", 2, "RUN", "RUN sleep 2", 2.1),
        StepTime("build", 3, "RUN", "RUN cc -O2 -o /x x.c", 17.25),
        StepTime("stage-1", 2, "COPY", "COPY --from=build /x /x", 0.0, cached=True),
        StepTime("stage-1", 3, "COPY", "COPY . /src", 0.04),
    )


def test_the_step_clock_reads_a_one_stage_file_and_ignores_unfinished_and_garbled_lines():
    clock = steps.StepClock()
    for line in ["#4 [1/3] FROM docker.io/library/busybox", "#4 DONE 0.1s", "#5 [2/3] RUN make -j2",
                 "#5 DONE 3.0s", "#6 [3/3] RUN sleep 9", "#6 ERROR: process did not complete", "#x [y] z",
                 "#7 DONE notanumber", "\x00\xff garbage"]:
        clock.feed(line)
    assert clock.steps() == (StepTime("", 2, "RUN", "RUN make -j2", 3.0),)


def test_a_steps_done_glued_to_its_own_unterminated_output_still_ends_it():
    """Rule (BuildKit's plain printer ends a partial log line only when it moves to another
    vertex): `RUN cat /w/go.mod` of a file without a final newline printed
    ``#7 0.151 a270a2a3#7 DONE 0.2s`` (seen on this machine's Docker 20.10); that step was never
    learned, so every later plan called it not cached. Another vertex's DONE inside a log line
    is the step's own text, not an end."""
    clock = steps.StepClock()
    for line in ["#7 [3/7] RUN cat /w/go.mod", "#7 0.151 a270a2a3#7 DONE 0.2s",
                 "#8 [4/7] RUN echo '#9 DONE 5.0s'", "#8 0.1 #9 DONE 5.0s", "#9 [5/7] RUN true"]:
        clock.feed(line)
    assert clock.steps() == (StepTime("", 3, "RUN", "RUN cat /w/go.mod", 0.2),)


def test_the_step_clock_times_buildahs_steps_between_lines():
    """Rule: podman prints no durations: a STEP lasts from its line to the next STEP or COMMIT."""
    now = iter([0.0, 1.0, 1.5, 4.5, 5.0])
    clock = steps.StepClock(now=lambda: next(now))
    for line in ["STEP 1/3: FROM busybox", "STEP 2/3: RUN sleep 3", "some output", "STEP 3/3: COPY . /src",
                 "COMMIT img"]:
        clock.feed(line)
    assert clock.steps() == (StepTime("", 2, "RUN", "RUN sleep 3", 3.5), StepTime("", 3, "COPY", "COPY . /src", 0.5))


def test_parse_vertex_names_the_stage_and_position():
    assert steps.parse_vertex("linux/arm64 build 2/3") == ("build", 2)
    assert steps.parse_vertex("stage-1 3/3") == ("stage-1", 3)
    assert steps.parse_vertex("2/4") == ("", 2)
    assert steps.parse_vertex("internal") is None


# --- the steps a build runs, and their keys --------------------------------------------------------

def test_planned_steps_are_numbered_as_buildkit_numbers_them_and_join_its_report(ctx):
    req = request_for(ctx)
    plans = steps.planned(req, ARM, [AMD], [ARM])
    assert [(p.stage, p.index, p.keyword, p.emulated) for p in plans] == [
        ("build", 2, "RUN", True), ("build", 3, "RUN", True), ("stage-1", 2, "COPY", False),
        ("stage-1", 3, "COPY", False)]
    assert plans[2].after == (0,)  # the COPY --from=build waits for the build stage
    clock = steps.StepClock()
    for line in BUILDKIT_PLAIN.splitlines():
        clock.feed(line)
    pairs = steps.join(plans, clock.steps())
    assert [(p.index, t.seconds) for p, t in pairs] == [(2, 2.1), (3, 17.25), (2, 0.0), (3, 0.04)]
    # the work part measured: the steps along the longest chain (here one chain: their sum)
    assert steps.measured_work(plans, clock.steps()) == pytest.approx(2.1 + 17.25 + 0.04)


def test_a_one_stage_files_steps_join_whatever_name_buildkit_gives_its_stage(ctx):
    """Rule (steps.join): BuildKit prints a one-stage file's steps as ``[2/4]``, or, once a RUN
    has a --mount, as ``[stage-0 2/4]`` (the fresh-user helper's cache-mount Dockerfile: no step
    was ever learned, so plan never said cached); both pair with the planned steps."""
    text = f"FROM {BASE}\nCOPY a.txt /a\nRUN --mount=type=cache,target=/c echo cache\nCOPY . .\n"
    plans = steps.planned(request_for(ctx, text), AMD, [AMD], [])
    assert [p.stage for p in plans] == ["", "", ""]
    clock = steps.StepClock()
    for line in ["#6 [stage-0 2/4] COPY a.txt /a", "#6 CACHED",
                 "#7 [stage-0 3/4] RUN --mount=type=cache,target=/c echo cache", "#7 DONE 0.3s",
                 "#8 [stage-0 4/4] COPY . .", "#8 DONE 0.1s"]:
        clock.feed(line)
    assert [(p.index, t.seconds, t.cached) for p, t in steps.join(plans, clock.steps())] == [
        (2, 0.0, True), (3, 0.3, False), (4, 0.1, False)]


def test_a_changed_step_gets_a_new_key_and_the_other_steps_keep_theirs(ctx):
    """Rule (issue 17): history is keyed so that a change to one step only re-estimates that
    step: the key is the step's text and its stage's base; the chain (cache) of every later step
    in the stage changes too, as BuildKit's cache does."""
    before = steps.planned(request_for(ctx), ARM, [AMD], [ARM])
    steps._planned.cache_clear()
    after = steps.planned(request_for(ctx, TWO_STAGES.replace("sleep 2", "sleep 3")), ARM, [AMD], [ARM])
    assert before[0].key != after[0].key
    assert [p.key for p in before[1:]] == [p.key for p in after[1:]]
    assert before[1].chain != after[1].chain  # its cache is gone: it runs again


def test_a_build_arg_value_changes_the_chain_of_the_steps_that_declare_it_but_not_the_key(ctx):
    text = f"FROM {BASE}\nARG N\nRUN echo $N\n"
    one = steps.planned(attrs.evolve(request_for(ctx, text), build_args=[("N", "1")]), AMD, [AMD], [])
    two = steps.planned(attrs.evolve(request_for(ctx, text), build_args=[("N", "2")]), AMD, [AMD], [])
    assert one[0].key == two[0].key and one[0].chain != two[0].chain


# --- priors by what a step runs --------------------------------------------------------------------

@pytest.mark.parametrize("command,kind,io,cpu", [
    ("sleep 20", "sleep", RUN_OVERHEAD + 20, 0.0),
    ("sleep 1m", "sleep", RUN_OVERHEAD + 60, 0.0),
    ("mkdir -p /a && echo hi > /a/b", "trivial", RUN_OVERHEAD, 0.0),
    ("cc -O2 -o /x x.c && strip /x", "compile", RUN_OVERHEAD, 2 * COMPILE_WORK),
])
def test_a_steps_prior_follows_what_its_commands_are(command, kind, io, cpu):
    """Rule: a sleep or a download is io (not multiplied by the QEMU factor), a compiler is CPU."""
    got = step_prior("RUN", command.split())
    assert (got.kind, got.io, got.cpu) == (kind, pytest.approx(io), pytest.approx(cpu))


def test_a_download_is_mostly_io():
    got = step_prior("RUN", ["wget", "-O", "/f", "http://10.0.0.1/big"])
    assert got.kind == "download" and got.cpu_share < 0.2


def test_a_sleep_is_not_multiplied_by_the_qemu_factor_and_a_compile_is(ctx):
    plans = steps.planned(request_for(ctx), ARM, [AMD], [ARM])
    sleep, compile_ = plans[0], plans[1]
    got, basis = steps.estimate(sleep, step_prior("RUN", ["sleep", "2"]), [], speed=1.0)
    assert got == pytest.approx(RUN_OVERHEAD + 2) and basis == "prior (sleep)"
    got, _ = steps.estimate(compile_, step_prior("RUN", "cc -O2 -o /x x.c".split()), [], speed=1.0)
    assert got == pytest.approx(RUN_OVERHEAD + COMPILE_WORK * QEMU_FACTOR)


# --- learned step times ----------------------------------------------------------------------------

def test_a_step_seen_natively_and_under_qemu_learns_its_cpu_share():
    """Rule: r = emulated / native = 1 - f + f * qemu gives the CPU share f; a sleep (r = 1) is io."""
    prior = step_prior("RUN", ["./script"])
    native, emulated = steps.Observation(2.0, 1.0, "linux/amd64", False), steps.Observation(2.1, 1.0, "linux/arm64", True)
    share, learned = steps.cpu_share([native, emulated], prior, QEMU_FACTOR)
    assert learned and share < 0.05
    compiled = steps.Observation(9.0, 1.0, "linux/arm64", True)
    share, _ = steps.cpu_share([steps.Observation(1.0, 1.0, "linux/amd64", False), compiled], prior, 9.0)
    assert share == pytest.approx(1.0)


def test_a_step_timed_natively_is_moved_to_qemu_by_its_learned_share_only(ctx):
    plans = steps.planned(request_for(ctx), ARM, [AMD], [ARM])
    obs = [steps.Observation(5.0, 1.0, "linux/amd64", False)]
    got, basis = steps.estimate(plans[1], step_prior("RUN", "cc -O2 -o /x x.c".split()), obs, speed=1.0)
    assert basis.startswith("learned natively, moved by qemu")
    prior = step_prior("RUN", "cc -O2 -o /x x.c".split())
    assert got == pytest.approx(5.0 * ((1 - prior.cpu_share) + prior.cpu_share * QEMU_FACTOR))
    # the same platform and emulation ran before: its median, as it was
    same = [steps.Observation(s, 1.0, "linux/arm64", True) for s in (30.0, 31.0, 40.0)]
    assert steps.estimate(plans[1], prior, same, speed=1.0) == (31.0, "learned from 3 runs")


def test_the_critical_path_runs_independent_stages_at_once():
    a = [steps.StepPlan("a", 2, "RUN", "RUN x", "k1", "c1", AMD, stage_index=0),
         steps.StepPlan("b", 2, "RUN", "RUN y", "k2", "c2", AMD, stage_index=1),
         steps.StepPlan("c", 2, "COPY", "COPY --from=a", "k3", "c3", AMD, stage_index=2, after=(0, 1))]
    assert steps.critical_path(a, {(0, 2): 5.0, (1, 2): 3.0, (2, 2): 1.0}) == 6.0


# --- learning and the plugin's parts ---------------------------------------------------------------

def test_the_learn_stage_keeps_each_reported_step_and_the_next_estimate_uses_it(ctx, tmp_path):
    """A first build is estimated from priors; once the learn stage kept its parts and step times,
    the same build is estimated from them (and a step this node ran this week is cached)."""
    req = request_for(ctx)
    node = facts()
    db = tmp_path / "h.sqlite"
    option = Option(ARM, "qemu", "local", 1.0, emulated=True)
    first = plugin.archfleet_estimate(option=option, request=req, facts=node, history=view_for(req, db))
    assert [k for k, _ in first.parts] == list(PARTS)
    assert first.seconds == pytest.approx(sum(v for _, v in first.parts), abs=0.02)
    assert all(s.basis.startswith("prior") for s in first.steps)
    clock = steps.StepClock()
    for line in BUILDKIT_PLAIN.replace("#8 CACHED", "#8 DONE 0.05s").splitlines():
        clock.feed(line)
    result = PlatformResult(ARM, attrs.evolve(option, steps=first.steps), 21.0, steps=clock.steps(),
                            parts={"fixed": 1.5, "transfer": 0.0, "work": 19.4, "push": 0.1})
    assert [r[4] for r in steps_of(result)] == [2.1, 17.25, 0.05, 0.04]
    keep(Lessons(results=[result], speeds={"local": node_speed(node)}, history=view_for(req, db)))
    # a changed compile flag: a new key for that step, and no cache from here on
    steps._planned.cache_clear()
    changed = request_for(ctx, TWO_STAGES.replace("-O2", "-O3"))
    second = plugin.archfleet_estimate(option=option, request=changed, facts=node, history=view_for(changed, db))
    by_index = {(s.stage, s.index): s for s in second.steps}
    assert by_index[("build", 2)].basis == "cached"
    assert by_index[("build", 3)].basis.startswith("prior")  # the changed step alone is estimated anew
    assert dict(second.parts)["fixed"] == pytest.approx(1.5)
    # another node: nothing cached there, the sleep's learned time (not multiplied by the QEMU factor)
    other = facts("n1", transport="ssh", host="10.0.0.1")
    third = plugin.archfleet_estimate(option=attrs.evolve(option, node="n1"), request=changed, facts=other,
                                      history=view_for(changed, db))
    sleep = {(s.stage, s.index): s for s in third.steps}[("build", 2)]
    assert sleep.basis == "learned from 1 run" and sleep.seconds == pytest.approx(2.1)


def test_the_push_part_is_counted_only_with_push(ctx, tmp_path):
    node = facts()
    option = Option(AMD, "native", "local", 1.0)
    no_push = plugin.archfleet_estimate(option=option, request=request_for(ctx, platforms=(AMD,)), facts=node,
                                        history=view_for(request_for(ctx), tmp_path / "h.sqlite"))
    assert dict(no_push.parts)["push"] == 0.0
    req = request_for(ctx, push=True, platforms=(AMD,))
    push = plugin.archfleet_estimate(option=option, request=req, facts=node, history=view_for(req, tmp_path / "h.sqlite"))
    assert dict(push.parts)["push"] > 0 and "push" in push.basis


# --- shown and recorded ----------------------------------------------------------------------------

@pytest.fixture
def one_node(monkeypatch, tmp_path, ctx):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("ARCHFLEET_NODES", "ARCHFLEET_ENGINE_CLI", "ARCHFLEET_DEBUG", "ARCHFLEET_HISTORY"):
        monkeypatch.delenv(var, raising=False)

    async def probe(hooks, config, session, nodes=None):
        return {"local": facts()}

    monkeypatch.setattr(pipeline, "probe", probe)


def test_plan_shows_the_parts_and_each_step(capsys, one_node):
    assert cli.main(["plan", "--platform", "linux/arm64", "ctx"]) == 0
    out = capsys.readouterr().out
    assert "parts: fixed " in out and " + work " in out
    assert "[build 2]" in out and "prior (sleep): RUN sleep 2" in out
    assert cli.main(["plan", "--platform", "linux/arm64", "--format", "json", "ctx"]) == 0
    doc = json.loads(capsys.readouterr().out)
    chosen = doc["platforms"][0]
    assert list(chosen["estimate_parts"]) == list(PARTS)
    assert sum(chosen["estimate_parts"].values()) == pytest.approx(chosen["estimate_seconds"], abs=0.03)
    assert [s["step"] for s in chosen["steps"]][:2] == ["RUN sleep 2", "RUN cc -O2 -o /x x.c"]


def test_the_metadata_file_records_estimate_and_actual_per_part_and_step_in_its_schema(ctx, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    req = request_for(ctx)
    node = facts()
    option = Option(ARM, "qemu", "local", 1.0, emulated=True)
    got = plugin.archfleet_estimate(option=option, request=req, facts=node, history=view_for(req, tmp_path / "h"))
    option = attrs.evolve(option, estimate=got.seconds, basis=got.basis, parts=got.parts, steps=got.steps)
    clock = steps.StepClock()
    for line in BUILDKIT_PLAIN.splitlines():
        clock.feed(line)
    result = PlatformResult(ARM, option, 21.0, image_id="sha256:" + "ab" * 32, steps=clock.steps(),
                            parts={"fixed": 1.5, "transfer": 0.0, "work": 19.39, "push": 0.11}, pushed_bytes=1234)
    planned = pipeline.Planned({"local": node}, (option,), Plan((Scheduled(option, 0.0, got.seconds),), ()),
                               request=req)
    summary = pipeline.BuildSummary((result,), (), None, None, 0, (), planned, (), 21.5)
    doc = json.loads(json.dumps(pipeline.metadata(summary)))
    schema = json.loads((REPO / "docs" / "schema" / "metadata.schema.json").read_text())
    jsonschema.validate(doc, schema)
    entry = doc["archfleet.platforms"]["linux/arm64"]
    assert entry["actual"] == {"seconds": 21.0, "parts": {"fixed": 1.5, "transfer": 0.0, "work": 19.39, "push": 0.11},
                               "pushed_bytes": 1234}
    assert list(entry["estimate"]["parts"]) == list(PARTS)
    compile_ = entry["steps"][1]
    assert (compile_["step"], compile_["seconds"], compile_["cached"]) == ("RUN cc -O2 -o /x x.c", 17.25, False)
    assert compile_["estimate"] > 17.25 and compile_["basis"] == "prior (compile)"
    assert entry["steps"][2]["cached"] is True


def test_a_build_arg_reaches_a_runs_cache_but_not_a_copys(ctx):
    """Rule (BuildKit): ARG values are a RUN's environment; a COPY before any such RUN stays cached."""
    text = f"FROM {BASE}\nARG N\nCOPY x.c /x.c\nRUN echo $N\n"
    one = steps.planned(attrs.evolve(request_for(ctx, text), build_args=[("N", "1")]), AMD, [AMD], [])
    two = steps.planned(attrs.evolve(request_for(ctx, text), build_args=[("N", "2")]), AMD, [AMD], [])
    assert one[0].chain == two[0].chain and one[1].chain != two[1].chain


def test_a_data_utility_is_a_small_cpu_prior_not_an_unknown_script():
    """Rule (planner.UTILITY_WORK): gzip, tar, sha256sum... take their input's time, usually small,
    and work on the step's one input (often one pipeline): counted once per step, and slowed by
    QEMU as utilities are (planner.QEMU_BY_KIND: gzip -9 ran 3.5x slower under qemu-aarch64 here),
    not as a compile is."""
    from archfleet.planner import QEMU_BY_KIND, QEMU_FACTOR, RUN_WORK, UTILITY_WORK

    got = step_prior("RUN", "head -c 6000000 /dev/urandom | gzip -9 | sha256sum".split())
    assert (got.kind, got.cpu, got.qemu) == ("utility", pytest.approx(UTILITY_WORK), QEMU_BY_KIND["utility"])
    assert step_prior("RUN", ["./build.sh"]).cpu == RUN_WORK
    assert step_prior("RUN", ["./build.sh"]).qemu == QEMU_FACTOR


def test_a_steps_qemu_prior_is_its_commands_weighted_by_their_cpu_seconds():
    """Rule (planner.QEMU_BY_KIND): a step mixing a compile (8 s of CPU, x8) and a utility (0.5 s,
    x4) is slowed (8 x 8 + 0.5 x 4) / 8.5 times under QEMU; a step with no CPU work keeps QEMU_FACTOR."""
    from archfleet.planner import COMPILE_WORK, QEMU_BY_KIND, QEMU_FACTOR, UTILITY_WORK

    got = step_prior("RUN", "make all && tar czf /out.tgz /out".split())
    want = (COMPILE_WORK * QEMU_BY_KIND["compile"] + UTILITY_WORK * QEMU_BY_KIND["utility"]) / (COMPILE_WORK + UTILITY_WORK)
    assert got.qemu == pytest.approx(want, abs=1e-3)
    assert step_prior("RUN", ["sleep", "3"]).qemu == QEMU_FACTOR


def test_a_steps_time_on_this_very_node_is_taken_as_it_was():
    """Rule: the same step, platform and emulation on the same node: the median of its times
    there, not moved by speed figures (which move with the load)."""
    plan = steps.StepPlan("", 2, "RUN", "RUN gzip", "k", "c", ARM, emulated=True)
    prior = step_prior("RUN", ["gzip"])
    obs = [steps.Observation(0.8, 0.1, "linux/arm64", True, "n2"), steps.Observation(0.9, 0.1, "linux/arm64", True, "n2"),
           steps.Observation(5.0, 1.0, "linux/arm64", True, "n1")]
    assert steps.estimate(plan, prior, obs, speed=1.0, node="n2") == (pytest.approx(0.85), "learned on this node from 2 runs")
    assert steps.estimate(plan, prior, obs, speed=1.0, node="n3")[1] == "learned from 3 runs"


def test_a_node_that_built_the_same_files_needs_no_transfer_whatever_the_build_args(ctx, tmp_path):
    """Rule: the context sync is by content; a new --build-arg value (a new context key) sends nothing."""
    db = tmp_path / "h.sqlite"
    req = attrs.evolve(request_for(ctx), build_args=[("NONCE", "1")])
    node = facts("n1", transport="ssh", host="10.0.0.1")
    option = Option(ARM, "qemu", "n1", 1.0, emulated=True)
    first = plugin.archfleet_estimate(option=option, request=req, facts=node, history=view_for(req, db))
    assert dict(first.parts)["transfer"] > 0
    view_for(req, db).record(PlatformResult(ARM, option, 5.0, parts={"fixed": 1, "transfer": 1, "work": 3, "push": 0}))
    again = attrs.evolve(req, build_args=[("NONCE", "2")])
    assert view_for(again, db).context_key != view_for(req, db).context_key
    second = plugin.archfleet_estimate(option=option, request=again, facts=node, history=view_for(again, db))
    assert dict(second.parts)["transfer"] == 0


def test_a_stage_mounted_or_copied_by_index_is_waited_for_and_part_of_the_chain(ctx):
    """Rule: RUN --mount=from=STAGE and COPY --from=N depend on that stage: the step waits for it
    (critical path) and its cache chain changes when the stage's steps change."""
    text = (f"FROM {BASE} AS tools\nRUN echo one > /t\nFROM {BASE}\nRUN --mount=type=bind,from=tools,target=/x cat /x/t\n"
            "COPY --from=0 /t /t\n")
    before = steps.planned(request_for(ctx, text), AMD, [AMD], [])
    steps._planned.cache_clear()
    after = steps.planned(request_for(ctx, text.replace("echo one", "echo two")), AMD, [AMD], [])
    run, copy = before[1], before[2]
    assert run.after == (0,) and copy.after == (0,)
    assert run.key == after[1].key and run.chain != after[1].chain and copy.chain != after[2].chain


# --- priors through the shell's structure and wrappers (a RUN runs `/bin/sh -c` on its text) --------

@pytest.mark.parametrize("command,kind,io,cpu", [
    # lists: ; && || | newline (a `\` continuation), & (in the background)
    ("echo start; sleep 3", "sleep", RUN_OVERHEAD + 3, 0.0),
    ("true || sleep 2 && echo done", "sleep", RUN_OVERHEAD + 2, 0.0),
    ("sleep 1 & sleep 2; wait", "sleep", RUN_OVERHEAD + 3, 0.0),
    ("echo a \\\n && sleep 2", "sleep", RUN_OVERHEAD + 2, 0.0),
    # compound commands: their reserved words run nothing, the commands inside them do
    ('if [ -n "$X" ]; then echo y; fi; sleep 2', "sleep", RUN_OVERHEAD + 2, 0.0),
    ("if true; then :; elif false; then make; else sleep 2; fi", "compile", RUN_OVERHEAD + 2, 8.0),
    ("for i in 1 2 3; do sleep 1; done", "sleep", RUN_OVERHEAD + 1, 0.0),  # each command once: no loop counts
    ("while ! curl -fs http://x/; do sleep 1; done", "download", RUN_OVERHEAD + 1 + 3.6, 0.4),
    ("until false; do sleep 1; done", "sleep", RUN_OVERHEAD + 1, 0.0),
    ("case $ARCH in arm64) sleep 2;; (amd64|x86_64) echo ok;; esac", "sleep", RUN_OVERHEAD + 2, 0.0),
    ("{ echo a; sleep 2; } > /f", "sleep", RUN_OVERHEAD + 2, 0.0),
    ("(cd /src && make); sleep 1", "compile", RUN_OVERHEAD + 1, 8.0),
    # command substitution and arithmetic: the commands inside run, the words around stay the command's
    ("cp $(ls /a) /dst", "trivial", RUN_OVERHEAD, 0.0),
    ("make -j$(nproc) && [[ -x /x ]]", "compile", RUN_OVERHEAD, 8.0),
    ("echo $((1 + 2)); sleep 2", "sleep", RUN_OVERHEAD + 2, 0.0),
    # redirections: the target is no command
    ("gzip -9 < /in > /out 2>&1", "utility", RUN_OVERHEAD, UTILITY_WORK),
    # wrappers that run a string or the words after them
    ("sh -c 'echo $V; sleep 2'", "sleep", RUN_OVERHEAD + 2, 0.0),
    ('bash -c "sleep 3"', "sleep", RUN_OVERHEAD + 3, 0.0),
    ('bash -lc "apt-get update"', "package", RUN_OVERHEAD + 5, 5.0),
    ('bash -o pipefail -euxc "cargo build"', "compile", RUN_OVERHEAD, 8.0),
    ("""sh -c "bash -c 'sleep 7'" """, "sleep", RUN_OVERHEAD + 7, 0.0),
    ("env A=1 B=2 sleep 4", "sleep", RUN_OVERHEAD + 4, 0.0),
    ("env -u HOME -i go build ./...", "compile", RUN_OVERHEAD, 8.0),
    ("A=1 exec sleep 5", "sleep", RUN_OVERHEAD + 5, 0.0),
    ("nice -n 10 make", "compile", RUN_OVERHEAD, 8.0),
    ("timeout 30 sleep 2", "sleep", RUN_OVERHEAD + 2, 0.0),
    ("timeout -s KILL 5m gzip big", "utility", RUN_OVERHEAD, UTILITY_WORK),
    ("time -p cc -o /x x.c", "compile", RUN_OVERHEAD, 8.0),
    ("ls | xargs -n1 -I {} sh -c 'sleep 1; gzip {}'", "utility", RUN_OVERHEAD + 1, UTILITY_WORK),
    # what is really unknown stays so: a script, a shell running a file, a quoted string that is data
    ("sh ./build.sh", "unknown", RUN_OVERHEAD, 3.0),
    ('echo "make; sleep 100"', "trivial", RUN_OVERHEAD, 0.0),
    ("<<EOT", "unknown", RUN_OVERHEAD, 3.0),  # BuildKit's heredoc script: its body is not in the words
    ("cat <<EOF > /etc/x.conf", "trivial", RUN_OVERHEAD, 0.0),  # a heredoc as a command's input is data
])
def test_a_runs_prior_comes_from_every_command_it_runs_seen_through_the_shell(command, kind, io, cpu):
    """Rule (issue 17): a RUN's prior counts each simple command ``/bin/sh -c`` would run, through
    lists, compound commands, substitutions and wrappers (``sh -c STRING``, ``env``, ``exec``,
    ``nice``, ``timeout``, ``time``, ``xargs``); reserved words, case patterns, a for's words and
    redirection targets run nothing."""
    got = step_prior("RUN", command.split(" "))
    assert (got.kind, got.io, got.cpu) == (kind, pytest.approx(io), pytest.approx(cpu))


def test_the_exec_form_through_a_shell_is_read_as_the_shell_form():
    got = step_prior("RUN", ["/bin/sh", "-c", "echo $V; sleep 2"], json=True)
    assert (got.kind, got.io, got.cpu) == ("sleep", pytest.approx(RUN_OVERHEAD + 2), 0.0)


def test_wrapped_sleeps_are_estimated_as_sleeps_under_qemu_not_as_unknown_cpu_work(ctx):
    """The tester's first runs (empty history, arm64 emulated): each RUN is its sleep plus the
    container's start, not the unknown prior times the QEMU factor (130.9 s for 5.2 s)."""
    text = (f"FROM {BASE}\nARG V=1\nRUN sh -c 'echo $V; sleep 2'\n"
            "RUN if [ -n \"$X\" ]; then echo y; fi; sleep 2\nRUN sh -c 'echo a; sleep 3'\nRUN echo start; sleep 3\n")
    request = request_for(ctx, text)
    plans = steps.planned(request, ARM, [AMD], [ARM])
    assert [p.emulated for p in plans] == [True] * 4
    got = [steps.estimate(p, steps.prior_of(p, request), [], speed=1.0) for p in plans]
    assert got == [(pytest.approx(RUN_OVERHEAD + s), "prior (sleep)") for s in (2, 2, 3, 3)]


@pytest.mark.parametrize("sources,path,copied", [
    (["."], "Dockerfile", True),
    (["./"], "docker/Dockerfile", True),
    (["*"], "Dockerfile", True),
    (["Docker*"], "Dockerfile", True),
    (["docker/"], "docker/Dockerfile", True),
    (["d*"], "docker/Dockerfile", True),  # a pattern matching a directory above it
    (["$SRC"], "Dockerfile", True),  # a variable may name anything
    (["a.txt", "b/"], "Dockerfile", False),
    (["docker"], "build/Dockerfile", False),
    (["<<EOF"], "Dockerfile", False),  # a heredoc is no context path
    # Go's filepath.Match, component by component: * and ? never cross a /
    (["src/*.go"], "src/a.go", True),
    (["src/*.go"], "src/x/a.go", False),
    (["*.go"], "cmd/main.go", False),
    (["src/*"], "src/x/a.go", True),  # src/x matches: everything below it is copied
    (["go.*"], "go.sum", True),
    (["[^a]*"], "b.txt", True),
    (["[^a]*"], "a.txt", False),
    (["[!a]*"], "b.txt", False),  # Go: [!a] is the set {!, a}; only [^a] negates (BuildKit kept it CACHED)
    (["[!a]*"], "a.txt", True),
    (["a\\*b"], "a*b", True),  # an escaped star is a star
    (["a\\*b"], "axb", False),
    (["file["], "file[", True),  # a [ without its ] is itself
    (["[a-c]/x"], "b/x/y", True),
    (["./src/../go.mod"], "go.mod", True),  # cleaned as BuildKit cleans it
])
def test_which_copies_copy_the_dockerfile(sources, path, copied):
    """Rule (steps.copies): BuildKit's COPY sources are paths and Go filepath.Match patterns
    from the context's root; the Dockerfile is copied by a source that is the root, the file, a
    directory above it or a pattern matching one of those."""
    assert steps.copies(sources, path) is copied


def test_editing_a_dockerfile_in_its_context_keeps_a_copy_of_other_files_cached(tmp_path):
    """Rule (issue 17: a change to one step re-estimates that step only): the context's files key
    leaves the Dockerfile out; a COPY of other files keeps its chain when the Dockerfile is
    edited, a COPY that copies the Dockerfile (COPY . /src) does not. The fresh-user helper saw
    both marked 'not cached' after appending a RUN, and BuildKit then report them CACHED."""
    from archfleet.history import context_files

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a")
    text = f"FROM {BASE}\nCOPY a.txt /a.txt\nCOPY . /src\nRUN cat /a.txt\n"

    def chains(text):
        request = request_for(ctx, text)
        plan = steps.planned(request, ARM, [ARM], [], context_files(request))
        return {p.text: p.chain for p in plan}

    before = chains(text)
    after = chains(text + "RUN echo new > /new\n")
    assert after["COPY a.txt /a.txt"] == before["COPY a.txt /a.txt"]
    assert after["COPY . /src"] != before["COPY . /src"]
    assert after["RUN cat /a.txt"] != before["RUN cat /a.txt"]  # it comes after COPY . in the chain


def _touch(path, text):
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime, whatever the clock's grain


def _chains(ctx, text):
    from archfleet.history import context_files

    request = request_for(ctx, text)
    return {p.text: p.chain for p in steps.planned(request, ARM, [ARM], [], context_files(request))}


def test_editing_a_file_a_copy_does_not_copy_keeps_that_copy_and_the_steps_after_it_cached(tmp_path):
    """Rule (issue 17: a change to one step re-estimates that step only; BuildKit's COPY cache
    key covers the files it copies): the dependency layer of every real Dockerfile
    (``COPY go.mod go.sum ./`` then ``RUN go mod download``) stays cached when main.go changes;
    the ``COPY . .`` after it and its RUN do not."""
    ctx = tmp_path / "ctx"
    (ctx / "cmd").mkdir(parents=True)
    for name in ("go.mod", "go.sum", "cmd/main.go"):
        (ctx / name).write_text(name)
    text = (f"FROM {BASE}\nWORKDIR /src\nCOPY go.mod go.sum ./\nRUN cat go.mod\nCOPY . .\n"
            "RUN cat cmd/main.go\n")
    before = _chains(ctx, text)
    _touch(ctx / "cmd" / "main.go", "changed")
    after = _chains(ctx, text)
    assert after["COPY go.mod go.sum ./"] == before["COPY go.mod go.sum ./"]
    assert after["RUN cat go.mod"] == before["RUN cat go.mod"]
    assert after["COPY . ."] != before["COPY . ."]
    assert after["RUN cat cmd/main.go"] != before["RUN cat cmd/main.go"]
    _touch(ctx / "go.sum", "new sums")
    again = _chains(ctx, text)
    assert again["COPY go.mod go.sum ./"] != after["COPY go.mod go.sum ./"]
    assert again["RUN cat go.mod"] != after["RUN cat go.mod"]


def test_editing_an_ignored_file_changes_no_step(tmp_path):
    """Rule (BuildKit's ignore rule, archfleet.context.ignore_file): a file the .dockerignore
    keeps out of the context reaches no COPY, so editing it (a build output, .git) leaves every
    chain, and the files key the history matches syncs by, as they were."""
    from archfleet.history import context_files

    ctx = tmp_path / "ctx"
    (ctx / "out").mkdir(parents=True)
    (ctx / "a.txt").write_text("a")
    (ctx / "out" / "bin").write_text("1")
    (ctx / ".dockerignore").write_text("out\n")
    text = f"FROM {BASE}\nCOPY . /src\nRUN ls /src\n"
    before = _chains(ctx, text)
    key_before = context_files(request_for(ctx, text))
    _touch(ctx / "out" / "bin", "22")
    assert _chains(ctx, text) == before
    files = context_files(request_for(ctx, text))
    assert files.key == key_before.key and [e[0] for e in files.entries] == [".dockerignore", "a.txt"]
    _touch(ctx / "a.txt", "b")
    assert _chains(ctx, text)["COPY . /src"] != before["COPY . /src"]


@pytest.mark.parametrize("mount,depends", [
    ("--mount=type=bind,source=src,target=/src", True),
    ("--mount=target=/ctx", True),  # a bind of the context's root by default
    ("--mount=type=bind,src=docs,target=/d", False),
    ("--mount=type=cache,target=/root/.cache", False),
    ("--mount=type=tmpfs,target=/tmp", False),
])
def test_a_run_that_bind_mounts_the_context_depends_on_the_files_it_mounts(tmp_path, mount, depends):
    """Rule (BuildKit: RUN --mount's default type is bind, its default source the root of the
    context): a RUN that bind-mounts the context is cached only while the files under its source
    are the same; other mounts do not see the context."""
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "docs").mkdir()
    (ctx / "src" / "a.c").write_text("int a;")
    (ctx / "docs" / "x.md").write_text("x")
    text = f"FROM {BASE}\nRUN {mount} true\n"
    before = _chains(ctx, text)
    _touch(ctx / "src" / "a.c", "int b;")
    assert (_chains(ctx, text) != before) is depends


def test_a_dockerfile_the_ignore_file_keeps_out_is_copied_by_no_step(tmp_path):
    """Rule (BuildKit sends the Dockerfile apart and applies .dockerignore to it like any file):
    with the Dockerfile ignored, editing it leaves ``COPY . .`` cached (the fresh-user helper
    saw plan say not cached, BuildKit CACHED); not ignored, the same edit re-runs it."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a")
    text = f"FROM {BASE}\nCOPY . /src\n"
    for ignore, same in (("Dockerfile\n", True), ("nothing-here\n", False)):
        (ctx / ".dockerignore").write_text(ignore)
        before = _chains(ctx, text)
        after = _chains(ctx, text + "RUN echo tail\n")
        assert (after["COPY . /src"] == before["COPY . /src"]) is same, ignore


@pytest.mark.parametrize("change,copy,changed", [
    (lambda ctx: (ctx / "dir" / "a.txt").chmod(0o755), "COPY dir/ /d/", True),  # a mode: BuildKit copies it again
    (lambda ctx: (ctx / "dir" / "empty").mkdir(), "COPY dir/ /d/", True),  # an empty directory is copied too
    (lambda ctx: (ctx / "dir").chmod(0o700), "COPY dir/ /d/", False),  # a directory's mode: BuildKit kept it CACHED
    (lambda ctx: (ctx / "other").mkdir(), "COPY dir/ /d/", False),  # not under its source
    (lambda ctx: (ctx / "dir" / "empty").mkdir(), "COPY other.txt /o", False),
])
def test_a_copys_chain_follows_modes_and_directories_as_buildkits_cache_key_does(tmp_path, change, copy, changed):
    """Rule (BuildKit's COPY cache key, as the fresh-user helpers measured it: each copied
    file's contents and mode, and which directories there are, not their modes): `chmod +x` of
    a file and `mkdir dir/e` made BuildKit copy again (plan had said cached); `chmod 700` of a
    directory did not."""
    ctx = tmp_path / "ctx"
    (ctx / "dir").mkdir(parents=True)
    (ctx / "dir" / "a.txt").write_text("a")
    (ctx / "dir" / "a.txt").chmod(0o644)
    (ctx / "other.txt").write_text("o")
    text = f"FROM {BASE}\n{copy}\n"
    before = _chains(ctx, text)
    change(ctx)
    assert (_chains(ctx, text)[copy] != before[copy]) is changed


def test_a_file_touched_but_not_changed_changes_no_step(tmp_path):
    """Rule (BuildKit's COPY cache key: contents and mode, not the mtime): a fresh checkout or
    `touch` leaves every COPY cached (the first fresh-user helper: plan said not cached, BuildKit
    CACHED); the same size with other bytes does not."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("aaaa")
    text = f"FROM {BASE}\nCOPY a.txt /a\nRUN cat /a\n"
    before = _chains(ctx, text)
    _touch(ctx / "a.txt", "aaaa")  # the same bytes, a new mtime
    assert _chains(ctx, text) == before
    _touch(ctx / "a.txt", "bbbb")  # the same size, other bytes
    assert _chains(ctx, text)["COPY a.txt /a"] != before["COPY a.txt /a"]


@pytest.mark.parametrize("link,copy", [
    ("dir", "COPY link/a.txt /a"),  # a linked directory on the way to the file
    ("dir", "COPY link /d"),  # the source is the link: its target is copied
    ("/dir", "COPY link/a.txt /a"),  # an absolute target is inside the context (BuildKit's fs.RootPath)
    ("../../dir", "COPY link/a.txt /a"),  # and so is a .. above it
    ("dir", "COPY link/*.txt /d/"),  # a pattern below the link
])
def test_a_copy_through_a_symlinked_directory_is_keyed_by_what_it_copies(tmp_path, link, copy):
    """Rule (BuildKit's COPY follows symbolic links in its source, FollowSymlinks): `COPY
    link/a.txt` with `link -> dir` copies dir/a.txt, so editing dir/a.txt changes that COPY's
    chain (the second fresh-user helper: plan said cached, BuildKit copied again); a file it
    does not reach changes nothing."""
    ctx = tmp_path / "ctx"
    (ctx / "dir").mkdir(parents=True)
    (ctx / "dir" / "a.txt").write_text("a")
    (ctx / "other.txt").write_text("o")
    (ctx / "link").symlink_to(link)
    text = f"FROM {BASE}\n{copy}\n"
    before = _chains(ctx, text)
    (ctx / "other.txt").write_text("changed")
    assert _chains(ctx, text)[copy] == before[copy]
    (ctx / "dir" / "a.txt").write_text("changed")
    assert _chains(ctx, text)[copy] != before[copy]


@pytest.mark.parametrize("src,resolved", [
    ("link/f", "dir/f"), ("./link/x/y", "dir/x/y"), ("abs/f", "dir/sub/f"), ("up/f", "dir/f"),
    ("root", ""),  # a link to the context itself: the whole context
    ("d/in/f", "dir/f"),  # a relative target is read from the link's own directory
    ("dir/f", None), ("l*/f", None), ("$X/f", None),  # no link, a pattern first, a variable
    ("a/x", "a/x"),  # a loop of links: BuildKit fails the COPY (ELOOP); resolved as far as it goes
])
def test_through_links_resolves_the_literal_components_as_buildkit_does(src, resolved):
    links = {"link": "dir", "abs": "/dir/sub", "up": "../../dir", "a": "b", "b": "a", "root": ".", "d/in": "../dir"}
    assert steps.through_links(links, src) == resolved


def test_buildkits_receiving_of_the_context_is_timed_apart_from_the_steps():
    """Rule (issue 17, the transfer part): BuildKit's ``[internal] load build context`` vertex is
    the context's transfer into the engine, not a step and not fixed cost; its other internal
    vertices (the Dockerfile, the ignore file, metadata) are neither."""
    clock = steps.StepClock()
    for line in ["#1 [internal] load build definition from Dockerfile", "#1 DONE 0.1s",
                 "#2 [internal] load .dockerignore", "#2 DONE 0.0s",
                 "#5 [internal] load build context", "#5 transferring context: 48.01MB 0.4s done", "#5 DONE 0.4s",
                 "#6 [2/3] COPY data /data", "#6 DONE 0.2s", "#8 exporting to image", "#8 DONE 0.2s"]:
        clock.feed(line)
    assert clock.context_load() == 0.4
    assert [(s.keyword, s.seconds) for s in clock.steps()] == [("COPY", 0.2)]
    cached = steps.StepClock()
    for line in ["#3 [internal] load build context", "#3 CACHED"]:
        cached.feed(line)
    assert cached.context_load() == 0.0 and steps.StepClock().context_load() == 0.0
