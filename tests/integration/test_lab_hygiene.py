"""The test suite's own promise about the machine (audit L10): what a test changes machine-wide
is put back exactly, even when the test run is killed half-way (conftest.machine_change)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import conftest
from conftest import BINFMT, REPO, binfmt_handlers, machine_change, recover_machine_changes, restore_binfmt


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_killed_sessions_changes_are_undone_by_the_next_session(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "UNDO_DIR", tmp_path / "undo")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 registry-1.docker.io # archfleet test 1\n")
    placed_dir = tmp_path / "certs.d" / "10.0.0.1:5443"
    placed_dir.mkdir(parents=True)
    (placed_dir / "ca.crt").write_text("a test's CA")
    saved = tmp_path / "mine.crt.saved"
    saved.write_text("the user's own")
    (tmp_path / "undo").mkdir()
    journals = {"line": {"file": str(hosts), "marker": "# archfleet test 1"},
                "path": {"path": str(placed_dir), "saved": None}}
    for kind, data in journals.items():
        (tmp_path / "undo" / f"1-{kind}.json").write_text(json.dumps({"pid": dead_pid(), "kind": kind, "data": data}))
    (tmp_path / "undo" / "2-path.json").write_text(json.dumps(
        {"pid": dead_pid(), "kind": "path", "data": {"path": str(tmp_path / "mine.crt"), "saved": str(saved)}}))
    (tmp_path / "mine.crt").write_text("a test's file over the user's")
    # a journal of a session still running is left alone
    live = {"pid": os.getpid(), "kind": "line", "data": {"file": str(hosts), "marker": "localhost"}}
    (tmp_path / "undo" / "3-line.json").write_text(json.dumps(live))

    assert len(recover_machine_changes()) == 3
    assert hosts.read_text() == "127.0.0.1 localhost\n"
    assert not placed_dir.exists() and (tmp_path / "certs.d").is_dir()
    assert (tmp_path / "mine.crt").read_text() == "the user's own" and not saved.exists()
    assert sorted(p.name for p in (tmp_path / "undo").iterdir()) == ["3-line.json"]


def test_a_change_is_undone_when_the_block_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "UNDO_DIR", tmp_path / "undo")
    target = tmp_path / "etc-docker" / "certs.d" / "h:1" / "ca.crt"
    (tmp_path / "etc-docker").mkdir()
    with pytest.raises(RuntimeError):
        with conftest.placed(target, b"ca"):
            assert target.read_bytes() == b"ca"
            raise RuntimeError("the test failed")
    assert not (tmp_path / "etc-docker" / "certs.d").exists() and list((tmp_path / "undo").iterdir()) == []


@pytest.fixture
def root_and_handlers():
    if os.geteuid() != 0 or not (BINFMT / "qemu-s390x").exists():
        conftest.missing("needs root and the lab's QEMU handlers (qemu-s390x)")


def test_restore_binfmt_puts_back_exactly_what_was_there(root_and_handlers):
    saved = binfmt_handlers()
    with machine_change("binfmt", handlers=saved):
        (BINFMT / "qemu-s390x").write_text("-1")  # removed
        (BINFMT / "qemu-ppc64le").write_text("0")  # disabled
        restore_binfmt(saved)
        assert binfmt_handlers() == saved
        # and a handler that was disabled comes back disabled, one without F without it
        (BINFMT / "qemu-sparc").write_text("0")
        conftest.register_without_f("qemu-riscv64")
        odd = binfmt_handlers()
        assert not odd["qemu-sparc"]["enabled"] and "F" not in odd["qemu-riscv64"]["flags"]
        (BINFMT / "qemu-sparc").write_text("-1")
        (BINFMT / "qemu-riscv64").write_text("-1")
        restore_binfmt(odd)
        assert binfmt_handlers() == odd
    assert binfmt_handlers() == saved  # machine_change put the original back


def test_handlers_removed_by_a_killed_test_run_come_back(root_and_handlers, tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "UNDO_DIR", tmp_path / "undo")
    saved = binfmt_handlers()
    # a test process that removes a handler and dies before its fixture's teardown
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        import conftest
        from pathlib import Path
        conftest.UNDO_DIR = Path({str(tmp_path / "undo")!r})
        with conftest.machine_change("binfmt", handlers=conftest.binfmt_handlers()):
            (conftest.BINFMT / "qemu-s390x").write_text("-1")
            os._exit(9)
    """)
    killed = subprocess.run([sys.executable, "-c", script])
    try:
        assert killed.returncode == 9 and "qemu-s390x" not in binfmt_handlers()
        assert len(recover_machine_changes()) == 1
        assert binfmt_handlers() == saved
    finally:
        restore_binfmt(saved)
