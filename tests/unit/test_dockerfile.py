"""The Dockerfile analysis: BuildKit's parser underneath, archfleet's semantics on top.

Each test names the BuildKit rule it checks and the right value (review findings 11, 12, 13)."""

import json
import types

import pytest

from archfleet.dockerfile import (BUILD, TARGET, DockerfileError, analyse, analyse_text, instructions)
from archfleet.model import BuildRequest, NodeFacts, NodeSpec
from archfleet.pipeline import Planned, unplannable_reason
from archfleet.planner import Plan
from archfleet.platforms import parse
from archfleet.plugins import cross, native, qemu
from archfleet.shellword import expand

AMD, ARM, S390X = parse("linux/amd64"), parse("linux/arm64"), parse("linux/s390x")

CROSS = """\
# syntax=docker/dockerfile:1
ARG REGISTRY=127.0.0.1:5000
ARG TOOLCHAIN=${REGISTRY}/archfleet/zig:0.14.1
ARG BASE=${REGISTRY}/archfleet/busybox:latest
FROM --platform=$BUILDPLATFORM ${TOOLCHAIN} AS build
ARG ZIG_TARGET
COPY hello.c .
RUN zig cc -target "$ZIG_TARGET" -o /hello hello.c
FROM ${BASE}
COPY --from=build /hello /usr/bin/hello
CMD ["hello"]
"""


def test_cross_dockerfile():
    a = analyse_text(CROSS)
    build, final = a.stages
    assert (build.name, build.platform, build.base, build.runs) == ("build", BUILD, "127.0.0.1:5000/archfleet/zig:0.14.1", 1)
    assert (final.platform, final.base, final.deps, final.runs) == (TARGET, "127.0.0.1:5000/archfleet/busybox:latest", (0,), 0)
    assert a.cross and a.target_runs == 0 and a.build_runs == 1
    assert "ZIG_TARGET" in a.declared_args and "GOARCH" not in a.declared_args
    assert a.describe() == "build@$BUILDPLATFORM (1 RUN), #1@target"
    assert a.warnings == ()


def test_build_arg_overrides_global_default():
    a = analyse_text(CROSS, build_args={"REGISTRY": "10.231.0.1:5000"})
    assert a.stages[1].base == "10.231.0.1:5000/archfleet/busybox:latest"


TRICKY = """\
ARG IMG=base
from --platform=$BUILDPLATFORM $IMG as build
run <<EOF
FROM not-a-stage
echo "hi"
EOF
RUN <<-A cat > /x && <<'B' cat > /y
\tFROM also-not-a-stage
\tA
FROM nope
B
RUN echo a \\
# a comment inside a continuation
    && echo b
FROM ${IMG}
copy --from=build \\
    /out /out
RUN ["sh", "-c", "echo final"]
"""


def test_continuations_heredocs_lowercase_and_comments():
    a = analyse_text(TRICKY)
    assert len(a.stages) == 2
    assert a.stages[0].runs == 3 and a.stages[0].platform == BUILD
    assert a.stages[1].deps == (0,) and a.stages[1].runs == 1
    assert a.target_runs == 1  # the final stage RUNs: it needs the target CPU or QEMU
    assert [i.line for i in instructions(TRICKY)] == [1, 2, 3, 7, 12, 15, 16, 18]


def test_platform_written_out_and_stage_names_reused():
    # BuildKit: FROM <name> means the last stage of that name so far; --from and a mount's
    # from= are looked up once every stage is known, so they mean the name's last stage
    text = """\
FROM --platform=linux/amd64 img AS tool
FROM --platform=$TARGETPLATFORM img AS x
RUN true
FROM img AS y
COPY --from=x /a /a
FROM img AS x
FROM --platform=$BUILDPLATFORM img AS other
FROM x
RUN --mount=type=bind,from=tool,target=/t true
"""
    a = analyse_text(text)
    assert a.stages[0].platform == "linux/amd64" and a.stages[0].pinned
    assert a.stages[1].platform == TARGET
    last = a.stages[-1]
    assert last.parent == 3 and last.deps == (0,)  # FROM x: the x before it, the second one
    assert a.reachable == (0, 3, 5)
    assert not a.cross  # the unused $BUILDPLATFORM stage does not count
    # y copies from x, which by then means the second x, defined after y (seen in the lab:
    # Docker 20.10's BuildKit copies from it before it is built and fails)
    with pytest.raises(DockerfileError, match=r"^Dockerfile:5: --from=x refers to a stage that is not before it$"):
        analyse_text(text, target="y")


def test_copy_from_the_stage_it_is_in_is_a_circular_dependency():
    # seen in the lab: "circular dependency detected on stage: x" (a name used twice is its last stage)
    with pytest.raises(DockerfileError, match=r"^Dockerfile:4: --from=x: circular dependency"):
        analyse_text("FROM a AS x\nRUN echo first > /a\nFROM b AS x\nCOPY --from=x /a /a\n")


def test_a_mount_from_a_number_is_an_image_not_a_stage_index():
    # dockerfile2llb's detectRunMount looks mounts up by name only (the lab pulled docker.io/library/0)
    a = analyse_text("FROM --platform=$BUILDPLATFORM a AS src\nFROM b\nRUN --mount=from=0,target=/m true\n")
    assert a.stages[1].deps == () and not a.cross


def test_target_selects_reachable_stages():
    text = "FROM --platform=$BUILDPLATFORM a AS b\nRUN make\nFROM c AS test\nRUN test\nFROM d\nCOPY --from=b /x /x\n"
    assert analyse_text(text, target="test").reachable == (1,)
    assert analyse_text(text).reachable == (0, 2)


def test_escape_directive():
    text = "# escape=`\nFROM a\nRUN echo `\n  b\nRUN c\n"
    insts = instructions(text)
    assert [(i.keyword, i.line) for i in insts] == [("FROM", 2), ("RUN", 3), ("RUN", 5)]


# --- finding 11: a heredoc is only a whole shell word <<WORD, never in JSON form -----------------

@pytest.mark.parametrize("run", [
    "RUN sed -i 's/<<VERSION>>/1.0/' /etc/motd",
    "RUN echo $((1<<SHIFT))",
    "RUN python3 -c 'print(1<<X)'",
    'RUN ["sh", "-c", "cat <<EOF"]',
])
def test_heredoc_marker_inside_a_word_or_json_is_not_a_heredoc(run):
    # BuildKit's heredocsFromLine: only words matching ^(\d*)<<(-?)([^<]*)$ after shell
    # splitting, and canContainHeredoc is false for JSON form. The later lines stay instructions.
    a = analyse_text(f"FROM a AS one\n{run}\nFROM b\nCOPY --from=one /x /x\nRUN true\n")
    assert [(s.name, s.runs) for s in a.stages] == [("one", 1), (None, 1)]
    assert a.stages[1].deps == (0,)


def test_a_real_heredoc_body_is_not_parsed_as_instructions():
    a = analyse_text("FROM a\nRUN <<SHIFT\nFROM not-a-stage\nSHIFT\nFROM b\n")
    assert [s.base for s in a.stages] == ["a", "b"]


# --- finding 12: BuildKit's lexer -------------------------------------------------------------------

def test_any_whitespace_separates_keyword_and_words():
    # BuildKit splits instructions on [\t\v\f\r ]+
    a = analyse_text("FROM\talpine AS\tbase\nFROM  --platform=$BUILDPLATFORM golang AS build\nRUN go build\n"
                     "FROM  base\nCOPY  --from=build /x /x\n")
    assert [s.base for s in a.stages] == ["alpine", "golang", "base"]
    assert a.stages[1].platform == BUILD
    assert a.stages[2].deps == (1,) and a.stages[2].parent == 0
    assert a.cross  # the two-space COPY --from keeps its edge


def test_a_utf8_byte_order_mark_is_skipped(tmp_path):
    # BuildKit (moby#23234) discards a leading BOM
    a = analyse_text("\ufeffARG BASE=busybox\nFROM $BASE\nRUN true\n")
    assert a.stages[0].base == "busybox" and a.target_runs == 1
    df = tmp_path / "Dockerfile"
    df.write_bytes(b"\xef\xbb\xbfFROM alpine\n")
    req = types.SimpleNamespace(dockerfile=df, build_args=(), target=None, platforms=(AMD,))
    assert analyse(req).stages[0].base == "alpine"


@pytest.mark.parametrize("flag,platform", [
    ('--platform="$BUILDPLATFORM"', BUILD),  # flag values are shell-unquoted
    ("--platform='$BUILDPLATFORM'", BUILD),  # (BuildKit unquotes the flag, then expands it)
    ("--platform=${BUILDPLATFORM}", BUILD),
    ("--platform=linux/$BUILDARCH", BUILD),  # the build machine, however it is spelled
    ("--platform=$BUILDOS/$BUILDARCH", BUILD),
    ("--platform=${BUILDOS}/${BUILDARCH}${BUILDVARIANT:+/$BUILDVARIANT}", BUILD),
    ("--platform=linux/$TARGETARCH", TARGET),
    ("--platform=$TARGETPLATFORM", TARGET),
    ('--platform="linux/arm64"', "linux/arm64"),
    ("--platform=aarch64", "linux/arm64"),  # a literal, normalised like containerd
])
def test_platform_flag_values_are_unquoted_and_expanded(flag, platform):
    a = analyse_text(f"FROM {flag} golang AS build\nRUN go build\nFROM alpine\nCOPY --from=build /x /x\n",
                     platforms=(AMD, ARM))
    assert a.stages[0].platform == platform
    assert a.cross == (platform == BUILD)


def test_linux_buildarch_stage_is_the_build_platform_on_every_node():
    a = analyse_text("FROM --platform=linux/$BUILDARCH b AS build\nRUN make\nFROM t\nCOPY --from=build /x /x\n")
    for node in (AMD, ARM, parse("linux/arm/v7")):
        assert a.platform_of(0, node, S390X) == node


def test_target_with_a_variant_its_spelling_loses_is_resolved_per_target():
    # linux/$TARGETARCH for linux/arm/v6 is linux/arm, which containerd reads as arm/v7
    v6 = parse("linux/arm/v6")
    a = analyse_text("FROM --platform=linux/$TARGETARCH b\nRUN x\n", platforms=(v6,))
    assert a.stages[0].platform == "linux/$TARGETARCH"
    assert a.platform_of(0, AMD, v6) == parse("linux/arm/v7")


@pytest.mark.parametrize("line,message", [
    ("COPY --from=${STAGE} /x /x", "Dockerfile:5: COPY --from=${STAGE}: BuildKit does not expand variables in --from"),
    ("COPY --from=$STAGE /x /x", "Dockerfile:5: COPY --from=$STAGE: BuildKit does not expand variables in --from"),
    ("COPY --from=build-${TARGETARCH} /x /x", "Dockerfile:5: COPY --from=build-${TARGETARCH}: BuildKit does not"),
    ("RUN --mount=type=bind,from=${STAGE},target=/t true",
     "Dockerfile:5: RUN --mount from=${STAGE}: BuildKit does not expand variables in a mount's from"),
    ("ADD --from=build /x /x", "Dockerfile:5: ADD has no --from flag"),
])
def test_a_variable_in_from_is_refused_as_buildkit_refuses_it(line, message):
    # dockerfile2llb toCommand: "variable expansion is not supported for --from, define a new
    # stage with FROM using ARG from global scope as a workaround"; instructions.parseMount:
    # "'from' doesn't support variable expansion, define alias stage instead". Docker 20.10
    # fails too ("failed to parse stage name "${STAGE}"", seen in the lab): exit 2 before building
    text = f"ARG STAGE=build\nFROM --platform=$BUILDPLATFORM golang AS build\nRUN go build\nFROM alpine\n{line}\n"
    with pytest.raises(DockerfileError) as err:
        analyse_text(text)
    assert str(err.value).startswith(message) and err.value.exit_code == 2


def test_the_global_arg_workaround_names_the_stage():
    # the supported spelling: a global ARG chooses the stage in FROM, --from names that stage
    text = ("ARG STAGE=build\nFROM --platform=$BUILDPLATFORM golang AS build\nRUN go build\n"
            "FROM golang AS native\nRUN go build\nFROM ${STAGE} AS picked\nFROM alpine\nCOPY --from=picked /x /x\n")
    a = analyse_text(text)
    assert a.used[-1].deps == (2,) and a.stages[2].parent == 0 and a.reachable == (0, 2, 3)
    assert a.cross and a.stages[2].platform == BUILD  # a stage FROM a stage runs on its platform
    b = analyse_text(text, build_args={"STAGE": "native"})
    assert b.reachable == (1, 2, 3) and not b.cross


def test_a_target_dependent_stage_is_picked_per_target():
    # FROM builder-${TARGETARCH}: FROM expands the automatic platform ARGs, so each target
    # builds from its own stage (the documented replacement for --from=builder-$TARGETARCH)
    text = ("FROM --platform=$BUILDPLATFORM a AS builder-amd64\nRUN x\n"
            "FROM --platform=linux/s390x a AS builder-arm64\nRUN y\n"
            "FROM builder-${TARGETARCH} AS builder\nFROM c\nCOPY --from=builder / /\n")
    a = analyse_text(text)
    assert a.stages[2].deps == (0, 1)  # without a target: every stage it could pick
    node = (AMD, parse("linux/386"))
    # building arm64 picks builder-arm64, pinned to s390x, which this amd64 node cannot run
    assert not a.placement(ARM, node, ()).possible
    assert a.placement(AMD, node, ()).possible  # builder-amd64 runs natively
    assert a.platform_of(2, AMD, ARM) == S390X  # the picked stage's platform carries over


def test_directives_end_at_the_first_unknown_one():
    # BuildKit stops reading parser directives at a line that is not a known directive, so
    # `# escape=`` after `# foo=bar` is a comment and ` is not the escape character
    a = analyse_text("# foo=bar\n# escape=`\nFROM a\nRUN echo `\nFROM b\n")
    assert [s.base for s in a.stages] == ["a", "b"]


def test_a_directive_given_twice_is_an_error_on_its_line():
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: only one escape parser directive"):
        analyse_text("# escape=\\\n# escape=`\nFROM a\n")


def test_undeclared_arg_in_from_expands_to_empty_with_a_warning():
    # BuildKit's lint UndefinedArgInFrom: a warning, and the name expands to empty
    a = analyse_text("FROM ${REGISTRY}alpine\n")
    assert a.stages[0].base == "alpine"
    assert a.warnings == ("Dockerfile:1: FROM argument 'REGISTRY' is not declared by an ARG before the first FROM; "
                          "it expands to empty (as in BuildKit)",)


def test_nested_default_expansion():
    assert analyse_text("ARG C=x\nARG B=${A:-$C}\nFROM img-$B\n").stages[0].base == "img-x"
    assert analyse_text("ARG B=${A:-$C}\nFROM img$B\n").stages[0].base == "img"  # $C unset: empty, no error
    assert analyse_text("ARG A=1\nARG B=${A:+on-$A}\nFROM img-$B\n").stages[0].base == "img-on-1"


def test_an_escaped_backslash_at_the_end_of_a_line_is_not_a_continuation():
    a = analyse_text("FROM a\nRUN echo foo \\\\\nFROM b\n")
    assert [s.base for s in a.stages] == ["a", "b"]


def test_a_dockerfile_that_is_not_utf8_is_one_line_naming_file_line_and_byte(tmp_path):
    df = tmp_path / "Dockerfile"
    df.write_bytes(b"FROM alpine\nLABEL who=\"Ren\xe9\"\n")
    req = types.SimpleNamespace(dockerfile=df, build_args=(), target=None, platforms=(AMD,))
    with pytest.raises(DockerfileError) as err:
        analyse(req)
    assert str(err.value) == f"{df}:2: not UTF-8 (byte 26 is 0xe9); save the Dockerfile as UTF-8"
    assert err.value.exit_code == 2


def test_word_expansion_follows_buildkit_shell_lex():
    env = {"A": "a", "E": "", "P": "linux/arm/v7", "U": None}
    cases = {
        '"$A"x': "ax", "'$A'": "$A", "\\$A": "$A", "${A}b": "ab", "${U:-d}": "d", "${E:-d}": "d", "${E-d}": "",
        "${U-d}": "d", "${A:+y}": "y", "${E:+y}": "", "${E+y}": "y", "${P%/*}": "linux/arm", "${P%%/*}": "linux",
        "${P#*/}": "arm/v7", "${P##*/}": "v7", "${P/arm/ARM}": "linux/ARM/v7", "$": "$", "a$-b": "ab",
    }
    for word, want in cases.items():
        assert expand(word, env)[0] == want, word
    assert expand("${A:-$C}${U}", env) == ("a", ("C", "U"))
    with pytest.raises(ValueError, match="missing '}'"):
        expand("${A", env)


@pytest.mark.parametrize("text,target,needle", [
    ("FROM $NOPE\n", None, "Dockerfile:1: FROM $NOPE expands to nothing"),
    ("ARG IMG\nFROM $IMG\n", None, "Dockerfile:2: FROM $IMG expands to nothing"),
    ("RUN x\nFROM a\n", None, "Dockerfile:1: only ARG may come before the first FROM"),
    ("FROM a\nFROM b\n", "nope", "--target: no stage named 'nope'"),
    ("FROM --platform=linux/foo a\n", None, "Dockerfile:1: FROM --platform=linux/foo: unknown architecture"),
    ("FROM --platform=linux/$NOPE a\n", None, "Dockerfile:1: FROM --platform=linux/$NOPE: invalid platform 'linux/'"),
    ("FROM a\nRUN <<EOF\necho\n", None, "Dockerfile:2: unterminated heredoc"),
    ("FROM a\nRUN true\nRUN <<EOF\necho\n", None, "Dockerfile:3: unterminated heredoc"),
    ("FROM a\nRUN <<A\nx\nA\nRUN true\nRUN <<EOF\nhi\n", None, "Dockerfile:6: unterminated heredoc"),
    ("FROM a\nRUN <<EOF\n" + "echo\n" * 500, None, "Dockerfile:2: unterminated heredoc"),
    ("# just a comment\n", None, "Dockerfile:1: no FROM"),
    ("FROM a\n123 x\n", None, "Dockerfile:2: unknown instruction '123'"),
    ("FROM a\nENV A\n", None, "Dockerfile:2: ENV must have two arguments"),
    ("FROM a b\n", None, "Dockerfile:1: FROM takes IMAGE [AS NAME]"),
    ("FROM a AS 1st\n", None, "Dockerfile:1: invalid stage name '1st'"),
    ("FROM a\nCOPY --from=1 /x /x\n", None, "Dockerfile:2: --from=1 refers to a stage that is not before it"),
    ("FROM ${A\n", None, "Dockerfile:1: syntax error: missing '}'"),
    ("# escape=x\nFROM a\n", None, "Dockerfile:1: invalid escape token"),
])
def test_errors_name_the_line(text, target, needle):
    with pytest.raises(DockerfileError) as err:
        analyse_text(text, target=target)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


# --- finding 13: stages pinned to a literal platform --------------------------------------------------

PINNED = """\
FROM --platform=linux/amd64 golang AS build
RUN GOARCH=arm64 go build -o /app
FROM alpine
COPY --from=build /app /app
"""


def _facts(name, native, emulated=()):
    transport = "local" if name == "local" else "ssh"
    return NodeFacts(NodeSpec(name, transport=transport), True, native=native, emulated=emulated,
                     builder="buildkit", engine_cli=["docker"], cpus=2)


LOCAL = _facts("local", AMD.native_also())
PI4 = _facts("pi4", ARM.native_also())  # no binfmt handlers


def _offers(tmp_path, text, platform, facts):
    df = tmp_path / "Dockerfile"
    df.write_text(text)
    req = BuildRequest(tmp_path, df, [platform])
    return req, {m.STRATEGY: m.archfleet_offer(platform, req, facts) for m in (native, qemu, cross)}


def test_a_stage_pinned_to_amd64_is_built_on_the_amd64_node_by_cross(tmp_path):
    _, got = _offers(tmp_path, PINNED, ARM, (LOCAL, PI4))
    # pi4 runs arm64 but can neither run nor emulate the amd64 stage's RUN: not offered there;
    # the amd64 node runs that stage natively, and the final stage RUNs nothing
    assert got["native"] == [] and got["qemu"] == []
    assert [(o.node, o.emulated) for o in got["cross"]] == [("local", False)]
    assert "build@linux/amd64 (1 RUN), #1@target; no emulation needed" in got["cross"][0].why


def test_a_pinned_stage_is_costed_under_qemu_where_it_is_emulated(tmp_path):
    pi4 = _facts("pi4", ARM.native_also(), emulated=(AMD,))
    _, got = _offers(tmp_path, PINNED, ARM, (pi4,))
    (opt,) = got["native"]
    assert opt.emulated and "1 RUN on linux/amd64 under qemu-x86_64" in opt.why
    _, plain = _offers(tmp_path, "FROM golang\nRUN go build\n", ARM, (pi4,))
    assert opt.estimate > plain["native"][0].estimate  # the RUN step at the QEMU factor


def test_a_pinned_stage_equal_to_the_target_is_native_there(tmp_path):
    _, got = _offers(tmp_path, PINNED, AMD, (LOCAL, PI4))
    assert [(o.node, o.emulated) for o in got["native"]] == [("local", False)]
    assert got["cross"] == [] and got["qemu"] == []


def test_plan_says_why_a_node_that_runs_the_target_was_not_offered(tmp_path):
    req, _ = _offers(tmp_path, PINNED, ARM, (PI4,))
    planned = Planned({"pi4": PI4}, (), Plan((), (), ((ARM, ""),)), request=req)
    assert unplannable_reason(ARM, planned) == (
        "no node can build linux/arm64 (pi4: stage build (line 1) RUNs on linux/amd64, which this node neither "
        "runs natively nor emulates (no qemu-x86_64 handler; `archfleet binfmt --install linux/amd64`))")


# --- malformed input: one line, exit 2, never a crash -------------------------------------------------

def test_mutated_dockerfiles_give_an_analysis_or_one_dockerfile_error_line():
    import random

    rng = random.Random(11)
    pieces = ["$", "${", "}", ":-", ":+", ":?", "#", "%", "/", "'", '"', "\\", "`", "<<", "EOF", "\n", " ", "\t",
              "$BUILDARCH", "$TARGETVARIANT", "--platform=", "--from=", "AS ", "FROM ", "ARG ", "=", ",", "[", "{",
              "\x00", "\u00e9", "\ufeff", "-", "0"]
    seeds = [CROSS, TRICKY, PINNED]
    plats = [parse(p) for p in ("linux/amd64", "linux/arm64", "linux/arm/v6", "linux/s390x")]
    outcomes = set()
    for _ in range(400):
        text = rng.choice(seeds)
        for _ in range(rng.randint(1, 4)):  # insert a fragment or cut a few characters
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(pieces) + text[i:] if rng.random() < 0.6 else text[:i] + text[i + 3:]
        try:
            a = analyse_text(text, platforms=tuple(rng.sample(plats, 2)))
            for t in plats:
                a.placement(t, AMD.native_also(), (ARM,))
            outcomes.add("ok")
        except DockerfileError as exc:
            assert str(exc).startswith("Dockerfile:") and "\n" not in str(exc), repr(str(exc))
            assert exc.exit_code == 2
            outcomes.add("error")
    assert outcomes == {"ok", "error"}  # the mutations reach both


def test_plan_says_which_node_was_not_offered_because_of_a_pinned_stage(tmp_path, monkeypatch, capsys):
    # issue 13 item 2: pi4 runs linux/arm64, but the amd64-pinned stage RUNs and pi4 can neither
    # run nor emulate amd64, so no strategy offers pi4; the plan (cross@local) says so beside it
    from archfleet import cli, pipeline

    req, got = _offers(tmp_path, PINNED, ARM, (LOCAL, PI4))
    options = [o for opts in got.values() for o in opts]
    why = ("stage build (line 1) RUNs on linux/amd64, which this node neither runs natively nor emulates "
           "(no qemu-x86_64 handler; `archfleet binfmt --install linux/amd64`)")
    assert pipeline.not_offered(req, {"local": LOCAL, "pi4": PI4}, options) == ((ARM, "pi4", why),)

    async def probe(hooks, config, session, nodes=None):
        return {"local": LOCAL, "pi4": PI4}

    monkeypatch.setattr(pipeline, "probe", probe)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("ARCHFLEET_NODES", raising=False)
    assert cli.main(["plan", "--platform", "linux/arm64", "--format", "json", str(tmp_path)]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["platforms"]
    assert (entry["strategy"], entry["node"]) == ("cross", "local")
    assert entry["not_offered"] == [{"node": "pi4", "why": why}]
    assert cli.main(["plan", "--platform", "linux/arm64", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "not on pi4" in line)
    assert row.split() == ["not", "on", "pi4", *why.split()]


@pytest.mark.parametrize("text,escape", [
    ("FROM a\n", "\\"),
    ("# escape=`\nFROM a\n", "`"),
    ("\ufeff# escape=`\nFROM a", "`"),  # after a BOM, still a directive
    ("# foo=bar\n# escape=`\nFROM a\n", "\\"),  # directives end at an unknown one
    ("# escape=`\n\nFROM a\n", "`"),
    ("FROM a\nRUN x \\", "\\"),  # a file ending in a continuation does not fool the probe
    ("# escape=`\nFROM a\nRUN x `", "`"),
])
def test_the_escape_character_is_the_one_buildkits_parser_uses(text, escape):
    from archfleet.dockerfile import _escape_token

    assert _escape_token(text) == escape
    # and word expansion uses it: `$ is a literal $ only where ` escapes
    a = analyse_text(text.rstrip("\\` \n") + f"\nFROM img-{escape}$X\n")
    assert a.stages[-1].base == "img-$X"


def test_strategy_cross_is_accepted_for_a_stage_pinned_to_a_platform_of_its_own(tmp_path, monkeypatch, capsys):
    # the cross strategy offers PINNED on the amd64 node (its pinned stage runs natively there,
    # as a $BUILDPLATFORM stage would), so --strategy cross must not be refused before probing
    from archfleet import cli, pipeline

    (tmp_path / "Dockerfile").write_text(PINNED)

    async def probe(hooks, config, session, nodes=None):
        return {"local": LOCAL, "pi4": PI4}

    monkeypatch.setattr(pipeline, "probe", probe)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("ARCHFLEET_NODES", raising=False)
    assert cli.main(["plan", "--platform", "linux/arm64", "--strategy", "cross", "--format", "json",
                     str(tmp_path)]) == 0, capsys.readouterr().err
    (entry,) = json.loads(capsys.readouterr().out)["platforms"]
    assert (entry["strategy"], entry["node"]) == ("cross", "local")
