import pytest

from archfleet.dockerfile import BUILD, TARGET, DockerfileError, analyse_text, instructions

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
    text = """\
FROM --platform=linux/amd64 img AS tool
FROM --platform=$TARGETPLATFORM img AS x
RUN true
FROM img AS x
COPY --from=x /a /a
FROM --platform=$BUILDPLATFORM img AS other
FROM x
RUN --mount=type=bind,from=tool,target=/t true
"""
    a = analyse_text(text)
    assert a.stages[0].platform == "linux/amd64"
    assert a.stages[1].platform == TARGET
    assert a.stages[2].deps == (1,)  # COPY --from=x inside the second x means the first one
    last = a.stages[-1]
    assert last.parent == 2 and last.deps == (0,)  # FROM x means the later x
    assert a.reachable == (0, 1, 2, 4)
    assert not a.cross  # the unused $BUILDPLATFORM stage does not count


def test_target_selects_reachable_stages():
    text = "FROM --platform=$BUILDPLATFORM a AS b\nRUN make\nFROM c AS test\nRUN test\nFROM d\nCOPY --from=b /x /x\n"
    assert analyse_text(text, target="test").reachable == (1,)
    assert analyse_text(text).reachable == (0, 2)


def test_escape_directive():
    text = "# escape=`\nFROM a\nRUN echo `\n  b\nRUN c\n"
    insts = instructions(text)
    assert [(i.keyword, i.line) for i in insts] == [("FROM", 2), ("RUN", 3), ("RUN", 5)]


@pytest.mark.parametrize("text,target,needle", [
    ("FROM $NOPE\n", None, "Dockerfile:1: FROM uses $NOPE"),
    ("ARG IMG\nFROM $IMG\n", None, "Dockerfile:2: FROM $IMG expands to nothing"),
    ("RUN x\nFROM a\n", None, "Dockerfile:1: only ARG may come before the first FROM"),
    ("FROM a\nFROM b\n", "nope", "--target: no stage named 'nope'"),
    ("FROM --platform=linux/foo a\n", None, "Dockerfile:1: FROM --platform"),
    ("FROM a\nRUN <<EOF\necho\n", None, "Dockerfile:2: heredoc <<EOF is never closed"),
    ("# just a comment\n", None, "no FROM"),
    ("FROM a\n123 x\n", None, "Dockerfile:2: cannot parse"),
])
def test_errors_name_the_line(text, target, needle):
    with pytest.raises(DockerfileError) as err:
        analyse_text(text, target=target)
    assert needle in str(err.value)
