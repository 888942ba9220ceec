"""`archfleet doctor` per platform per node (docs/index.md's first steps): for each platform asked
(--platform, default the README's five) on each node, whether it builds it and how, and where it
does not, why and the one command that fixes it; a platform no node builds fails the doctor."""

from __future__ import annotations

import asyncio

import pytest

from archfleet import cli, doctor, pipeline
from archfleet.inventory import Config
from archfleet.manager import make_hooks
from archfleet.model import Capabilities, NodeFacts, NodeSpec
from archfleet.platforms import parse
from archfleet.session import Session

from stubs import AMD, ARM, S390

RISCV, V4 = parse("linux/riscv64"), parse("linux/amd64/v4")


def facts(name, *, native=(AMD,), emulated=(ARM,), transport="ssh", **kw) -> NodeFacts:
    return NodeFacts(NodeSpec(name, transport=transport), True, native=native, emulated=emulated, builder="buildkit",
                     engine_cli=("docker",), engine_version="20.10.24", address=f"builder@{name}.lan", **kw)


def lines(nodes, platforms):
    return [c.line() for c in doctor.check_platforms({f.name: f for f in nodes}, tuple(platforms))]


def test_each_node_says_how_it_builds_each_platform():
    assert lines([facts("local", transport="local", emulated=(ARM, S390)), facts("pi", native=(ARM,), emulated=())],
                 [AMD, ARM, S390]) == [
        "ok    platforms on local: native linux/amd64; under QEMU linux/arm64, linux/s390x",
        "ok    platforms on pi: native linux/arm64",
        "warn  linux/amd64 on pi: not native and no qemu-x86_64 handler -> run `archfleet binfmt --install "
        "linux/amd64` as root on builder@pi.lan (or install qemu-user-static there: Debian's registers every "
        "handler with F)",
        "warn  linux/s390x on pi: not native and no qemu-s390x handler -> run `archfleet binfmt --install "
        "linux/s390x` as root on builder@pi.lan (or install qemu-user-static there: Debian's registers every "
        "handler with F)"]


def test_a_platform_no_node_builds_fails_with_the_command_for_this_machine():
    assert lines([facts("local", transport="local")], [RISCV]) == [
        "FAIL  linux/riscv64 on local: not native and no qemu-riscv64 handler -> run `archfleet binfmt --install "
        "linux/riscv64` as root"]


def test_a_handler_without_the_fix_binary_flag_is_named_with_the_command_that_re_registers_it():
    why = "qemu-s390x is registered without the fix-binary flag F"
    (line,) = lines([facts("local", transport="local", emulated=(), emulation_problems=((S390, why),))], [S390])
    assert line == f"FAIL  linux/s390x on local: {why} -> run `archfleet binfmt --install linux/s390x` as root"


def test_a_cpu_level_no_handler_emulates_says_to_build_it_elsewhere():
    (line,) = lines([facts("local", transport="local")], [V4])
    assert line == ("FAIL  linux/amd64/v4 on local: its CPU does not run linux/amd64/v4 and no QEMU handler "
                    "emulates it -> build linux/amd64/v4 on a node whose CPU runs it (add one to nodes.toml)")


def test_nodes_that_cannot_build_at_all_have_their_own_check_not_platform_lines():
    down = NodeFacts(NodeSpec("down"), False, error="no route")
    assert lines([down, facts("ok")], [AMD]) == ["ok    platforms on ok: native linux/amd64"]


@pytest.fixture
def probed(monkeypatch, tmp_path):
    found = {"local": NodeFacts(NodeSpec("local", engine="podman"), True, native=(AMD,), emulated=(ARM,),
                                builder="buildah", engine_cli=("/usr/bin/podman",), engine_version="4.3.1",
                                capabilities=Capabilities(secrets=True))}

    async def probe(hooks, config, session, nodes=None):
        return found

    monkeypatch.setattr(pipeline, "probe", probe)
    monkeypatch.setattr(doctor, "check_binfmt", lambda: [])
    monkeypatch.chdir(tmp_path)
    return found


def test_a_podman_local_node_is_checked_from_its_probe_without_a_docker_daemon(probed):
    checks = asyncio.run(doctor.run(make_hooks({}, load_entrypoints=False, builtins=()), Config(), Session(), (), (),
                                    (AMD, ARM)))
    assert [c.line() for c in checks] == [
        "ok    local engine: podman 4.3.1 answers",
        "ok    engine CLI: /usr/bin/podman (buildah)",
        "ok    platforms on local: native linux/amd64; under QEMU linux/arm64"]


def test_doctor_takes_platforms_and_exits_3_when_one_cannot_be_built_anywhere(probed, capsys):
    assert cli.main(["doctor", "--platform", "linux/amd64,linux/arm64"]) == 0
    assert cli.main(["doctor", "--platform", "linux/amd64", "--platform", "riscv64"]) == 3
    assert "FAIL  linux/riscv64 on local: not native and no qemu-riscv64 handler" in capsys.readouterr().out
    assert cli.main(["doctor", "--platform", "linux/sparc64"]) == 2
    assert capsys.readouterr().err.startswith("archfleet: error: --platform: unknown architecture 'sparc64'")
