"""The node-side context cache is bounded by age: the prune script, run for real by sh on a
cache laid out as a sync leaves it."""

import asyncio
import os
import time

import pytest

from archfleet.context import cache_days, prune
from archfleet.errors import UsageError
from archfleet.transport import LocalTransport


def make_cache(root):
    (root / "blobs").mkdir(parents=True)
    for name in ("only-old", "shared", "only-new", "orphan"):
        (root / "blobs" / name).write_text(name)
    for ctx, blobs in (("old", ("only-old", "shared")), ("new", ("only-new", "shared"))):
        tree = root / "ctx" / ctx / "tree"
        tree.mkdir(parents=True)
        for b in blobs:
            os.link(root / "blobs" / b, tree / b)
        (root / "ctx" / f"{ctx}.ok").touch()
    month = time.time() - 30 * 86400
    os.utime(root / "ctx" / "old.ok", (month, month))


def run(root, transport=None, **kw) -> str:
    return asyncio.run(prune(transport or LocalTransport(), str(root), **kw))


def listing(root):
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_unused_trees_and_their_orphaned_blobs_go(tmp_path):
    root = tmp_path / "sync"
    make_cache(root)
    assert run(root, tree_minutes=14 * 1440, orphan_minutes=0) == "pruned"
    assert sorted(p.name for p in (root / "ctx").iterdir()) == ["new", "new.ok"]
    assert sorted(p.name for p in (root / "blobs").iterdir()) == ["only-new", "shared"]


def test_recently_orphaned_blobs_stay_and_it_runs_once_a_day(tmp_path):
    """Rule: at most once a day. The second prune, on a cache where the new tree has since gone
    unused, says "recent" and changes nothing; the control (the day's stamp removed, nothing
    else changed) prunes that tree: so "nothing happened" came from the once-a-day rule, not
    from a prune that failed silently."""
    root = tmp_path / "sync"
    make_cache(root)
    assert run(root, tree_minutes=14 * 1440) == "pruned"  # the default hour for orphans: a sync may be about to link them
    assert not (root / "ctx" / "old").exists()
    assert sorted(p.name for p in (root / "blobs").iterdir()) == ["only-new", "only-old", "orphan", "shared"]
    os.utime(root / "ctx" / "new.ok", (0, 0))
    before = listing(root)
    assert run(root, tree_minutes=1, orphan_minutes=0) == "recent"  # stamped less than a day ago
    assert listing(root) == before
    (root / "pruned").unlink()  # control: the same cache, a day later
    assert run(root, tree_minutes=1, orphan_minutes=0) == "pruned"
    assert not (root / "ctx" / "new").exists() and not (root / "blobs" / "orphan").exists()


def test_a_missing_cache_is_fine_and_said_to_be_absent(tmp_path):
    assert run(tmp_path / "nothing-here", tree_minutes=1) == "absent"
    assert not (tmp_path / "nothing-here").exists()  # not created
    make_cache(tmp_path / "here")  # control: where there is a cache, it is pruned
    assert run(tmp_path / "here", tree_minutes=14 * 1440) == "pruned"


def test_a_prune_that_fails_says_why_and_does_not_raise(tmp_path):
    (tmp_path / "file").write_text("not a cache\n")
    got = run(tmp_path / "file", tree_minutes=1)
    assert got.startswith("failed: ") and "file" in got, got
    assert (tmp_path / "file").read_text() == "not a cache\n"

    class Gone:
        async def run(self, *args, **kwargs):
            raise ConnectionError("SSH connection lost")

    assert run(tmp_path, transport=Gone(), tree_minutes=1) == "failed: ConnectionError: SSH connection lost"

    class Strange:
        async def run(self, argv, **kwargs):
            from archfleet.transport import Completed

            return Completed(tuple(argv), 0, ("sh: find: not found",))

    assert run(tmp_path, transport=Strange(), tree_minutes=1) == "failed: unexpected answer 'sh: find: not found'"


def test_cache_days_setting(monkeypatch):
    monkeypatch.delenv("ARCHFLEET_NODE_CACHE_DAYS", raising=False)
    assert cache_days() == 14
    monkeypatch.setenv("ARCHFLEET_NODE_CACHE_DAYS", "3")
    assert cache_days() == 3
    for bad in ("soon", "-1"):
        monkeypatch.setenv("ARCHFLEET_NODE_CACHE_DAYS", bad)
        with pytest.raises(UsageError, match="ARCHFLEET_NODE_CACHE_DAYS"):
            cache_days()


def test_a_sync_that_unpacks_a_new_tree_prunes_in_the_same_command(tmp_path, monkeypatch):
    """The real path: sync_context through a transport that runs sh (here, locally, with the
    cache relative to the working directory as it is to an SSH user's home)."""
    from archfleet.context import CACHE, sync_context
    from archfleet.model import BuildRequest
    from archfleet.platforms import parse

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    make_cache(home / CACHE)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    runs = []

    class Counting(LocalTransport):
        async def run(self, argv, **kw):
            runs.append(argv)
            return await super().run(argv, **kw)

    tree, _, _ = asyncio.run(sync_context(Counting(), BuildRequest(ctx, ctx / "Dockerfile", [parse("linux/amd64")])))
    assert (home / tree).is_dir()
    assert not (home / CACHE / "ctx" / "old").exists() and (home / CACHE / "ctx" / "new").exists()
    assert len(runs) == 3  # is it there, which blobs are missing, unpack (and prune): no extra round trip


# A blob is never stored under a name its bytes do not have (defects #14), and a marker is
# trusted only with its tree (#26). Through the real node-side scripts, run by sh here.

import hashlib  # noqa: E402

from archfleet.context import CACHE, snapshot_of, sync_context  # noqa: E402
from archfleet.errors import InfrastructureError  # noqa: E402
from archfleet.model import BuildRequest  # noqa: E402
from archfleet.platforms import parse  # noqa: E402


class Cutting(LocalTransport):
    """Like an SSH channel: the stream the coordinator managed to produce reaches the node (then
    EOF), and the coordinator's own error is raised after the node's command ended."""

    def __init__(self):
        super().__init__()
        self.runs = []

    async def run(self, argv, *, env=None, stdin=None, on_line=None, timeout=None):
        error = None
        if stdin is not None and not isinstance(stdin, bytes):
            got = []
            try:
                for chunk in stdin:
                    got.append(chunk)
            except Exception as exc:
                error = exc
            stdin = b"".join(got)
        done = await super().run(argv, env=env, stdin=stdin, on_line=on_line, timeout=timeout)
        self.runs.append(done)
        if error:
            raise error
        return done


def node_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    return home / CACHE


def small_context(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (ctx / "version.txt").write_text("1.2.3\n")
    return BuildRequest(ctx, ctx / "Dockerfile", [parse("linux/amd64")])


def blob_name(data: bytes, mode: int = 0o644) -> str:
    return f"{hashlib.sha256(data).hexdigest()}-{mode:o}"


@pytest.mark.parametrize("how, change", [
    ("changed", lambda p: p.write_text("1.2.4\n")),  # same size: what an editor or generator does
    ("shrank", lambda p: p.write_text("1\n")),
    ("grew", lambda p: p.write_text("1.2.3-rc1\n")),
    ("could not be read", lambda p: p.unlink()),
])
def test_a_file_that_changes_while_it_is_sent_is_one_line_naming_it_and_the_node_keeps_nothing(
        tmp_path, monkeypatch, how, change):
    from archfleet import context

    cache = node_home(tmp_path, monkeypatch)
    req = small_context(tmp_path)
    version = req.context / "version.txt"
    snapshot_of(req)  # hashed with 1.2.3
    real_open = context._open

    def open_after_a_change(path):
        if path == version and version.exists():
            change(version)
        return real_open(path)

    monkeypatch.setattr(context, "_open", open_after_a_change)
    t = Cutting()
    with pytest.raises(UsageError) as err:
        asyncio.run(sync_context(t, req))
    line = str(err.value)
    assert "\n" not in line and str(version) in line and how in line, line
    assert t.runs[-1].returncode == 65  # the node saw a stream that ended early ...
    assert os.listdir(cache / "blobs") == []  # ... and kept no blob, 1.2.3's name least of all
    assert os.listdir(cache / "ctx") == [] and os.listdir(cache / "stage") == []


def test_a_blob_whose_bytes_are_not_its_name_never_enters_the_cache(tmp_path, monkeypatch):
    """Even if the coordinator's check were bypassed: sha256sum -c on the node refuses it."""
    from archfleet import context

    cache = node_home(tmp_path, monkeypatch)
    req = small_context(tmp_path)
    monkeypatch.setattr(context, "_blob", lambda path, name, e: [context._member(name, b"0", e.mode, data=b"evil\n")])
    with pytest.raises(InfrastructureError, match="sha256sum -c"):
        asyncio.run(sync_context(LocalTransport(), req))
    assert os.listdir(cache / "blobs") == [] and os.listdir(cache / "ctx") == []
    assert os.listdir(cache / "stage") == []


def test_the_blobs_of_a_good_sync_are_what_their_names_say(tmp_path, monkeypatch):
    cache = node_home(tmp_path, monkeypatch)
    req = small_context(tmp_path)
    tree, dockerfile, _ = asyncio.run(sync_context(LocalTransport(), req))
    for name in os.listdir(cache / "blobs"):
        assert name.startswith(hashlib.sha256((cache / "blobs" / name).read_bytes()).hexdigest() + "-")
    assert (cache.parent.parent.parent / tree / "version.txt").read_text() == "1.2.3\n"
    assert os.listdir(cache / "stage") == []  # no staging directory, checksum list or temp file left


def test_no_marker_when_the_tree_could_not_be_renamed_into_place(tmp_path, monkeypatch):
    """A rename that fails for any reason but a concurrent sync's finished tree: the sync fails
    (the node's problem) and no .ok claims a tree that is not there."""
    cache = node_home(tmp_path, monkeypatch)
    req = small_context(tmp_path)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mv").write_text('#!/bin/sh\ncase "$*" in *ctx/*) echo "mv: simulated failure" >&2; exit 1;; esac\n'
                             'exec /bin/mv "$@"\n')
    (fake / "mv").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with pytest.raises(InfrastructureError, match="no tree"):
        asyncio.run(sync_context(LocalTransport(), req))
    assert os.listdir(cache / "ctx") == []
    monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])
    tree, _, _ = asyncio.run(sync_context(LocalTransport(), req))  # and the next sync just works
    assert (cache.parent.parent.parent / tree / "version.txt").is_file()


def test_a_marker_without_its_tree_is_not_trusted(tmp_path, monkeypatch):
    import shutil

    cache = node_home(tmp_path, monkeypatch)
    req = small_context(tmp_path)
    tree, _, _ = asyncio.run(sync_context(LocalTransport(), req))
    home = cache.parent.parent.parent
    shutil.rmtree(home / tree)  # e.g. an old-style prune interrupted after the marker check
    tree, _, _ = asyncio.run(sync_context(LocalTransport(), req))
    assert (home / tree / "version.txt").read_text() == "1.2.3\n"


def test_blobs_reported_present_are_touched_so_a_prune_keeps_them(tmp_path, monkeypatch):
    """Their ctime is renewed (the prune keeps orphans whose ctime is under an hour old); their
    mtime, which a build's COPY keeps, is not."""
    from archfleet.context import _missing

    cache = node_home(tmp_path, monkeypatch)
    (cache / "blobs").mkdir(parents=True)
    present = cache / "blobs" / blob_name(b"x")
    present.write_bytes(b"x")
    os.utime(present, (0, 0))
    before = present.stat().st_ctime_ns
    time.sleep(0.02)
    missing = asyncio.run(_missing(LocalTransport(), [blob_name(b"x"), blob_name(b"y")]))
    assert missing == {blob_name(b"y")}
    after = present.stat()
    assert after.st_ctime_ns > before and after.st_mtime == 0
    assert os.listdir(cache / "stage") == []


def test_a_pruned_tree_leaves_ctx_in_one_rename_and_nothing_in_stage(tmp_path):
    root = tmp_path / "sync"
    make_cache(root)
    run(root, tree_minutes=14 * 1440, orphan_minutes=0)
    assert sorted(os.listdir(root / "ctx")) == ["new", "new.ok"] and os.listdir(root / "stage") == []


def test_two_syncs_of_one_new_context_at_once_leave_one_tree_and_no_stage(tmp_path, monkeypatch):
    """Both unpack, one rename wins; the other finds the finished tree, writes the marker and
    removes its own copy."""
    cache = node_home(tmp_path, monkeypatch)
    req = small_context(tmp_path)
    for i in range(20):
        (req.context / f"f{i}").write_bytes(os.urandom(5000))

    async def both():
        return await asyncio.gather(sync_context(LocalTransport(), req), sync_context(LocalTransport(), req))

    a, b = asyncio.run(both())
    assert a == b
    assert len(os.listdir(cache.parent.parent.parent / a[0])) == 22  # 20 + version.txt + Dockerfile
    assert sorted(os.listdir(cache / "ctx")) == sorted([a[0].split("/")[-2], a[0].split("/")[-2] + ".ok"])
    assert os.listdir(cache / "stage") == []
