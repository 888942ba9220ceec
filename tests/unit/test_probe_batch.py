"""The probe in one session per node (issue 17: probing scales with the fleet): every session a
node starts pays its login shell, so the facts, the engine adapter's probe commands and the
benchmark run in one batch (``probe.run_batch``), through a real ``sh`` here."""

from __future__ import annotations

import asyncio

import pytest

from archfleet import probe
from archfleet.model import NodeSpec
from archfleet.transport import LocalTransport

FAKE_DOCKER = """#!/bin/sh
case "$1" in
  --version) echo "Docker version 20.10.24+dfsg1, build 297e128";;
  info) printf 'client={"Plugins":[]}\nversion=20.10.24+dfsg1 security=name=seccomp,profile=default';;
esac
"""


class Counting:
    """A local transport that counts the sessions (runs) it was asked for."""

    def __init__(self):
        self.inner = LocalTransport("n1")
        self.runs: list[tuple] = []

    async def run(self, argv, **kw):
        self.runs.append(tuple(argv))
        return await self.inner.run(argv, **kw)


def test_a_batch_returns_each_commands_status_and_every_line_as_data():
    """Rule: words travel as argv (a ``;`` or ``$(...)`` is a word, never shell), each command's
    exit status and output come back apart, a missing program is 127, no output is no lines,
    output without a final newline keeps its last line."""
    cmds = [["echo", "a; echo $(id -u)"], ["sh", "-c", "printf 'x\\ny'; exit 3"], ["/nonexistent/prog"], ["true"]]
    got = asyncio.run(probe.run_batch(LocalTransport(), cmds))
    assert got[tuple(cmds[0])].tail == ("a; echo $(id -u)",) and got[tuple(cmds[0])].ok
    assert (got[tuple(cmds[1])].returncode, got[tuple(cmds[1])].tail) == (3, ("x", "y"))
    assert got[tuple(cmds[2])].returncode == 127 and "not found" in got[tuple(cmds[2])].last_line()
    assert got[tuple(cmds[3])].tail == ()


def test_answered_serves_the_batch_and_runs_the_rest():
    inner = Counting()
    answered = probe.Answered(inner, asyncio.run(probe.run_batch(inner, [["echo", "hi"]])))
    lines = []
    done = asyncio.run(answered.run(["echo", "hi"], on_line=lines.append, timeout=5))
    assert done.tail == ("hi",) and lines == ["hi"] and len(inner.runs) == 1
    assert asyncio.run(answered.run(["echo", "other"])).tail == ("other",) and len(inner.runs) == 2
    assert answered.inner is inner.inner  # everything else is the transport's


def test_a_docker_node_is_probed_in_one_session_with_the_same_facts(tmp_path, monkeypatch):
    """Rule: one session per node (was three rounds of six): facts, the CLI candidates'
    ``--version`` and ``docker info`` and the benchmark (no cached score) all in
    one run; the facts are what the adapter found, the first candidate that can build."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fake = tmp_path / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    transport = Counting()
    node = NodeSpec("n1", transport="ssh", engine_cli=str(fake), settings={"host": "127.0.0.1"})
    facts = asyncio.run(probe.probe_node(transport, node, candidates=["/nonexistent/docker", str(fake)]))
    assert len(transport.runs) == 1, transport.runs
    assert facts.reachable and facts.error is None, facts.error
    assert (facts.builder, tuple(facts.engine_cli), facts.engine_version) == ("buildkit", (str(fake),), "20.10.24+dfsg1")
    assert facts.score_measured and facts.score > 0 and facts.cpus >= 1


def test_facts_longer_than_a_results_tail_are_read_whole(tmp_path, monkeypatch):
    """Rule: the facts are every line the script printed, not a result's last 40: a node with
    QEMU's ~30 binfmt handlers and a few live leases printed more, and its machine, the first
    line, was lost ("unsupported machine None", an SSH node unreachable in CI)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    handlers = ["qemu-s390x", *(f"qemu-other{n}" for n in range(44))]  # s390x first: not in a tail of 40
    script = "echo machine=aarch64\necho cpus=4\n" + "".join(f"echo binfmt={h}:enabled:F\n" for h in handlers) + \
        "".join(f"echo lease={n} 100 30 {n}\n" for n in range(10))
    monkeypatch.setattr(probe, "FACTS_SCRIPT", script)
    fake = tmp_path / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    node = NodeSpec("n1", transport="ssh", engine_cli=str(fake), settings={"host": "127.0.0.1"})
    facts = asyncio.run(probe.probe_node(Counting(), node, candidates=[str(fake)]))
    assert facts.reachable and facts.error is None, facts.error
    assert str(facts.native[0]) == "linux/arm64" and facts.cpus == 4
    assert [str(p) for p in facts.emulated] == ["linux/s390x"]


def test_a_node_without_sh_answers_nothing_and_the_probe_runs_its_commands_itself():
    """A batch that did not come back (the transport failed it) answers nothing: each command
    is then run on its own, as before."""

    class NoBatch(Counting):
        async def run(self, argv, **kw):
            if argv[:3] == ["sh", "-c", probe.BATCH_SCRIPT]:
                self.runs.append(("batch",))
                return await self.inner.run(["false"], **kw)
            return await super().run(argv, **kw)

    transport = NoBatch()
    assert asyncio.run(probe.run_batch(transport, [["echo", "x"]])) == {}
    answered = probe.Answered(transport, {})
    assert asyncio.run(answered.run(["echo", "x"])).tail == ("x",)


@pytest.mark.parametrize("count", [1, 40])
def test_many_commands_fit_one_batch(count):
    cmds = [["echo", str(i)] for i in range(count)]
    got = asyncio.run(probe.run_batch(LocalTransport(), cmds))
    assert [got[tuple(c)].tail for c in cmds] == [(str(i),) for i in range(count)]


def test_a_batch_that_times_out_answers_the_commands_that_ended():
    cmds = [["echo", "first"], ["sleep", "30"], ["echo", "never"]]
    got = asyncio.run(probe.run_batch(LocalTransport(), cmds, timeout=1.5))
    assert got[("echo", "first")].tail == ("first",)
    assert ("sleep", "30") not in got and ("echo", "never") not in got


def test_the_commands_given_together_run_at_once_and_the_rest_after_them(tmp_path):
    """Rule: the first ``together`` commands start at once (two 0.6 s sleeps end within ~0.6 s,
    not 1.2 s), their answers come back in order, and the commands after them (the CPU
    benchmark) start only once they all ended (the file the slow one writes is there)."""
    import time

    mark = tmp_path / "done"
    cmds = [["sh", "-c", "sleep 0.6; echo one"], ["sh", "-c", f"sleep 0.6; echo two; touch {mark}"],
            ["test", "-e", str(mark)]]
    start = time.monotonic()
    got = asyncio.run(probe.run_batch(LocalTransport(), cmds, together=2))
    took = time.monotonic() - start
    assert took < 1.1, took
    assert [got[tuple(c)].tail for c in cmds[:2]] == [("one",), ("two",)]
    assert got[tuple(cmds[2])].ok, "the alone command ran before the together ones ended"


def test_without_a_private_directory_the_commands_run_one_after_another(monkeypatch, tmp_path):
    """mktemp -d failing (no writable TMPDIR on the node) is no error: every command is still
    answered, one after another, as before."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    cmds = [["echo", "a"], ["sh", "-c", "echo b; exit 4"]]
    got = asyncio.run(probe.run_batch(LocalTransport(), cmds, together=2))
    assert got[("echo", "a")].tail == ("a",)
    assert (got[tuple(cmds[1])].returncode, got[tuple(cmds[1])].tail) == (4, ("b",))


def test_a_together_batch_that_times_out_answers_those_before_the_slow_one(tmp_path, monkeypatch):
    """A batch killed at its timeout (SIGKILL here, as the SSH transport's cancel sends KILL)
    cannot remove its private directory; the next batch does (below)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    cmds = [["echo", "first"], ["sleep", "30"], ["echo", "after"]]
    got = asyncio.run(probe.run_batch(LocalTransport(), cmds, timeout=1.5, together=3))
    assert got[("echo", "first")].tail == ("first",)
    assert ("sleep", "30") not in got and ("echo", "after") not in got


def test_a_batch_removes_the_directories_killed_batches_left_and_nothing_else(tmp_path, monkeypatch):
    """Rule (probe.BATCH_SCRIPT): a killed batch's $TMPDIR/archfleet-batch.<pid> (its shell gone)
    is removed by the next batch on the node; a live batch's (its pid running), a name that is
    no pid and anything else stay."""
    import os

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    dead = tmp_path / "archfleet-batch.999999"  # no such process (pid_max is 4194304 at most; 999999 is unused here)
    alive = tmp_path / f"archfleet-batch.{os.getpid()}"
    other = tmp_path / "archfleet-batch.x1"
    for d in (dead, alive, other):
        d.mkdir()
        (d / "1").write_text("left")
    got = asyncio.run(probe.run_batch(LocalTransport(), [["echo", "a"], ["echo", "b"]], together=2))
    assert got[("echo", "a")].tail == ("a",) and got[("echo", "b")].tail == ("b",)
    assert not dead.exists() and alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])
