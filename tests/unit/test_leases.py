"""Build-slot leases: written, read and dropped through a real shell (the remote path) and
directly (the local path), in a temporary root."""

import asyncio
import time

import pytest

from archfleet import leases
from archfleet.model import NodeSpec
from archfleet.probe import FACTS_SCRIPT, parse_facts
from archfleet.transport import CommandNode, LocalTransport


class ShellTransport(CommandNode, LocalTransport):
    """Runs the lease scripts through ``run`` as an SSH node's transport does (its lease store is
    CommandNode's ShellLeases, not the local file-system one)."""


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
    node = NodeSpec("n1", transport="ssh", settings={"host": "10.0.0.1"}, docker_host="unix:///run/n1.sock")
    other = NodeSpec("n2", transport="ssh", settings={"host": "10.0.0.1"}, docker_host="unix:///run/n2.sock")
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
    class Broken(CommandNode):  # a node reached by commands that no longer answers
        async def run(self, *a, **k):
            raise ConnectionError("gone")

    node = NodeSpec("n1", transport="ssh", settings={"host": "h"})
    assert asyncio.run(leases.take(Broken(), node, 5.0)) is None
    asyncio.run(leases.drop(Broken(), node, "x"))


def test_held_lease_is_renewed_then_dropped(tmp_path, monkeypatch):
    """Both paths: the heartbeat moves on while held, and nothing is left after release.

    Deterministic: the heartbeat's wait is a queue the test feeds one tick at a time, and the
    test waits for the beat that tick started to finish (a timeout bounds a hang, it never
    orders anything)."""
    HEARTBEAT = 12345.0  # a wait only the lease's renewal uses
    monkeypatch.setattr(leases, "HEARTBEAT", HEARTBEAT)
    node = NodeSpec("n1", transport="ssh", settings={"host": "h"}, docker_host="unix:///x.sock")
    root = str(tmp_path)
    d = tmp_path / leases.engine_key(node)
    real_sleep, real_beat = asyncio.sleep, leases.beat

    async def scenario(transport):
        ticks, beats = asyncio.Queue(), asyncio.Queue()

        async def sleep(seconds, *args):
            if seconds == HEARTBEAT:
                await ticks.get()
            else:
                await real_sleep(seconds, *args)

        async def beat(*args, **kwargs):
            await real_beat(*args, **kwargs)
            beats.put_nowait(1)

        monkeypatch.setattr(asyncio, "sleep", sleep)
        monkeypatch.setattr(leases, "beat", beat)
        name = await asyncio.wait_for(leases.take(transport, node, 30.0, root=root), 10)  # the lease is taken
        held = leases.Held(transport, node, name, root=root)
        lease = d / name
        start, estimate, beat_at = lease.read_text().split()
        assert float(estimate) == 30.0 and int(beat_at) >= int(start)
        lease.write_text(f"{start} {estimate} 0\n")  # as if the beat were ancient; no beat runs now
        ticks.put_nowait(None)  # one heartbeat period passes
        await asyncio.wait_for(beats.get(), 10)
        assert int(lease.read_text().split()[2]) > 0  # renewed
        assert beats.empty()  # one tick, one beat
        await held.release()
        assert list(d.iterdir()) == []

    asyncio.run(scenario(ShellTransport("n1")))
    asyncio.run(scenario(LocalTransport("n1")))


def test_taking_a_lease_sweeps_dead_ones(tmp_path):
    import os

    for transport, node in ((ShellTransport("n1"), NodeSpec("n1", transport="ssh", settings={"host": "h"}, docker_host="unix:///n1.sock")),
                            (LocalTransport(), NodeSpec("local"))):
        d = tmp_path / leases.engine_key(node)
        d.mkdir(exist_ok=True)
        dead = d / "123-dead"
        dead.write_text("1 5 1\n")
        os.utime(dead, (time.time() - 3600, time.time() - 3600))
        name = asyncio.run(leases.take(transport, node, 5.0, root=str(tmp_path)))
        assert sorted(p.name for p in d.iterdir()) == [name]


def test_a_claim_counts_this_runs_own_leases_beside_other_runs(tmp_path):
    """Rule (leases.claim): every live lease counts toward max_builds, this process's own too
    (its other builds use the engine as much as another run's)."""
    for transport, node in ((ShellTransport("n1"), NodeSpec("n1", transport="ssh", settings={"host": "h"}, docker_host="unix:///o.sock")),
                            (LocalTransport(), NodeSpec("local"))):
        root = str(tmp_path)
        d = tmp_path / leases.engine_key(node)
        d.mkdir(exist_ok=True)
        now = int(time.time())
        (d / "999999abcd-0123").write_text(f"{now} 40 {now}\n")  # another run's
        mine = asyncio.run(leases.take(transport, node, 10.0, root=root))
        assert mine.startswith(leases.RUN + "-")
        got = asyncio.run(leases.claim(transport, node, 10.0, 2, root=root))
        assert (got.name, got.full) == (None, True)
        assert got.busy == (pytest.approx(10.0, abs=1.1), pytest.approx(40.0, abs=1.1)), got


# --- the lease directory is anyone's: nothing there is followed, trusted or waited on ----------
# (review findings 1 and 8). Every case runs both paths: the node-side scripts through a real
# shell, and the local node's file-descriptor code.

import json
import math
import os
import stat
import threading
from pathlib import Path

from archfleet.executor import Executor
from archfleet.model import NodeFacts, Option
from archfleet.platforms import parse as parse_platform

PATHS = [
    pytest.param(ShellTransport, NodeSpec("n1", transport="ssh", settings={"host": "h"}, docker_host="unix:///n1.sock"),
                 id="node-script"),
    pytest.param(LocalTransport, NodeSpec("local"), id="local"),
]
HOUR_AGO = time.time() - 3600
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
OTHER_UID = 4242


@pytest.fixture(autouse=True)
def private_root(tmp_path_factory, monkeypatch):
    """Every test gets its own private fallback ($XDG_RUNTIME_DIR, 0700) and $HOME, and the
    shared root is whatever the test passes (never the machine's /tmp/archfleet-leases)."""
    run = tmp_path_factory.mktemp("xdg-run")
    run.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv(leases.ROOT_ENV, raising=False)
    return run / "archfleet-leases"


def victim(tmp_path):
    """A directory like /etc: mode 0755, files an hour old (old enough for any sweep)."""
    v = tmp_path / "victim"
    v.mkdir()
    v.chmod(0o755)
    for name in ("passwd", "shadow", ".bashrc", "1-2-old-lease"):
        (v / name).write_text(f"{name}\n")
        os.utime(v / name, (HOUR_AGO, HOUR_AGO))
    return v


def snapshot(d):
    st = d.lstat()
    return oct(st.st_mode), st.st_uid, sorted((p.name, p.read_text(), int(p.lstat().st_mtime)) for p in d.iterdir())


def lease_life(transport, node, root, where):
    """Take, beat, read and drop one lease; it must live in ``where`` (the lease dir expected)."""
    root = str(root)

    async def scenario():
        name = await leases.take(transport, node, 30.0, root=root)
        assert name is not None
        lease = where / leases.engine_key(node) / name
        assert lease.is_file() and not lease.is_symlink()
        start, estimate, _ = lease.read_text().split()
        lease.write_text(f"{start} {estimate} 0\n")  # an ancient heartbeat ...
        await leases.beat(transport, node, name, root=root)
        assert int(lease.read_text().split()[2]) > 0  # ... renewed in place
        await leases.drop(transport, node, name, root=root)
        assert not lease.exists()

    asyncio.run(scenario())


@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_a_symlinked_lease_root_is_never_followed(tmp_path, private_root, transport_cls, node):
    """Rule: a lease root that is a symlink is not used: the victim it points at keeps its mode
    (0755, not 1777) and its files (none swept); the run's leases go to the private root."""
    v = victim(tmp_path)
    before = snapshot(v)
    (tmp_path / "leases").symlink_to(v)
    lease_life(transport_cls("n1"), node, tmp_path / "leases", where=private_root)
    assert snapshot(v) == before
    assert stat.S_IMODE(private_root.stat().st_mode) == 0o700


@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_a_symlinked_engine_dir_is_never_followed(tmp_path, private_root, transport_cls, node):
    """Rule: the per-engine directory is checked like the root (the review's attack:
    ``ln -s /etc /tmp/archfleet-leases/<key>``): the victim is untouched, leases go private."""
    v = victim(tmp_path)
    before = snapshot(v)
    root = tmp_path / "leases"
    root.mkdir()
    root.chmod(0o1777)
    (root / leases.engine_key(node)).symlink_to(v)
    lease_life(transport_cls("n1"), node, root, where=private_root)
    assert snapshot(v) == before
    got = asyncio.run(leases.claim(transport_cls("n1"), node, 5.0, 1, root=str(root)))
    assert got.busy == () and got.name and snapshot(v) == before  # nothing read or written through the link
    asyncio.run(leases.drop(transport_cls("n1"), node, got.name, root=str(root)))


@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_a_lease_root_that_is_a_file_sends_leases_private(tmp_path, private_root, transport_cls, node):
    (tmp_path / "leases").write_text("not a directory\n")
    lease_life(transport_cls("n1"), node, tmp_path / "leases", where=private_root)
    assert (tmp_path / "leases").read_text() == "not a directory\n"


class NodeShell(CommandNode):
    """A transport the lease code does not take for the local one (ShellTransport is a
    LocalTransport to it): the node-side scripts run, here, through sh."""

    def __init__(self, node: str = "n1"):
        self.node = node
        self._sh = LocalTransport(node)

    async def run(self, argv, **kwargs):
        return await self._sh.run(argv, **kwargs)


@pytest.mark.parametrize("xdg_cache", [True, False])
@pytest.mark.parametrize("transport_cls,node", [
    pytest.param(NodeShell, NodeSpec("n1", transport="ssh", settings={"host": "h"}, docker_host="unix:///n1.sock"),
                 id="node-script"),
    pytest.param(LocalTransport, NodeSpec("local"), id="local"),
])
def test_without_a_runtime_dir_leases_go_to_the_cache_dirs_leases(tmp_path, monkeypatch, transport_cls, node,
                                                                   xdg_cache):
    """No usable $XDG_RUNTIME_DIR: the private root is leases/ in archfleet's cache dir
    (archfleet.cachedir: $XDG_CACHE_HOME/archfleet, else ~/.cache/archfleet), the same place on
    the local path and in the node-side script."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    if xdg_cache:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        where = tmp_path / "xdg" / "archfleet" / "leases"
    else:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        where = Path(os.environ["HOME"]) / ".cache" / "archfleet" / "leases"  # the fixture's own HOME
    (tmp_path / "leases").write_text("not a directory\n")
    lease_life(transport_cls("n1"), node, tmp_path / "leases", where=where)
    assert stat.S_IMODE(where.stat().st_mode) == 0o700


@root_only
@pytest.mark.parametrize("level", ["root", "engine dir"])
@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_a_directory_owned_by_another_user_is_not_used(tmp_path, private_root, transport_cls, node, level):
    """Rule: a lease directory must be the caller's or root's. One another uid made (0777, not
    sticky, as an attacker would) is neither chmod-ed nor written to; the private root is used."""
    root = tmp_path / "leases"
    root.mkdir()
    foreign = root
    if level == "engine dir":
        root.chmod(0o1777)
        foreign = root / leases.engine_key(node)
        foreign.mkdir()
    foreign.chmod(0o777)
    os.chown(foreign, OTHER_UID, OTHER_UID)
    before = snapshot(foreign)
    lease_life(transport_cls("n1"), node, root, where=private_root)
    assert snapshot(foreign) == before


@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_the_shared_root_is_used_when_it_passes_the_check(tmp_path, private_root, transport_cls, node):
    """Rule: a real directory of the caller's is the shared root, made sticky and world-writable
    (1777) so other users' runs can leave leases there too; nothing goes to the private root."""
    root = tmp_path / "leases"
    lease_life(transport_cls("n1"), node, root, where=root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o1777
    assert stat.S_IMODE((root / leases.engine_key(node)).stat().st_mode) == 0o1777
    assert not private_root.exists()


@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_a_planted_dot_file_cannot_redirect_the_heartbeat(tmp_path, transport_cls, node):
    """Rule: the heartbeat is written to a fresh temp file (O_EXCL, random name), never to the
    predictable ``.<lease>`` a local user can plant as a symlink to a file of the victim's."""
    v = victim(tmp_path)
    before = snapshot(v)
    root = str(tmp_path / "leases")
    transport = transport_cls("n1")

    async def scenario():
        name = await leases.take(transport, node, 30.0, root=root)
        d = tmp_path / "leases" / leases.engine_key(node)
        (d / ("." + name)).symlink_to(v / "passwd")
        (d / name).write_text(f"{int(time.time())} 30.0 0\n")
        await leases.beat(transport, node, name, root=root)
        assert int((d / name).read_text().split()[2]) > 0
        assert (d / ("." + name)).is_symlink()
        await leases.drop(transport, node, name, root=root)

    asyncio.run(scenario())
    assert snapshot(v) == before


def hostile_engine_dir(tmp_path, node):
    d = tmp_path / leases.engine_key(node)
    d.mkdir(parents=True)
    d.chmod(0o1777)
    os.mkfifo(d / "fifo")
    (d / "zero").symlink_to("/dev/zero")
    (d / "big").write_text("9" * (1 << 20))
    (d / "dir").mkdir()
    now = int(time.time())
    (d / "ok").write_text(f"{now} 40 {now}\n")
    return d


@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_a_fifo_or_dev_zero_lease_never_blocks(tmp_path, transport_cls, node):
    """Rule: only regular files are read, at most 64 bytes each, never through a link: a FIFO
    (which blocks an open for reading) and a symlink to /dev/zero (endless) are skipped and the
    one real lease still counts. Bounded by a timeout: a hang fails the test, not the suite."""
    hostile_engine_dir(tmp_path, node)
    got = asyncio.run(asyncio.wait_for(leases.claim(transport_cls("n1"), node, 5.0, 2, root=str(tmp_path)), 15))
    assert got.busy == (pytest.approx(40.0, abs=1.1),) and got.name


def test_reading_local_leases_runs_off_the_event_loop(tmp_path, monkeypatch):
    """Rule: the local node's leases are read in a worker thread (the event loop never waits on
    the file system), and a FIFO cannot block that thread either."""
    node = NodeSpec("local")
    hostile_engine_dir(tmp_path, node)
    threads = []
    real = leases._read_fd

    def spy(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(leases, "_read_fd", spy)
    got = asyncio.run(asyncio.wait_for(leases.claim(LocalTransport(), node, 5.0, 2, root=str(tmp_path)), 15))
    assert got.busy == (pytest.approx(40.0, abs=1.1),) and threads == [False]


def test_the_probe_script_skips_what_is_not_a_regular_file(tmp_path):
    node = NodeSpec("n1", transport="ssh", settings={"host": "h"}, docker_host="unix:///n1.sock")
    hostile_engine_dir(tmp_path, node)

    async def probe():
        return await ShellTransport().run(["sh", "-c", FACTS_SCRIPT, "sh", str(tmp_path), leases.engine_key(node)])

    done = asyncio.run(asyncio.wait_for(probe(), 15))
    assert leases.parse(parse_facts(done.tail)["lease"]) == (pytest.approx(40.0, abs=1.1),)


def test_lease_numbers_must_be_finite_and_are_clamped():
    """Rules: a lease whose numbers are not finite (inf, nan, 1e400) is ignored; an estimate counts
    for at most MAX_ESTIMATE (24 h); a heartbeat from the future (past CLOCK_SKEW) is ignored; a
    lease without a heartbeat is stale NO_BEAT_STALE (600 s) after its start, whatever its estimate.
    So what the planner and ``plan --format json`` get is always finite."""
    now = 1_000_000.0
    assert leases.MAX_ESTIMATE == 86400 and leases.NO_BEAT_STALE == 600
    assert leases.remaining(now, now, math.inf, now) is None
    assert leases.remaining(now, now, math.nan, now) is None
    assert leases.remaining(now, now, 30.0, math.inf) is None
    assert leases.remaining(now, now, 1e9, now) == 86400.0
    assert leases.remaining(now, now, 30.0, now + 3600) is None
    assert leases.remaining(now, now, 30.0, now + 30) == 30.0  # small clock skew is fine
    assert leases.remaining(now, now - 599, 1e9) == 86400.0 - 599
    assert leases.remaining(now, now - 601, 1e9) is None
    busy = leases.parse([f"{now} {now} inf {now}", f"{now} {now} nan {now}", f"{now} {now} 1e400 {now}",
                         f"{now} {now} 1e9 {now}", f"{now} {now} 20 {now}"])
    assert busy == (20.0, 86400.0)
    json.dumps(busy, allow_nan=False)


def test_a_lease_is_written_with_a_finite_clamped_estimate(tmp_path):
    node = NodeSpec("local")
    for estimate, written in ((math.inf, 0.0), (math.nan, 0.0), (1e9, 86400.0), (12.34, 12.3)):
        name = asyncio.run(leases.take(LocalTransport(), node, estimate, root=str(tmp_path)))
        assert float((tmp_path / leases.engine_key(node) / name).read_text().split()[1]) == written


def test_the_wait_for_other_runs_is_capped():
    """Rule: a build waits for other runs' slots twice the longest wait seen, a minute at least,
    and at most MAX_WAIT (300 s) or its own estimate if that is longer."""
    assert leases.MAX_WAIT == 300
    assert leases.wait_limit((20.0,), 10.0) == 60.0
    assert leases.wait_limit((100.0,), 10.0) == 200.0
    assert leases.wait_limit((86400.0,), 10.0) == 300.0
    assert leases.wait_limit((86400.0,), 1200.0) == 1200.0
    assert leases.wait_limit((86400.0,), math.inf) == 300.0
    assert leases.wait_limit((math.inf,), 10.0) == 60.0


@pytest.mark.parametrize("busy,waited", [
    ((86400.0, 86400.0), 300.0),  # held "for a day": the cap
    ((100.0, 100.0), 200.0),      # twice the longest wait the probe saw
    ((10.0, 10.0), 60.0),         # a minute at least
])
def test_the_executor_builds_anyway_at_the_cap(monkeypatch, busy, waited):
    """Rule (concepts.md "The plan"): while other runs hold every slot, a build waits at most
    twice the longest wait the probe saw, a minute at least, never past the cap (300 s here),
    then builds and says so. The slots never free here (a fake clock)."""
    clock = [1000.0]
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds):
        clock[0] += seconds
        await real_sleep(0)

    caps = []

    async def full(transport, node, estimate, cap, root=None):
        caps.append(cap)
        return leases.Claim(None, True, busy) if cap else leases.Claim("x", False, busy)

    monkeypatch.setattr("archfleet.executor.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("archfleet.executor.asyncio.sleep", fake_sleep)
    monkeypatch.setattr(leases, "claim", full)
    monkeypatch.setattr(leases, "Held", lambda transport, node, name: name)
    said = []

    class Reporter:
        def status(self, option, state):
            said.append(state)

    spec = NodeSpec("n", transport="ssh", settings={"host": "h"}, max_builds=2)
    facts = {"n": NodeFacts(spec, True, busy=busy)}
    ex = Executor(None, facts, Reporter(), connect=None, run_option=None, replan=None)
    option = Option(parse_platform("linux/amd64"), "native", "n", 30.0)
    ex._busy["n"][option.platform] = (clock[0], 30.0)
    started = clock[0]
    held = asyncio.run(ex._claim_slot(option, object()))
    assert waited <= clock[0] - started <= waited + 6.0  # checked every few seconds
    assert caps[-1] == 0 and set(caps[:-1]) == {2} and held == "x"  # the lease the last claim took is held
    assert said[-1] == "other archfleet runs still hold the slots; building anyway"


@root_only
@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_the_sweep_removes_only_the_callers_own_files(tmp_path, transport_cls, node):
    """Rule: taking a lease sweeps dead lease files (untouched for 600 s) of this user only;
    another user's file, however old, stays."""
    d = tmp_path / leases.engine_key(node)
    d.mkdir()
    d.chmod(0o1777)
    for name, uid in (("1-mine", os.geteuid()), ("2-theirs", OTHER_UID)):
        (d / name).write_text("1 5 1\n")
        os.chown(d / name, uid, uid)
        os.utime(d / name, (HOUR_AGO, HOUR_AGO))
    name = asyncio.run(leases.take(transport_cls("n1"), node, 5.0, root=str(tmp_path)))
    assert sorted(p.name for p in d.iterdir()) == sorted(["2-theirs", name])


def test_the_lease_root_test_hook(tmp_path, monkeypatch):
    """ARCHFLEET_LEASE_ROOT (a test hook) replaces /tmp/archfleet-leases, on the same code path."""
    assert leases.shared_root() == "/tmp/archfleet-leases"
    monkeypatch.setenv(leases.ROOT_ENV, str(tmp_path / "r"))
    assert leases.shared_root() == str(tmp_path / "r")
    node = NodeSpec("local")
    name = asyncio.run(leases.take(LocalTransport(), node, 5.0))
    assert (tmp_path / "r" / leases.engine_key(node) / name).is_file()
    asyncio.run(leases.drop(LocalTransport(), node, name))


@pytest.mark.parametrize("mode,used", [(0o755, True), (0o777, False)])
@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_an_existing_directory_is_never_chmod_ed(tmp_path, private_root, transport_cls, node, mode, used):
    """Rule: only a directory the run itself just made is chmod-ed (so ARCHFLEET_LEASE_ROOT=/var by
    mistake cannot make /var world-writable). An existing one of the caller's is used as it is
    when nobody else may write in it (0755), and not at all when others may but it is not sticky
    (0777): then the private root."""
    root = tmp_path / "leases"
    root.mkdir()
    root.chmod(mode)
    lease_life(transport_cls("n1"), node, root, where=root if used else private_root)
    assert stat.S_IMODE(root.stat().st_mode) == mode


# --- the claim: max_builds holds when runs start at the same moment ----------------------------

@pytest.mark.parametrize("transport_cls,node", PATHS)
def test_a_claim_takes_a_slot_only_while_fewer_than_max_builds_are_live(tmp_path, transport_cls, node):
    """Rule (leases module docstring, the claim): a lease is written only while fewer than the
    node's max_builds leases are live; a stale one (heartbeat older than 75 s), a future one
    and a file that is not a lease do not count; cap 0 takes the slot whatever is held."""
    root = str(tmp_path)
    d = tmp_path / leases.engine_key(node)
    d.mkdir()
    now = int(time.time())
    (d / "1-live").write_text(f"{now} 40 {now}\n")
    (d / "2-stale").write_text(f"{now - 500} 900 {now - 200}\n")
    (d / "3-future").write_text(f"{now + 3600} 40 {now + 3600}\n")
    (d / "4-junk").write_text("$(touch /tmp/x) 1 2\n")
    t = transport_cls("n1")
    got = asyncio.run(leases.claim(t, node, 10.0, 2, root=root))
    assert got.name and not got.full and (d / got.name).is_file()
    assert got.busy == (pytest.approx(40.0, abs=1.1),)
    full = asyncio.run(leases.claim(t, node, 10.0, 2, root=root))
    assert (full.name, full.full, len(full.busy)) == (None, True, 2)
    assert sorted(p.name for p in d.iterdir()) == sorted(["1-live", "2-stale", "3-future", "4-junk", got.name])
    anyway = asyncio.run(leases.claim(t, node, 10.0, 0, root=root))
    assert anyway.name and not anyway.full and (d / anyway.name).is_file()


def test_claims_at_the_same_moment_take_exactly_max_builds_slots_on_a_node(tmp_path):
    """Rule (the claim, node side): eight runs claiming a two-slot node at once (separate
    shells, as separate coordinators' SSH sessions) take two slots; six find it full. Without
    the directory's lock each would count the leases before any was written."""
    import subprocess

    node = PATHS[0].values[1]
    key = leases.engine_key(node)
    procs = [subprocess.Popen(["sh", "-c", leases._CLAIM, "sh", str(tmp_path), key, f"9{i}-claim", "30.0", "2"],
                              stdout=subprocess.PIPE, text=True) for i in range(8)]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert [o.strip().splitlines()[-1] for o in outs].count("claim=taken") == 2, outs
    assert len(list((tmp_path / key).iterdir())) == 2


def test_claims_at_the_same_moment_take_exactly_max_builds_slots_here(tmp_path):
    """Rule (the claim, this machine: fcntl.flock of the lease directory): eight claims from
    threads at once on a three-slot engine take three slots."""
    node = NodeSpec("local")
    barrier = threading.Barrier(8)
    got = []

    def one(i):
        barrier.wait()
        got.append(leases._claim_local(str(tmp_path), leases.engine_key(node), f"8{i}-claim", 30.0, 3)[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert len([n for n in got if n]) == 3 and len(got) == 8
    assert len(list((tmp_path / leases.engine_key(node)).iterdir())) == 3


def test_a_claim_goes_on_without_the_lock_when_someone_holds_it(tmp_path):
    """Rule (finding 8, a denial of service): anyone who can read the lease directory can hold
    its lock; a claim waits for it LOCK_WAIT (2 s) at most, then counts and writes unlocked."""
    import fcntl

    for transport_cls, node in (p.values for p in PATHS):
        d = tmp_path / leases.engine_key(node)
        d.mkdir()
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            started = time.monotonic()
            got = asyncio.run(leases.claim(transport_cls("n1"), node, 5.0, 2, root=str(tmp_path)))
            assert got.name and 1.5 <= time.monotonic() - started < 8
        finally:
            os.close(fd)
