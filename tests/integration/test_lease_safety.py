"""End to end (review finding 1): a local user who plants a symlink in the lease root before
root's first build cannot make that build chmod or sweep the directory it points at.

A throwaway system user (``useradd -r``, removed afterwards) makes the lease root world-writable
and links the local engine's lease directory to a "victim" (root's, mode 0755, files an hour
old: old enough for the sweep). Root then builds examples/arch-test for one platform on the
local node and pushes it to 127.0.0.1:5000/fs/. The lease root is a fresh one under /tmp named
through the ARCHFLEET_LEASE_ROOT test hook, so other builds on this machine, which use
/tmp/archfleet-leases, are not disturbed; the code path is the default root's.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import missing

from archfleet.leases import PRIVATE, ROOT_ENV, engine_key
from archfleet.model import NodeSpec


def snapshot(d: Path):
    """Mode, owner and every entry (name, link target or content, mtime) of ``d``."""
    st = d.lstat()
    return (oct(st.st_mode), st.st_uid,
            sorted((p.name, os.readlink(p) if p.is_symlink() else p.read_text(), int(p.lstat().st_mtime))
                   for p in d.iterdir()))


@pytest.fixture
def throwaway_user():
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        missing("needs root and useradd to make a throwaway user")
    name = f"affs{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_a_symlink_planted_in_the_lease_root_leaves_the_victim_untouched(lab, tmp_path, throwaway_user):
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    hour_ago = time.time() - 3600
    for name in ("passwd", "shadow", ".bashrc"):
        (victim / name).write_text(f"{name}\n")
        os.utime(victim / name, (hour_ago, hour_ago))
    before = snapshot(victim)

    root = Path(f"/tmp/archfleet-fs-e2e-{uuid.uuid4().hex[:8]}")
    key = engine_key(NodeSpec("local"))  # predictable: sha256 of the engine address
    xdg = tmp_path / "run"
    xdg.mkdir(mode=0o700)
    try:
        # the attack, as the unprivileged user: mkdir -m 777 ROOT && ln -s VICTIM ROOT/KEY
        subprocess.run(["sh", "-c", 'mkdir -m 777 "$1" && ln -s "$2" "$1/$3"', "sh", str(root), str(victim), key],
                       user=throwaway_user, check=True, capture_output=True)
        planted = snapshot(root)
        nodes = tmp_path / "nodes.toml"
        nodes.write_text("")  # the local node only
        tag = f"{lab.registry}/fs/arch-test:lease-{uuid.uuid4().hex[:8]}"
        proc = lab.archfleet("build", "--progress", "plain", "--nodes", str(nodes), "--platform", "linux/amd64",
                             "--build-arg", f"BASE={lab.base}", "-t", tag, "--push", "examples/arch-test",
                             env={ROOT_ENV: str(root), "XDG_RUNTIME_DIR": str(xdg)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert lab.manifest("fs/arch-test", tag.rsplit(":", 1)[1]).status_code == 200

        assert snapshot(victim) == before  # still 0755, every file there, none rewritten
        assert (root / key).is_symlink() and snapshot(root) == planted  # the attacker's root: not chmod-ed
        assert root.lstat().st_uid != 0
        # the build's lease went to root's private root (and was dropped when the build ended)
        private = xdg / PRIVATE / key
        assert private.is_dir() and stat.S_IMODE(private.stat().st_mode) == 0o700
        assert list(private.iterdir()) == []
    finally:
        if root.is_symlink() or root.is_file():
            root.unlink()
        else:
            shutil.rmtree(root, ignore_errors=True)
