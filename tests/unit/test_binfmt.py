"""binfmt_misc handlers, against a scratch directory laid out like /proc/sys/fs/binfmt_misc
(``register``, ``status`` and one file per entry); the machine's real handlers are never touched."""

from pathlib import Path

import pytest

from archfleet import binfmt as bf
from archfleet import cli, doctor
from archfleet.binfmt import emulated_platforms, parse_entry
from archfleet.model import NodeFacts, NodeSpec
from archfleet.pipeline import Planned, unplannable_reason
from archfleet.planner import Plan
from archfleet.platforms import parse

S390X_CONF = (":qemu-s390x:M::\\x7f\\x45\\x4c\\x46\\x02\\x02\\x01:\\xff\\xff\\xff\\xff\\xff\\xff\\xff:"
              "/usr/libexec/qemu-binfmt/s390x-binfmt-P:OPF\n")
ARM64_CONF = ":qemu-aarch64:M::\\x7fELF\\x02:\\xff\\xff\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OP\n"


def entry(flags: str, enabled: bool = True, name: str = "s390x") -> str:
    return (f"{'enabled' if enabled else 'disabled'}\ninterpreter /usr/libexec/qemu-binfmt/{name}-binfmt-P\n"
            f"flags: {flags}\noffset 0\nmagic 7f454c46\n")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A fake binfmt_misc mount and binfmt.d, wired into the CLI through the module attributes."""
    mount, confs = tmp_path / "binfmt_misc", tmp_path / "binfmt.d"
    mount.mkdir(), confs.mkdir()
    (mount / "register").write_text("")
    (mount / "status").write_text("enabled\n")
    (confs / "qemu-s390x.conf").write_text(S390X_CONF)
    (confs / "qemu-aarch64.conf").write_text(ARM64_CONF)
    monkeypatch.setattr(bf, "MOUNT", mount)
    monkeypatch.setattr(bf, "CONF_DIRS", (confs,))
    return mount


def run_cli(capsys, *args):
    code = cli.main(["binfmt", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_entry_and_platforms():
    text = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: OPF\noffset 0\nmagic 7f454c46\n"
    h = parse_entry("qemu-aarch64", text)
    assert h.enabled and h.flags == "OPF" and h.usable_in_containers and h.problem is None
    assert [str(p) for p in h.platforms] == ["linux/arm64"]


def test_handler_without_fix_binary_is_not_counted_and_says_why():
    h = parse_entry("qemu-s390x", entry("OP"))
    assert not h.usable_in_containers
    assert emulated_platforms([h]) == ()
    assert h.problem == ("qemu-s390x is registered without the fix-binary flag F, so it cannot start programs "
                         "inside containers (RUN steps fail)")
    assert bf.unusable([h]) == ((parse("linux/s390x"), h.problem),)


def test_disabled_handler_is_not_counted():
    h = parse_entry("qemu-arm", "disabled\ninterpreter /x\nflags: F\n")
    assert emulated_platforms([h]) == ()
    assert h.problem == "qemu-arm is registered but disabled"


def test_register_re_registers_a_handler_without_F(scratch, tmp_path):
    """The kernel cannot change an entry's flags: remove it (-1), then register the conf line with F."""
    (scratch / "qemu-s390x").write_text(entry("OP"))
    conf = tmp_path / "binfmt.d" / "qemu-s390x.conf"
    assert bf.register(conf, scratch) == "re-registered"
    assert (scratch / "qemu-s390x").read_text() == "-1"
    assert (scratch / "register").read_text() == S390X_CONF.strip()  # its flags OPF kept


def test_register_leaves_a_usable_handler_and_adds_F_to_new_ones(scratch, tmp_path):
    (scratch / "qemu-s390x").write_text(entry("POF"))
    assert bf.register(tmp_path / "binfmt.d" / "qemu-s390x.conf", scratch) == "present"
    assert (scratch / "register").read_text() == ""
    assert bf.register(tmp_path / "binfmt.d" / "qemu-aarch64.conf", scratch) == "installed"
    assert (scratch / "register").read_text().endswith(":OPF")  # the conf said OP: F is added


def test_cli_marks_and_reinstalls_a_handler_without_F(scratch, capsys):
    """Case 05: `binfmt` marks the handler, `binfmt --install` re-registers it with F (not 'present')."""
    (scratch / "qemu-s390x").write_text(entry("OP"))
    code, out, _ = run_cli(capsys)
    assert code == 0
    assert out.strip() == ("qemu-s390x: enabled flags=OP -> linux/s390x (not usable in containers: no F flag; "
                           "`archfleet binfmt --install linux/s390x` re-registers it with F)")
    code, out, _ = run_cli(capsys, "--install", "linux/s390x")
    assert (code, out.strip()) == (0, "re-registered: qemu-s390x (now with the fix-binary flag F)")
    assert (scratch / "register").read_text().endswith(":OPF")


def test_cli_uninstall_without_permission_is_one_line(scratch, capsys, monkeypatch):
    """Finding 27: a refused unregister is an environment problem (exit 3), not an internal error."""
    def refuse(name, mount):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(bf, "unregister", refuse)
    code, out, err = run_cli(capsys, "--uninstall", "linux/arm64")
    assert code == 3
    assert err == "archfleet: error: cannot unregister qemu-aarch64: Permission denied; run as root\n"


def test_unregister_reports_os_errors(scratch):
    (scratch / "qemu-aarch64").mkdir()  # writing "-1" fails even for root
    with pytest.raises(OSError):
        bf.unregister("qemu-aarch64", scratch)
    assert bf.unregister("qemu-nothere", scratch) is False


def test_cli_refuses_platforms_no_qemu_handler_emulates(scratch, capsys):
    """qemu-x86_64 is claimed for linux/amd64 only: installing it would not make amd64/v3 buildable."""
    code, _, err = run_cli(capsys, "--install", "linux/amd64/v3")
    assert code == 2
    assert err == "archfleet: error: --install linux/amd64/v3: QEMU's handlers emulate linux/amd64 only, not the v3 level\n"
    assert (scratch / "register").read_text() == ""


def _planned(facts: NodeFacts) -> Planned:
    return Planned({facts.name: facts}, (), Plan((), (), 0.0, True))


def test_build_error_names_the_missing_F_flag_not_a_missing_handler():
    """Case 05: the unplannable line says the handler lacks F, and the fix it gives is the installer."""
    h = parse_entry("qemu-s390x", entry("OP"))
    facts = NodeFacts(NodeSpec("local"), True, native=(parse("linux/amd64"),), builder="buildkit",
                      emulation_problems=bf.unusable([h]))
    line = unplannable_reason(parse("linux/s390x"), _planned(facts))
    assert "no qemu-s390x handler" not in line
    assert line == ("no node can build linux/s390x (local: qemu-s390x is registered without the fix-binary flag F, "
                    "so it cannot start programs inside containers (RUN steps fail)); run `archfleet binfmt --install "
                    "linux/s390x` as root on this machine: it re-registers the handler with F")


def test_no_binfmt_advice_for_a_level_no_handler_emulates():
    facts = NodeFacts(NodeSpec("local"), True, native=(parse("linux/amd64"),), builder="buildkit")
    line = unplannable_reason(parse("linux/amd64/v3"), _planned(facts))
    assert "binfmt" not in line
    assert line.startswith("no node can build linux/amd64/v3 (local: its CPU does not run linux/amd64/v3 "
                           "(x86-64-v3 needs abm, avx, avx2, bmi1, bmi2, f16c, fma, movbe, xsave)")
    arm = unplannable_reason(parse("linux/arm64"), _planned(facts))
    assert arm.endswith("(local: not native and no qemu-aarch64 handler); run `archfleet binfmt --install linux/arm64`")


def test_doctor_warns_about_handlers_without_F(scratch):
    (scratch / "qemu-s390x").write_text(entry("OP"))
    (scratch / "qemu-aarch64").write_text(entry("OPF", name="aarch64"))
    lines = [c.line() for c in doctor.check_binfmt(scratch)]
    assert lines[-1] == ("warn  binfmt: qemu-s390x is registered without the fix-binary flag F, so it cannot start "
                         "programs inside containers (RUN steps fail) -> run `archfleet binfmt --install linux/s390x` "
                         "as root: it re-registers them with F")
