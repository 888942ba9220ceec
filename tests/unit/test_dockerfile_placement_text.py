"""What the plan says about a Dockerfile (dockerfile.py): the one phrase naming what runs under
QEMU, the reasons a node cannot build it joined on one line, the platform each stage runs on,
reading errors with the right line, and the analysis cache keyed by the build target."""

import types

import pytest

from archfleet.dockerfile import BUILD, TARGET, DockerfileError, analyse, analyse_text, decode, platform_of, read
from archfleet.platforms import parse

AMD, ARM, S390X = parse("linux/amd64"), parse("linux/arm64"), parse("linux/s390x")
PINNED_TOOL = ("FROM --platform=linux/s390x busybox AS tool\nRUN a\n"
               "FROM busybox\nCOPY --from=tool /x /x\nRUN b\nRUN c\n")


def test_how_names_each_emulated_platform_and_its_runs():
    placed = analyse_text(PINNED_TOOL).placement(ARM, [AMD], [ARM, S390X])
    assert placed.how() == "1 RUN on linux/s390x under qemu-s390x, 2 target RUN under qemu-aarch64"
    assert analyse_text("FROM busybox\nRUN a\n").placement(AMD, [AMD], []).how() == "no emulation needed"


def test_why_not_gives_every_reason_on_one_line():
    placed = analyse_text(PINNED_TOOL).placement(ARM, [AMD], [])
    assert not placed.possible
    assert placed.why_not() == (
        "stage tool (line 1) RUNs on linux/s390x, which this node neither runs natively nor emulates (no "
        "qemu-s390x handler; `archfleet binfmt --install linux/s390x`); stage #1 (line 3) RUNs on linux/arm64, "
        "which this node neither runs natively nor emulates (no qemu-aarch64 handler; `archfleet binfmt --install "
        "linux/arm64`)")


def test_each_stage_runs_on_its_build_target_or_literal_platform():
    analysis = analyse_text("FROM --platform=$BUILDPLATFORM a AS b\nFROM --platform=linux/s390x c AS d\nFROM e\n")
    assert [str(analysis.platform_of(i, AMD, ARM)) for i in range(3)] == ["linux/amd64", "linux/s390x", "linux/arm64"]
    assert [str(analysis.platform_of(s, AMD, ARM)) for s in analysis.stages] == [
        "linux/amd64", "linux/s390x", "linux/arm64"]
    assert [str(platform_of(s, AMD, ARM)) for s in analysis.stages] == ["linux/amd64", "linux/s390x", "linux/arm64"]
    assert (analysis.stages[0].platform, analysis.stages[2].platform) == (BUILD, TARGET)


def test_a_byte_that_is_not_utf8_is_named_with_its_line_counting_a_leading_empty_line():
    with pytest.raises(DockerfileError) as err:
        decode(b"\nFROM a\nLABEL x=\xe9\n")
    assert str(err.value) == "Dockerfile:3: not UTF-8 (byte 16 is 0xe9); save the Dockerfile as UTF-8"


def test_a_dockerfile_that_cannot_be_read_says_why(tmp_path):
    with pytest.raises(DockerfileError) as err:
        read(tmp_path / "Dockerfile")
    assert str(err.value) == f"{tmp_path / 'Dockerfile'}: cannot read: No such file or directory"


def test_the_analysis_of_one_file_differs_by_build_target(tmp_path):
    df = tmp_path / "Dockerfile"
    df.write_text("FROM a AS one\nRUN x\nFROM b AS two\nRUN y\nRUN z\n")

    def request(target):
        return types.SimpleNamespace(dockerfile=df, build_args=(), target=target, platforms=(AMD,))

    assert [s.name for s in analyse(request("one")).used] == ["one"]
    assert [s.name for s in analyse(request(None)).used] == ["two"]
