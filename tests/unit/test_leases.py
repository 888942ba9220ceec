"""Build-slot leases: written, read and dropped through a real shell (the remote path) and
directly (the local path), in a temporary root."""

import asyncio
import time

import pytest

from archfleet import leases
from archfleet.model import NodeSpec
from archfleet.probe import FACTS_SCRIPT, parse_facts
from archfleet.transport import LocalTransport


class ShellTransport(LocalTransport):
    """Runs the scripts as an SSH node would (not a LocalTransport to the lease code)."""


def test_remaining_and_staleness():
    assert leases.remaining(now=110, start=100, estimate=30) == 20
    assert leases.remaining(now=200, start=100, estimate=30) == 3.0  # overrunning: a tenth more
    assert leases.remaining(now=100 + 3 * 30 + 601, start=100, estimate=30) is None  # its run died
    assert leases.remaining(now=0, start=1000, estimate=30) is None  # from the future: ignored
    assert leases.parse(["110 100 30", "garbage", "110 100", "110 105 10"]) == (5.0, 20.0)
    # with a heartbeat: alive however long it overruns, stale once the beat stops
    assert leases.remaining(now=10_000, start=100, estimate=30, beat=9_990) == 3.0
    assert leases.remaining(now=200, start=100, estimate=300, beat=100) is None
    assert leases.parse(["200 100 300 190", "200 100 300 100"]) == (200.0,)


def test_shell_path_take_probe_drop(tmp_path, monkeypatch):
    node = NodeSpec("n1", transport="ssh", host="10.0.0.1", docker_host="unix:///run/n1.sock")
    other = NodeSpec("n2", transport="ssh", host="10.0.0.1", docker_host="unix:///run/n2.sock")
    root = str(tmp_path / "leases")
    t = ShellTransport("n1")

    async def facts(spec):
        done = await t.run(["sh", "-c", FACTS_SCRIPT, "sh", root, leases.engine_key(spec)])
        assert done.ok, done.tail
        return leases.parse(parse_facts(done.tail)["lease"])

    async def scenario():
        name = await leases.take(t, node, 42.0, root=root)
        assert name and (tmp_path / "leases" / leases.engine_key(node) / name).is_file()
        busy = await facts(node)
        assert len(busy) == 1 and 40 <= busy[0] <= 42
        assert await facts(other) == ()  # another engine on the same machine: its own slots
        await leases.drop(t, node, name, root=root)
        assert await facts(node) == ()

    asyncio.run(scenario())
    assert oct((tmp_path / "leases").stat().st_mode & 0o7777) == "0o1777"


def test_local_path_and_the_probe_agree(tmp_path):
    node = NodeSpec("local")
    root = str(tmp_path / "leases")

    async def scenario():
        name = await leases.take(LocalTransport(), node, 10.0, root=root)
        assert leases.read_local(node, root=root) == (pytest.approx(10.0, abs=1.1),)
        done = await ShellTransport().run(["sh", "-c", FACTS_SCRIPT, "sh", root, leases.engine_key(node)])
        assert leases.parse(parse_facts(done.tail)["lease"]) == (pytest.approx(10.0, abs=1.1),)
        await leases.drop(LocalTransport(), node, name, root=root)
        assert leases.read_local(node, root=root) == ()

    asyncio.run(scenario())


def test_a_foreign_or_broken_lease_is_ignored(tmp_path):
    node = NodeSpec("local")
    d = tmp_path / leases.engine_key(node)
    d.mkdir()
    (d / "junk").write_text("$(touch /tmp/pwned) 5\n")
    (d / "old").write_text(f"{int(time.time()) - 10_000} 5\n")
    (d / "ok").write_text(f"{int(time.time())} 5\n")
    assert leases.read_local(node, root=str(tmp_path)) == (pytest.approx(5.0, abs=1.1),)


def test_a_failing_transport_never_fails_the_build():
    class Broken:
        async def run(self, *a, **k):
            raise ConnectionError("gone")

    node = NodeSpec("n1", transport="ssh", host="h")
    assert asyncio.run(leases.take(Broken(), node, 5.0)) is None
    asyncio.run(leases.drop(Broken(), node, "x"))


def test_held_lease_is_renewed_then_dropped(tmp_path, monkeypatch):
    """Both paths: the heartbeat moves on while held, and nothing is left after release."""
    monkeypatch.setattr(leases, "HEARTBEAT", 0.05)
    node = NodeSpec("n1", transport="ssh", host="h", docker_host="unix:///x.sock")
    root = str(tmp_path)
    d = tmp_path / leases.engine_key(node)

    async def scenario(transport):
        held = leases.Held(transport, node, 30.0, root=root)
        await asyncio.sleep(0.2)
        (lease,) = [p for p in d.iterdir() if not p.name.startswith(".")]
        start, estimate, beat = lease.read_text().split()
        assert float(estimate) == 30.0 and int(beat) >= int(start)
        lease.write_text(f"{start} {estimate} 0\n")  # as if the beat were ancient
        await asyncio.sleep(0.5)
        assert int(lease.read_text().split()[2]) > 0  # renewed
        await held.release()
        assert list(d.iterdir()) == []

    asyncio.run(scenario(ShellTransport("n1")))
    asyncio.run(scenario(LocalTransport("n1")))


def test_taking_a_lease_sweeps_dead_ones(tmp_path):
    import os

    for transport, node in ((ShellTransport("n1"), NodeSpec("n1", transport="ssh", host="h", docker_host="unix:///n1.sock")),
                            (LocalTransport(), NodeSpec("local"))):
        d = tmp_path / leases.engine_key(node)
        d.mkdir(exist_ok=True)
        dead = d / "123-dead"
        dead.write_text("1 5 1\n")
        os.utime(dead, (time.time() - 3600, time.time() - 3600))
        name = asyncio.run(leases.take(transport, node, 5.0, root=str(tmp_path)))
        assert sorted(p.name for p in d.iterdir()) == [name]


def test_others_leaves_out_this_process_leases(tmp_path):
    for transport, node in ((ShellTransport("n1"), NodeSpec("n1", transport="ssh", host="h", docker_host="unix:///o.sock")),
                            (LocalTransport(), NodeSpec("local"))):
        root = str(tmp_path)
        d = tmp_path / leases.engine_key(node)
        d.mkdir(exist_ok=True)
        now = int(time.time())
        (d / "999999abcd-0123").write_text(f"{now} 40 {now}\n")  # another run's
        mine = asyncio.run(leases.take(transport, node, 10.0, root=root))
        assert mine.startswith(leases.RUN + "-")
        got = asyncio.run(leases.others(transport, node, root=root))
        assert got == (pytest.approx(40.0, abs=1.1),), got
