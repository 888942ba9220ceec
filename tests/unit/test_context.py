import os
from pathlib import Path

from archfleet import context as ctx
from archfleet.context import snapshot_of
from archfleet.model import BuildRequest
from archfleet.platforms import parse


def request(ctx: Path) -> BuildRequest:
    return BuildRequest(ctx, ctx / "Dockerfile", [parse("linux/amd64")])


def test_snapshot_is_reused_until_a_file_changes(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / ".dockerignore").write_text("ignored.txt\n")
    (tmp_path / "ignored.txt").write_text("x")
    first = snapshot_of(request(tmp_path))
    assert snapshot_of(request(tmp_path)) is first  # hashed once
    assert {e.path for e in first.entries} >= {"a.txt", "Dockerfile"} and "ignored.txt" not in {
        e.path for e in first.entries}
    st = os.stat(tmp_path / "a.txt")
    (tmp_path / "a.txt").write_text("two")  # same size, new content
    os.utime(tmp_path / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = snapshot_of(request(tmp_path))
    assert second.digest != first.digest


# BuildKit's ignore rule: <Dockerfile path>.dockerignore beside the Dockerfile if it exists, else
# <context>/.dockerignore; never both (moby/buildkit dockerui; Docker 20.10's BuildKit does the same).

def files(snap) -> set[str]:
    return {e.path for e in snap.entries}


def app_context(root: Path, *, own: str | None = None, shared: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.Dockerfile").write_text("FROM scratch\nCOPY . /ctx/\n")
    (root / "keep.txt").write_text("keep me\n")
    (root / "secret.env").write_text("API_TOKEN=not-a-real-secret\n")
    if own is not None:
        (root / "app.Dockerfile.dockerignore").write_text(own)
    if shared is not None:
        (root / ".dockerignore").write_text(shared)
    return root / "app.Dockerfile"


def test_the_dockerfiles_own_ignore_file_is_applied(tmp_path):
    from archfleet.context import snapshot

    df = app_context(tmp_path, own="secret.env\n")
    snap = snapshot(tmp_path, df)
    assert files(snap) == {"app.Dockerfile", "app.Dockerfile.dockerignore", "keep.txt"}
    assert snap.ignore_path == tmp_path / "app.Dockerfile.dockerignore"
    assert snap.ignore.path == "Dockerfile.dockerignore"  # the name it gets beside the node's Dockerfile


def test_the_contexts_dockerignore_applies_when_the_dockerfile_has_none(tmp_path):
    from archfleet.context import snapshot

    df = app_context(tmp_path, shared="secret.env\n")
    snap = snapshot(tmp_path, df)
    assert files(snap) == {".dockerignore", "app.Dockerfile", "keep.txt"}
    assert snap.ignore_path == tmp_path / ".dockerignore"


def test_with_both_the_dockerfiles_own_ignore_file_wins_alone(tmp_path):
    """Not a union: keep.txt, excluded only by the context's .dockerignore, is in the context."""
    from archfleet.context import snapshot

    df = app_context(tmp_path, own="secret.env\n", shared="keep.txt\n")
    assert files(snapshot(tmp_path, df)) == {".dockerignore", "app.Dockerfile", "app.Dockerfile.dockerignore",
                                             "keep.txt"}


def test_no_ignore_file_sends_everything(tmp_path):
    from archfleet.context import snapshot

    snap = snapshot(tmp_path, app_context(tmp_path))
    assert files(snap) == {"app.Dockerfile", "keep.txt", "secret.env"} and snap.ignore is None


def test_a_dockerfile_outside_the_context_brings_its_ignore_file_from_beside_it(tmp_path):
    from archfleet.context import snapshot

    ctx = tmp_path / "ctx"
    app_context(ctx, shared="keep.txt\n")
    outside = tmp_path / "build" / "app.Dockerfile"
    outside.parent.mkdir()
    outside.write_text("FROM scratch\nCOPY . /ctx/\n")
    (tmp_path / "build" / "app.Dockerfile.dockerignore").write_text("secret.env\napp.Dockerfile\n")
    snap = snapshot(ctx, outside)
    # docker-py's walker always keeps .dockerignore (the classic builder's rule); BuildKit on
    # the node re-applies the shipped file, so the image still lacks what it excludes.
    assert files(snap) == {".dockerignore", "keep.txt"}
    assert snap.ignore_path == tmp_path / "build" / "app.Dockerfile.dockerignore"


def test_the_digest_and_the_label_follow_the_ignore_file_applied(tmp_path):
    """Same files, another ignore file: another context (BuildKit on the node filters the tree by
    it), so another digest and another context-digest label; an ignore file outside the context,
    changed, is seen by the per-process snapshot cache too."""
    from archfleet.nodebuild import context_digest

    ctx = tmp_path / "ctx"
    app_context(ctx)
    outside = tmp_path / "build" / "app.Dockerfile"
    outside.parent.mkdir()
    outside.write_text("FROM scratch\nCOPY . /ctx/\n")
    req = BuildRequest(ctx, outside, [parse("linux/amd64")])
    plain = snapshot_of(req)
    plain_label = context_digest(req)
    ignore = tmp_path / "build" / "app.Dockerfile.dockerignore"
    ignore.write_text("nothing-matches-this\n")
    first = snapshot_of(req)
    assert files(first) == files(plain) and first.digest != plain.digest
    assert context_digest(req) != plain_label
    ignore.write_text("secret.env\n")
    os.utime(ignore, ns=(0, 10**18))
    second = snapshot_of(req)
    assert "secret.env" not in files(second) and second.digest != first.digest


def test_ignore_file_lines_parse_like_buildkits():
    """moby/patternmatcher ignorefile.ReadAll: a BOM dropped, '#' at the very start is a
    comment, everything else trimmed, CRLF line ends."""
    from archfleet.context import ignore_patterns

    data = b"\xef\xbb\xbf# comment\r\nsecret.env \r\n\r\n  #not-a-comment\n!keep.env\n\tbuild/\n"
    assert ignore_patterns(data) == ["secret.env", "#not-a-comment", "!keep.env", "build/"]
    assert ignore_patterns("caf\xe9.txt\n".encode("latin-1")) == ["caf\udce9.txt"]


def test_a_sync_ships_the_ignore_file_it_applied_and_never_the_excluded_file(tmp_path, monkeypatch):
    """Through the real node-side scripts (sh and tar here): the tree lacks secret.env, no blob
    holds its bytes, and the node's Dockerfile has the applied ignore file beside it under the
    name BuildKit looks for (Dockerfile.dockerignore)."""
    import asyncio
    import hashlib

    from archfleet.context import CACHE, sync_context
    from archfleet.transport import LocalTransport

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    ctx = tmp_path / "ctx"
    df = app_context(ctx, own="secret.env\n", shared="keep.txt\n")
    tree, dockerfile, _ = asyncio.run(sync_context(LocalTransport(), BuildRequest(ctx, df, [parse("linux/amd64")])))
    assert sorted(os.listdir(home / tree)) == [".dockerignore", "app.Dockerfile", "app.Dockerfile.dockerignore",
                                               "keep.txt"]
    assert (home / dockerfile).read_text() == "FROM scratch\nCOPY . /ctx/\n"
    assert (home / (dockerfile + ".dockerignore")).read_text() == "secret.env\n"
    secret_sha = hashlib.sha256((ctx / "secret.env").read_bytes()).hexdigest()
    assert not [b for b in os.listdir(home / CACHE / "blobs") if b.startswith(secret_sha)]


def test_file_names_that_are_not_utf8_snapshot_hash_and_sync_as_their_bytes(tmp_path, monkeypatch):
    """Names are bytes on Linux: b'caf\\xe9.txt' (Latin-1) is hashed as os.fsencode gives it, the
    history key and the label work, and the node's tree holds the very same bytes."""
    import asyncio

    from archfleet.context import sync_context
    from archfleet.history import context_key, project_key
    from archfleet.nodebuild import context_digest
    from archfleet.transport import LocalTransport

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    raw = os.fsencode(ctx)
    with open(raw + b"/caf\xe9.txt", "wb") as f:
        f.write(b"latin-1 name\n")
    os.mkdir(raw + b"/d\xff")
    os.symlink(b"../caf\xe9.txt", raw + b"/d\xff/link")
    req = BuildRequest(ctx, ctx / "Dockerfile", [parse("linux/amd64")])
    snap = snapshot_of(req)
    assert {os.fsencode(e.path) for e in snap.entries} == {b"Dockerfile", b"caf\xe9.txt", b"d\xff", b"d\xff/link"}
    assert len(context_key(req)[0]) == 32 and len(project_key(req)) == 32 and len(context_digest(req)) == 64
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    tree, _, _ = asyncio.run(sync_context(LocalTransport(), req))
    node_tree = os.fsencode(home / tree)
    assert sorted(os.listdir(node_tree)) == [b"Dockerfile", b"caf\xe9.txt", b"d\xff"]
    assert open(node_tree + b"/caf\xe9.txt", "rb").read() == b"latin-1 name\n"
    assert os.readlink(node_tree + b"/d\xff/link") == b"../caf\xe9.txt"


def test_file_names_that_are_not_utf8_in_the_digest_are_distinct(tmp_path):
    """Two names that differ only in a non-UTF-8 byte are two contexts."""
    from archfleet.context import snapshot

    digests = set()
    for i, name in enumerate((b"a\xe9", b"a\xe8")):
        ctx = tmp_path / str(i)
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM scratch\n")
        open(os.fsencode(ctx) + b"/" + name, "wb").close()
        digests.add(snapshot(ctx, ctx / "Dockerfile").digest)
    assert len(digests) == 2


def test_platforms_asking_at_once_share_one_hash(tmp_path, monkeypatch):
    """Five platforms start together: the context is hashed once, not five times in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from archfleet import context

    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "big").write_bytes(b"x" * 100_000)
    calls = []
    real = context.snapshot
    monkeypatch.setattr(context, "snapshot", lambda *a: calls.append(1) or real(*a))
    req = request(tmp_path)
    with ThreadPoolExecutor(5) as pool:
        snaps = list(pool.map(lambda _: snapshot_of(req), range(5)))
    assert len(calls) == 1 and all(s is snaps[0] for s in snaps)


def test_an_ignore_file_that_is_not_a_regular_file_is_refused_before_anything_runs(tmp_path, capsys):
    """Rule (context.ignore_file): BuildKit reads the ignore file that applies; a FIFO nobody
    writes hung the build for ever (the fresh-user helper; plan said nothing), so the CLI
    refuses it with one line naming it, exit 2, before probing or building."""
    from archfleet import cli

    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    os.mkfifo(tmp_path / ".dockerignore")
    for command in ("plan", "build"):
        assert cli.main([command, "--platform", "linux/amd64", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err == (f"archfleet: error: ignore file {tmp_path}/.dockerignore: not a regular file (a FIFO, a "
                       "device or a directory; BuildKit would read it and could wait forever): make it a file or "
                       "remove it\n")


def test_without_ignore_patterns_every_path_is_in_as_docker_pys_walk_lists_them_and_docker_py_stays_unloaded(tmp_path):
    """Rule (moby's ignore rule excludes nothing without patterns): the same paths as
    docker-py's ``exclude_paths`` (a link to a directory listed, not entered; empty directories
    and dangling links listed), found without importing docker-py (issue 17: ~45 ms a build)."""
    import subprocess
    import sys

    import docker.utils.build

    root = tmp_path / "ctx"
    (root / "src" / "deep" / "er").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "src" / "deep" / "er" / "f").write_text("x")
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "linkdir").symlink_to("src")
    (root / "linkfile").symlink_to("Dockerfile")
    (root / "dangling").symlink_to("nowhere")
    want = sorted(docker.utils.build.exclude_paths(str(root), [], dockerfile="Dockerfile"))
    assert ctx.included(root, root / "Dockerfile", []) == want
    assert "linkdir" in want and not any(p.startswith("linkdir/") for p in want)
    code = ("import sys; from pathlib import Path; from archfleet import context as c; "
            f"c.included(Path({str(root)!r}), Path({str(root / 'Dockerfile')!r}), []); print('docker' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
