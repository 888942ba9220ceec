"""BuildKit decides: where each stage of the corpus's less obvious shapes really runs.

The corpus (tests/unit/test_dockerfile_corpus.py) labels each Dockerfile with the strategies
archfleet must offer, from archfleet's reading of which stage runs where. Where that reading
could be doubted, the shape is built here by the local engine's BuildKit (Docker 20.10) for
another platform, every RUN writing ``uname -m`` to a marker file, the result exported with
``-o type=local``; a stage that must not be built RUNs ``false``. Each test names the rule and
the corpus entries that rest on it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HOST = os.uname().machine  # a $BUILDPLATFORM stage runs here, natively


def build(lab, tmp_path: Path, text: str | bytes, platform: str = "linux/s390x", *args: str) -> Path:
    """``text`` built by the local engine's BuildKit for ``platform``; the exported file system."""
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    df = ctx / "Dockerfile"
    if isinstance(text, bytes):
        df.write_bytes(text)
    else:
        df.write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run([lab.docker, "build", "--platform", platform, "--build-arg", f"BASE={lab.base}", *args,
                           "-o", f"type=local,dest={out}", str(ctx)],
                          env=dict(os.environ, DOCKER_BUILDKIT="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def marks(out: Path, *names: str) -> list[str]:
    return [(out / n).read_text().strip() for n in names]


def test_a_stage_from_a_build_platform_stage_runs_on_the_build_platform(lab, tmp_path):
    # dockerfile2llb: a stage FROM another stage takes that stage's platform.
    # Corpus: go-targets (--target test), copy-from-targetarch-stage.
    out = build(lab, tmp_path, "ARG BASE\nFROM --platform=$BUILDPLATFORM $BASE AS base\nRUN uname -m > /base\n"
                               "FROM base AS test\nRUN uname -m > /test\n"
                               "FROM scratch\nCOPY --from=test /base /test /\n")
    assert marks(out, "base", "test") == [HOST, HOST]


def test_onbuild_triggers_do_not_run_in_the_build_that_declares_them(lab, tmp_path):
    # Corpus: lowercase-and-onbuild (its ONBUILD RUN is not a RUN of this build).
    out = build(lab, tmp_path, "ARG BASE\nFROM $BASE AS build\nONBUILD RUN false\nRUN uname -m > /m\n"
                               "FROM scratch\nCOPY --from=build /m /m\n")
    assert marks(out, "m") == ["s390x"]


def test_a_run_mounting_a_build_platform_stage_still_runs_on_the_target(lab, tmp_path):
    # Corpus: run-mount-from-build-stage (cross@local is offered, with the final RUN emulated).
    out = build(lab, tmp_path, "ARG BASE\nFROM --platform=$BUILDPLATFORM $BASE AS src\nRUN uname -m > /src\n"
                               "FROM $BASE AS final\n"
                               "RUN --mount=type=bind,from=src,source=/src,target=/src "
                               "sh -c 'uname -m > /m; cat /src >> /m'\n"
                               "FROM scratch\nCOPY --from=final /m /m\n")
    assert (out / "m").read_text().split() == ["s390x", HOST]


def test_a_variable_in_copy_from_is_refused_by_buildkit_and_by_archfleet_before_building(lab, tmp_path):
    # Corpus: copy-from-variable. BuildKit never expands --from (Docker 20.10: "failed to parse
    # stage name"); archfleet says so in one line, exit 2, before probing or building.
    from labtools import one_line_error

    text = ("ARG BUILDER=builder\nARG BASE\nFROM --platform=$BUILDPLATFORM $BASE AS builder\nRUN uname -m > /m\n"
            "FROM scratch\nARG BUILDER\nCOPY --from=${BUILDER} /m /m\n")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(text)
    proc = subprocess.run([lab.docker, "build", "--platform", "linux/s390x", "--build-arg", f"BASE={lab.base}",
                           "-o", f"type=local,dest={tmp_path / 'out'}", str(tmp_path / "ctx")],
                          env=dict(os.environ, DOCKER_BUILDKIT="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and 'failed to parse stage name "${BUILDER}"' in proc.stderr
    proc = lab.archfleet("build", "--platform", "linux/s390x", "--build-arg", f"BASE={lab.base}",
                         str(tmp_path / "ctx"))
    assert proc.returncode == 2
    assert "Dockerfile:7: COPY --from=${BUILDER}: BuildKit does not expand variables in --from" in one_line_error(proc)


def test_a_global_arg_in_from_builds_only_the_stage_it_names(lab, tmp_path):
    # Corpus: copy-from-arg (default and BUILDER=builder-native): unreferenced stages are not built
    text = ("ARG BUILDER=builder-cross\nARG BASE\nFROM --platform=$BUILDPLATFORM $BASE AS builder-cross\n"
            "RUN uname -m > /m\nFROM $BASE AS builder-native\nRUN uname -m > /m\nFROM ${BUILDER} AS builder\n"
            "FROM scratch\nCOPY --from=builder /m /m\n")
    assert marks(build(lab, tmp_path, text.replace("AS builder-native\nRUN uname -m > /m",
                                                   "AS builder-native\nRUN false")), "m") == [HOST]
    assert marks(build(lab, tmp_path, text, "linux/s390x", "--build-arg", "BUILDER=builder-native"), "m") == ["s390x"]


def test_from_a_stage_named_by_an_arg_builds_that_stage_only(lab, tmp_path):
    # Corpus: arg-final-variant (default and VARIANT=full).
    text = ("ARG VARIANT=slim\nARG BASE\nFROM --platform=$BUILDPLATFORM $BASE AS build\nRUN uname -m > /m\n"
            "FROM scratch AS final-slim\nFROM $BASE AS final-full\nRUN false\n"
            "FROM final-${VARIANT}\nCOPY --from=build /m /m\n")
    assert marks(build(lab, tmp_path, text), "m") == [HOST]
    full = text.replace("RUN false", "RUN uname -m > /full")
    out = build(lab, tmp_path, full, "linux/s390x", "--build-arg", "VARIANT=full")
    assert marks(out, "m", "full") == [HOST, "s390x"]


def test_from_a_stage_named_by_targetarch_builds_only_that_one(lab, tmp_path):
    # Corpus: copy-from-targetarch-stage (FROM expands the automatic platform ARGs).
    out = build(lab, tmp_path, "ARG BASE\nFROM --platform=$BUILDPLATFORM $BASE AS fetch\n"
                               "FROM fetch AS fetch-amd64\nRUN false\nFROM fetch AS fetch-s390x\nRUN uname -m > /m\n"
                               "FROM fetch-${TARGETARCH} AS fetched\nFROM scratch\nCOPY --from=fetched /m /m\n")
    assert marks(out, "m") == [HOST]


def test_a_stage_copying_from_itself_is_a_circular_dependency(lab, tmp_path):
    # a --from name is the name's last stage: inside the second x it is x itself
    from archfleet.dockerfile import DockerfileError, analyse_text

    text = "ARG BASE\nFROM $BASE AS x\nRUN echo first > /a\nFROM $BASE AS x\nCOPY --from=x /a /a\n"
    with pytest.raises(DockerfileError, match="circular dependency"):
        analyse_text(text, build_args={"BASE": lab.base})
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(text)
    proc = subprocess.run([lab.docker, "build", "--build-arg", f"BASE={lab.base}", str(tmp_path / "ctx")],
                          env=dict(os.environ, DOCKER_BUILDKIT="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "circular dependency detected on stage: x" in proc.stderr


@pytest.mark.parametrize("platform", ["linux/s390x", "linux/arm64"])
def test_a_stage_pinned_to_a_literal_platform_runs_there_whatever_the_target(lab, tmp_path, platform):
    # Corpus: pinned-final-arm64, pinned-emulated-stage, c-pinned-amd64-*, rust-trow-armv7*.
    out = build(lab, tmp_path, "ARG BASE\nFROM --platform=linux/ppc64le $BASE AS gen\nRUN uname -m > /gen\n"
                               "FROM --platform=linux/arm/v7 $BASE AS final\nCOPY --from=gen /gen /gen\n"
                               "RUN uname -m > /final\nFROM scratch\nCOPY --from=final /gen /final /\n", platform)
    assert marks(out, "gen", "final") == ["ppc64le", "armv7l"]


def test_copy_from_a_stage_index(lab, tmp_path):
    # Corpus: copy-from-index.
    out = build(lab, tmp_path, "ARG BASE\nFROM --platform=$BUILDPLATFORM $BASE\nRUN uname -m > /m\n"
                               "FROM scratch\nCOPY --from=0 /m /m\n")
    assert marks(out, "m") == [HOST]


def test_bom_crlf_escape_directive_tabs_and_lower_case_read_as_archfleet_reads_them(lab, tmp_path):
    # Corpus: bom-windows-editor, crlf-windows, bom-crlf-directives, escape-backtick,
    # go-quoted-platform-tabs, lowercase-and-onbuild. archfleet's analysis of the same bytes:
    # one $BUILDPLATFORM stage with one RUN, and the final stage copying from it.
    from archfleet.dockerfile import BUILD, analyse_text

    text = ("\ufeff# escape=`\r\nARG BASE\r\nfrom\t--platform=\"$BUILDPLATFORM\"\t$BASE\tas\tbuild\r\n"
            "RUN echo `\r\n  a > /m && uname -m >> /m\r\nFROM scratch\r\nCOPY --from=build /m /m\r\n")
    a = analyse_text(text, build_args={"BASE": lab.base})
    assert [(s.platform, s.runs) for s in a.stages] == [(BUILD, 1), ("target", 0)] and a.stages[1].deps == (0,)
    out = build(lab, tmp_path, text.encode())
    assert (out / "m").read_text().split() == ["a", HOST]
