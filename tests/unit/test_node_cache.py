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


def run(root, **kw):
    asyncio.run(prune(LocalTransport(), str(root), **kw))


def test_unused_trees_and_their_orphaned_blobs_go(tmp_path):
    root = tmp_path / "sync"
    make_cache(root)
    run(root, tree_minutes=14 * 1440, orphan_minutes=0)
    assert sorted(p.name for p in (root / "ctx").iterdir()) == ["new", "new.ok"]
    assert sorted(p.name for p in (root / "blobs").iterdir()) == ["only-new", "shared"]


def test_recently_orphaned_blobs_stay_and_it_runs_once_a_day(tmp_path):
    root = tmp_path / "sync"
    make_cache(root)
    run(root, tree_minutes=14 * 1440)  # the default hour for orphans: a sync may be about to link them
    assert not (root / "ctx" / "old").exists()
    assert sorted(p.name for p in (root / "blobs").iterdir()) == ["only-new", "only-old", "orphan", "shared"]
    (root / "ctx" / "new.ok").touch()
    os.utime(root / "ctx" / "new.ok", (0, 0))
    run(root, tree_minutes=1, orphan_minutes=0)  # stamped less than a day ago: nothing happens
    assert (root / "ctx" / "new").exists() and (root / "blobs" / "orphan").exists()


def test_a_missing_cache_is_fine(tmp_path):
    run(tmp_path / "nothing-here", tree_minutes=1)


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

    tree, _ = asyncio.run(sync_context(Counting(), BuildRequest(ctx, ctx / "Dockerfile", [parse("linux/amd64")])))
    assert (home / tree).is_dir()
    assert not (home / CACHE / "ctx" / "old").exists() and (home / CACHE / "ctx" / "new").exists()
    assert len(runs) == 3  # is it there, which blobs are missing, unpack (and prune): no extra round trip
