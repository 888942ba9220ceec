import os
from pathlib import Path

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
