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
