"""`archfleet binfmt` against the kernel's binfmt_misc (docs/cli.md): --install registers
qemu-user-static's handler with the fix-binary flag F, leaves a working one alone, registers
again one that lacks F (a build needing it says so first), skips the machine's own platform,
and --uninstall removes it. Every test restores the handlers exactly as they were
(conftest.emulators_removed)."""

from __future__ import annotations

import platform

import pytest

from conftest import binfmt_handlers, register_without_f
from labtools import ls, one_line_error

S390X = "qemu-s390x"


@pytest.mark.parametrize("emulators_removed", ["linux/s390x"], indirect=True)
def test_install_registers_a_missing_handler_with_f_and_leaves_a_working_one_alone(lab, emulators_removed):
    assert S390X not in binfmt_handlers()
    assert "linux/s390x" not in ls(lab, None)["local"]["emulated"]
    first = lab.archfleet("binfmt", "--install", "linux/s390x", check=True)
    assert first.stdout.splitlines() == [f"installed: {S390X}"]
    handler = binfmt_handlers()[S390X]
    assert handler["enabled"] and "F" in handler["flags"], handler
    assert "linux/s390x" in ls(lab, None)["local"]["emulated"]
    again = lab.archfleet("binfmt", "--install", "linux/s390x", check=True)
    assert again.stdout.splitlines() == [f"present: {S390X}"] and binfmt_handlers()[S390X] == handler


@pytest.mark.parametrize("emulators_removed", ["linux/s390x"], indirect=True)
def test_a_handler_without_f_is_refused_for_builds_and_registered_again_with_f(lab, emulators_removed, tmp_path):
    register_without_f(S390X)  # as a distribution package without F registers it
    shown = lab.archfleet("binfmt", check=True).stdout
    assert any(S390X in l and "no F flag" in l for l in shown.splitlines()), shown
    (tmp_path / "Dockerfile").write_text(f"FROM {lab.base}\nRUN true\n")
    refused = lab.archfleet("build", "--platform", "linux/s390x", str(tmp_path))
    assert refused.returncode == 3
    line = one_line_error(refused)
    assert "without the fix-binary flag F" in line and "archfleet binfmt --install linux/s390x" in line
    fixed = lab.archfleet("binfmt", "--install", "linux/s390x", check=True)
    assert fixed.stdout.splitlines() == [f"re-registered: {S390X} (now with the fix-binary flag F)"]
    assert "F" in binfmt_handlers()[S390X]["flags"]
    assert lab.archfleet("build", "--platform", "linux/s390x", str(tmp_path)).returncode == 0


@pytest.mark.parametrize("emulators_removed", ["linux/s390x"], indirect=True)
def test_install_skips_this_machines_own_platform_and_uninstall_removes(lab, emulators_removed):
    from archfleet.platforms import from_uname

    own = from_uname(platform.machine())
    before = binfmt_handlers()
    proc = lab.archfleet("binfmt", "--install", f"{own},linux/s390x", check=True)
    assert proc.stdout.splitlines() == [f"installed: {S390X}"]  # nothing said or done for {own}
    assert set(binfmt_handlers()) == set(before) | {S390X}
    gone = lab.archfleet("binfmt", "--uninstall", "linux/s390x", check=True)
    assert gone.stdout.splitlines() == [f"removed: {S390X}"] and S390X not in binfmt_handlers()
