"""A context's file digests remembered by their stat (issue 17: a plan of a big context read
every byte each time): a file whose device, inode, size, mtime and ctime are unchanged keeps
its digest; anything else is hashed again, and a file changed too recently is not remembered."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from archfleet import context, filedigests, learn
from archfleet.model import FileDigests


@pytest.fixture
def counted(monkeypatch):
    """The paths the snapshot reads to hash them."""
    read: list[str] = []
    real = context._hash_file

    def hash_file(path):
        read.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(context, "_hash_file", hash_file)
    return read


@pytest.fixture
def settled_now(monkeypatch):
    """Every file counts as settled (the tests' files were all written a moment ago)."""
    monkeypatch.setattr(filedigests, "SETTLED_NS", -10**18)


def ctx_with(tmp_path: Path, **files: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    for name, text in files.items():
        (ctx / name).write_text(text)
    return ctx


def snap_and_learn(ctx: Path):
    snap = context.snapshot(ctx, ctx / "Dockerfile")
    learn.keep(learn.Lessons())  # nothing to keep: writes nothing
    if snap.digests is not None and snap.digests.changed:
        filedigests.store(snap.digests)
    return snap


def test_an_unchanged_file_is_not_read_again_and_keeps_its_digest(tmp_path, counted, settled_now):
    ctx = ctx_with(tmp_path, a="aaaa", b="bbbb")
    first = snap_and_learn(ctx)
    assert set(counted) == {"Dockerfile", "a", "b"}
    counted.clear()
    second = snap_and_learn(ctx)
    assert counted == ["Dockerfile"]  # read as the build's Dockerfile, always; as a context file, not again
    assert second.digest == first.digest and not second.digests.changed


def test_a_file_rewritten_with_its_old_size_and_mtime_is_hashed_again(tmp_path, counted, settled_now):
    """Rule: ctime is part of the key, and no user can set it: `utime` back to the old mtime
    after a same-size rewrite still changes the key (size and mtime alone would keep the old
    digest, and the old contents would be built)."""
    ctx = ctx_with(tmp_path, a="aaaa")
    first = snap_and_learn(ctx)
    st = os.stat(ctx / "a")
    time.sleep(0.02)  # past the file system's timestamp tick
    (ctx / "a").write_text("bbbb")
    os.utime(ctx / "a", ns=(st.st_atime_ns, st.st_mtime_ns))
    counted.clear()
    second = snap_and_learn(ctx)
    assert "a" in counted and second.digest != first.digest


def test_a_file_changed_within_the_settling_time_is_not_remembered(tmp_path, counted):
    """Rule (git's racily clean entries): a file whose mtime or ctime is less than 2 s before the
    walk may still change within the same timestamp tick: it is hashed every time until it
    settles."""
    ctx = ctx_with(tmp_path, a="aaaa")
    old = time.time_ns() - 10 * 10**9
    os.utime(ctx / "Dockerfile", ns=(old, old))
    first = snap_and_learn(ctx)
    assert [(f, ok) for f, _, _, ok in first.digests.files if f == "a"] == [("a", False)]  # a's ctime is now
    counted.clear()
    snap_and_learn(ctx)
    assert "a" in counted


def test_the_memory_is_per_context_and_a_broken_file_is_no_memory(tmp_path, counted, settled_now):
    ctx = ctx_with(tmp_path, a="aaaa")
    snap_and_learn(ctx)
    path = filedigests.cachedir.context_digests(ctx.absolute())
    other = filedigests.cachedir.context_digests((tmp_path / "other").absolute())
    assert path.exists() and path != other
    path.write_text("{not json")
    counted.clear()
    assert snap_and_learn(ctx).digest  # hashed again, no error
    assert "a" in counted
    # an entry whose recorded root is another directory (a renamed cache file) is not used
    doc = path.read_text().replace(str(ctx.absolute()), "/elsewhere")
    path.write_text(doc)
    assert filedigests.load(ctx.absolute()) == {}


def test_the_learn_stage_keeps_the_digests_a_plans_history_view_carries(tmp_path, settled_now):
    """Only the learn stage writes the cache: the digests travel in the history view's
    ContextFiles, and learn.keep writes them once per context, only when they changed."""
    from archfleet.history import HistoryView

    digests = FileDigests(str(tmp_path / "ctx"), [("a", (1, 2, 4, 5, 6), "ab" * 32, True)])
    view = HistoryView(None, "k", "p", 4, files=context_files_with(digests))
    learn.keep(learn.Lessons(history=view, histories=[(None, view)]))
    assert filedigests.load(tmp_path / "ctx") == {"a": ((1, 2, 4, 5, 6), "ab" * 32, True)}
    unchanged = FileDigests(str(tmp_path / "ctx2"), [("a", (1, 2, 4, 5, 6), "cd" * 32, True)], changed=False)
    learn.keep(learn.Lessons(history=HistoryView(None, "k", "p", 4, files=context_files_with(unchanged))))
    assert not filedigests.cachedir.context_digests(tmp_path / "ctx2").exists()


@pytest.mark.parametrize("settled", [True, False])
def test_new_contents_under_the_remembered_size_and_mtime_are_named_every_time(tmp_path, monkeypatch, settled):
    """Rule (BuildKit's context transfer compares size and mtime, not contents): a file given new
    contents of the same size and its old mtime back (`cp -p`, `touch -r`) is named stale, by
    this snapshot and by the next one (the old entry stays remembered), also when the first
    snapshot saw it unsettled; once its mtime moves, it is not."""
    if settled:
        monkeypatch.setattr(filedigests, "SETTLED_NS", -10**18)
    ctx = ctx_with(tmp_path, a="aaaa", b="bbbb")
    assert snap_and_learn(ctx).digests.stale == ()
    st = os.stat(ctx / "a")
    time.sleep(0.02)
    (ctx / "a").write_text("cccc")
    os.utime(ctx / "a", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert snap_and_learn(ctx).digests.stale == ("a",)
    assert snap_and_learn(ctx).digests.stale == ("a",)  # a plan in between does not hide it from the build
    os.utime(ctx / "a")  # touch
    assert snap_and_learn(ctx).digests.stale == ()


def test_a_dockerfile_outside_the_context_is_remembered_by_its_absolute_path(tmp_path, monkeypatch):
    """Rule (the fresh-user helper's `-f` outside the context: pushed `one1` while the file said
    `two2`, and reused it after a touch): BuildKit reads such a Dockerfile by stat too, so it is
    remembered under its absolute path and named stale the same way; two platforms' files of one
    context are both remembered (each snapshot keeps the other's entry)."""
    monkeypatch.setattr(filedigests, "SETTLED_NS", -10**18)
    ctx = ctx_with(tmp_path, a="aaaa")
    (ctx / "Dockerfile").unlink()
    files = {}
    for name in ("amd.Dockerfile", "arm.Dockerfile"):
        files[name] = tmp_path / name
        files[name].write_text("FROM scratch\nCMD [\"one1\"]\n")
    for f in files.values():
        assert context.snapshot(ctx, f).digests.stale == ()
        filedigests.store(context.snapshot(ctx, f).digests)
    remembered = filedigests.load(ctx.absolute())
    assert {str(f.absolute()) for f in files.values()} <= set(remembered)
    f = files["arm.Dockerfile"]
    st = os.stat(f)
    time.sleep(0.02)
    f.write_text("FROM scratch\nCMD [\"two2\"]\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert context.snapshot(ctx, f).digests.stale == (str(f.absolute()),)
    assert context.snapshot(ctx, files["amd.Dockerfile"]).digests.stale == ()


def context_files_with(digests):
    from archfleet.model import ContextFiles

    return ContextFiles((), "key", "", digests)


def test_only_a_stale_file_the_build_reads_is_refused(tmp_path, monkeypatch):
    """Rule (BuildKit sends only what the COPYs name, its Dockerfile and its ignore file): a
    stale file no COPY, ADD or bind mount can read does not stop the build; one they read does,
    also through a link."""
    from archfleet import pipeline
    from archfleet.history import HistoryView, context_files
    from archfleet.model import BuildRequest
    from archfleet.platforms import parse

    monkeypatch.setattr(filedigests, "SETTLED_NS", -10**18)
    ctx = ctx_with(tmp_path, notes="nnnn", a="aaaa")
    (ctx / "dir").mkdir()
    (ctx / "dir" / "b").write_text("bbbb")
    (ctx / "link").symlink_to("dir")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a /a\nCOPY link/b /b\n")
    request = BuildRequest(ctx, ctx / "Dockerfile", (parse("linux/amd64"),))

    def stale_after(*names):
        context._snapshot_cached.cache_clear()
        filedigests.store(context.snapshot(ctx, ctx / "Dockerfile").digests)
        for name in names:
            st = os.stat(ctx / name)
            time.sleep(0.02)
            (ctx / name).write_text((ctx / name).read_text()[::-1].upper())
            os.utime(ctx / name, ns=(st.st_atime_ns, st.st_mtime_ns))
        context._snapshot_cached.cache_clear()
        view = HistoryView(None, "k", "p", 0, files=context_files(request))
        planned = pipeline.Planned({}, (), None, history=view, request=request)
        return pipeline.stale_context(planned)

    assert stale_after("notes") is None  # no COPY reads it
    assert stale_after("dir/b").startswith("context file dir/b: its contents changed")  # through the link
    os.utime(ctx / "dir" / "b")  # the fix the line names: stale no more
    assert stale_after("a", "notes").startswith("context file a: its contents changed")
