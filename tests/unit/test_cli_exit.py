"""cli.main's mapping of outcomes to exit codes and one-line errors (docs/cli.md): an
ArchfleetError's own code, 130 for Ctrl-C (with what could not be stopped, if anything), 70 for a
bug; ARCHFLEET_DEBUG=1 shows the traceback. Every error type archfleet has is in the table (a
test checks), and the real process (``python -m archfleet.cli``) is run too, so "no traceback"
is what the user's terminal shows, not only what ``main`` returns."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest

from archfleet import cli, errors
from archfleet.errors import (Aborted, ArchfleetError, BuildFailed, EnvironmentProblem, InfrastructureError, Interrupted,
                              PlatformsFailed, PluginError, RegistryError, RegistryRefused, RegistryUnreachable, UsageError,
                              VerificationFailed)

from stubs import AMD


def main_raising(monkeypatch, exc):
    def boom(*args, **kwargs):
        raise exc
    monkeypatch.setattr(cli.cli, "main", boom)
    return cli.main([])


@pytest.mark.parametrize("exc, code, line", [
    (UsageError("--tag: 'a@b' is not a tag"), 2, "archfleet: error: --tag: 'a@b' is not a tag"),
    (PlatformsFailed("linux/amd64 failed on native@local: denied", ((AMD, RegistryRefused("denied")),)), 3,
     "archfleet: error: linux/amd64 failed on native@local: denied"),
    (PlatformsFailed("linux/amd64 failed on native@local: build failed: x", ((AMD, BuildFailed("x")),)), 1,
     "archfleet: error: linux/amd64 failed on native@local: build failed: x"),
    (Interrupted("interrupted after the index sha256:ab was pushed to reg/app:1"), 130,
     "archfleet: error: interrupted after the index sha256:ab was pushed to reg/app:1"),
    (KeyboardInterrupt(), 130, "archfleet: error: interrupted"),
    (KeyboardInterrupt("interrupted while the index was being pushed to reg/app:1: the tags may already point at "
                       "the new index"), 130,
     "archfleet: error: interrupted while the index was being pushed to reg/app:1: the tags may already point at "
     "the new index"),
    (RuntimeError("boom"), 70,
     "archfleet: error: internal error: RuntimeError: boom (ARCHFLEET_DEBUG=1 shows the traceback)"),
    (ArchfleetError("something failed"), 1, "archfleet: error: something failed"),
    (EnvironmentProblem("no Docker engine answers at unix:///var/run/docker.sock"), 3,
     "archfleet: error: no Docker engine answers at unix:///var/run/docker.sock"),
    (RegistryRefused("registry reg refused the credentials; run `docker login reg`", 401), 3,
     "archfleet: error: registry reg refused the credentials; run `docker login reg`"),
    (RegistryUnreachable("registry reg:5000 unreachable (https): connection refused"), 3,
     "archfleet: error: registry reg:5000 unreachable (https): connection refused"),
    (BuildFailed("build failed: exit code: 2"), 1, "archfleet: error: build failed: exit code: 2"),
    (VerificationFailed("requested linux/arm64 but the image pushed for it is linux/amd64"), 1,
     "archfleet: error: requested linux/arm64 but the image pushed for it is linux/amd64"),
    (InfrastructureError("n1", "engine gone"), 1, "archfleet: error: node n1: engine gone"),
    (RegistryError("PUT https://reg/v2/app/manifests/1: 400 manifest invalid", 400), 1,
     "archfleet: error: PUT https://reg/v2/app/manifests/1: 400 manifest invalid"),
    (PluginError("plugin 'x' failed in archfleet_offer: ValueError: bad"), 1,
     "archfleet: error: plugin 'x' failed in archfleet_offer: ValueError: bad"),
    (Aborted("linux/arm64 failed"), 1, "archfleet: error: linux/arm64 failed"),
    (PlatformsFailed("every platform failed"), 1, "archfleet: error: every platform failed"),
    (click.exceptions.Abort(), 130, "archfleet: error: interrupted"),
])
def test_exit_code_and_one_line(monkeypatch, capsys, exc, code, line):
    monkeypatch.delenv("ARCHFLEET_DEBUG", raising=False)
    assert main_raising(monkeypatch, exc) == code
    err = capsys.readouterr().err
    assert err.splitlines() == [line] and "Traceback" not in err


def test_every_error_type_has_its_row_in_the_table():
    """A new error class gets its exit code checked here, or this test fails."""
    table = test_exit_code_and_one_line.pytestmark[0].args[1]
    tested = {type(exc) for exc, _, _ in table}
    defined = {v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, ArchfleetError)}
    assert defined - tested == set()


@pytest.mark.parametrize("message", ["first\nsecond", "a\r\nb", "ends with a newline\n"])
def test_a_message_with_line_breaks_is_still_one_line(monkeypatch, capsys, message):
    monkeypatch.delenv("ARCHFLEET_DEBUG", raising=False)
    assert main_raising(monkeypatch, BuildFailed(message)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err == "archfleet: error: " + message.replace("\r", "\\r").replace("\n", "\\n") + "\n"


@pytest.mark.parametrize("argv,line", [
    (["build", "--bogus"], "No such option '--bogus'. Did you mean '--push'? (see archfleet build --help)"),
    (["--bogus"], "No such option '--bogus'. (see archfleet --help)"),
    (["nosuch"], "No such command 'nosuch'. (see archfleet --help)"),
    (["build", "--progress", "fancy"], "Invalid value for '--progress': 'fancy' is not one of 'auto', 'plain', "
                                       "'tty', 'quiet'. (see archfleet build --help)"),
    (["ls", "extra"], "Got unexpected extra argument (extra) (see archfleet ls --help)"),
])
def test_a_command_line_click_refuses_is_exit_2_in_one_line_naming_the_help_to_read(capsys, argv, line):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"archfleet: error: {line}"]


def test_a_command_that_exits_with_a_code_keeps_it(monkeypatch, capsys):
    """doctor ends with sys.exit(3) when a check failed: the code is kept, nothing is added."""
    assert main_raising(monkeypatch, SystemExit(3)) == 3
    assert capsys.readouterr().err == ""


def test_debug_shows_the_traceback_of_an_internal_error(monkeypatch):
    monkeypatch.setenv("ARCHFLEET_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main_raising(monkeypatch, RuntimeError("boom"))


def test_debug_shows_the_traceback_of_an_archfleet_error_after_its_line(monkeypatch, capsys):
    monkeypatch.setenv("ARCHFLEET_DEBUG", "1")
    with pytest.raises(BuildFailed):
        main_raising(monkeypatch, BuildFailed("build failed: x"))
    assert capsys.readouterr().err == "archfleet: error: build failed: x\n"


def build_interrupted(monkeypatch, tmp_path, published: bool) -> int:
    from archfleet import pipeline

    from stubs import CTX

    async def fake_build(hooks, request, config, reporter, session, state=None):
        if published:  # the index PUT answered, then Ctrl-C (history, session end, ...)
            state.index_digest, state.tags = "sha256:" + "ab" * 32, ("127.0.0.1:5000/exec/app:1",)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "build", fake_build)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ARCHFLEET_DEBUG", raising=False)
    return cli.main(["build", "--progress", "plain", "-t", "127.0.0.1:5000/exec/app:1", str(CTX)])


def test_ctrl_c_after_the_index_was_pushed_says_the_tags_moved(monkeypatch, tmp_path, capsys):
    assert build_interrupted(monkeypatch, tmp_path, published=True) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"archfleet: error: interrupted after the index sha256:{'ab' * 32} was pushed to 127.0.0.1:5000/exec/app:1"]


def test_ctrl_c_before_anything_was_published_is_a_plain_interrupt(monkeypatch, tmp_path, capsys):
    assert build_interrupted(monkeypatch, tmp_path, published=False) == 130
    assert capsys.readouterr().err.splitlines() == ["archfleet: error: interrupted"]


def test_debug_adds_no_traceback_to_an_interrupt(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ARCHFLEET_DEBUG", "1")
    assert main_raising(monkeypatch, Interrupted("interrupted")) == 130
    assert capsys.readouterr().err == "archfleet: error: interrupted\n"


# -- the real process: what the terminal shows -------------------------------------------------

RAISING = """
import sys
from archfleet import cli
def boom(*args, **kwargs):
    raise {exc}
cli.cli.main = boom
cli.entrypoint()
"""


def process(exc: str, *, debug: bool = False) -> subprocess.CompletedProcess:
    """archfleet's entry point in a fresh interpreter, its command raising ``exc`` (Python source)."""
    env = {k: v for k, v in os.environ.items() if k != "ARCHFLEET_DEBUG"}
    if debug:
        env["ARCHFLEET_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-c", RAISING.format(exc=exc)], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("exc,code,line", [
    ("RuntimeError('boom')", 70, "archfleet: error: internal error: RuntimeError: boom "
                                 "(ARCHFLEET_DEBUG=1 shows the traceback)"),
    ("KeyboardInterrupt()", 130, "archfleet: error: interrupted"),
    ("__import__('archfleet.errors').errors.EnvironmentProblem('no engine\\nanswers')", 3,
     "archfleet: error: no engine\\nanswers"),
])
def test_the_process_prints_one_line_and_no_traceback(exc, code, line):
    proc = process(exc)
    assert proc.returncode == code
    assert proc.stderr.splitlines() == [line] and proc.stdout == ""


def test_the_process_shows_the_traceback_under_archfleet_debug():
    proc = process("RuntimeError('boom')", debug=True)
    assert proc.returncode == 1  # Python's own exit for an uncaught exception
    assert "Traceback (most recent call last)" in proc.stderr and proc.stderr.rstrip().endswith("RuntimeError: boom")


def test_the_real_command_line_refuses_an_unknown_flag_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "archfleet.cli", "build", "--bogus"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["archfleet: error: No such option '--bogus'. Did you mean '--push'? "
                                        "(see archfleet build --help)"]


CONSOLE = "import sys; from archfleet.console import entrypoint; sys.argv = ['archfleet'] + sys.argv[1:]; entrypoint()"


@pytest.mark.parametrize("argv,line", [
    (["build", "--platform", "linux/bogus", "."], "--platform"),
    (["plan", "--platform", "linux/amd64", "/nonexistent-context"], "does not exist"),
])
def test_bad_input_after_the_ca_store_started_loading_exits_2_every_time(argv, line, tmp_path):
    """Rule: bad input is exit 2 with one line, never a crash. build and plan start loading the
    CA store in a thread at once (registry.prepare_tls); a command that ended right after used
    to exit while OpenSSL was still at work in it, and OpenSSL's exit handler then freed what
    the thread used: exit 139 (SIGSEGV) after the line, 5 runs in 6 (found by the fresh-user
    helper). Through the console script, as a user runs it, several times."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    for _ in range(4):
        proc = subprocess.run([sys.executable, "-c", CONSOLE, *argv], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and line in proc.stderr, proc.stderr


def test_the_console_script_freezes_the_import_graph_and_main_in_process_does_not(monkeypatch):
    """One command per process (cli.entrypoint): what the imports made is moved out of the cyclic
    collector's way (gc.freeze) before the command runs, which took the interpreter's teardown
    from 60-80 ms to ~15 ms of a 1 s build (issue 17). main() called in-process (tests, embedding)
    freezes nothing: frozen objects are never collected. The console script turned the collector
    off while the modules loaded (archfleet.console): the command's run turns it on again."""
    import gc

    from archfleet import cli

    class Hooks:
        async def session_end(self, session):
            pass

    async def work(session):
        return gc.get_freeze_count(), gc.isenabled()

    gc.unfreeze()
    try:
        assert cli._run(Hooks(), work) == (0, True)
        monkeypatch.setattr(cli, "_exit_after_command", True)
        gc.disable()
        frozen, collecting = cli._run(Hooks(), work)
        assert frozen > 0 and collecting
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_ctrl_c_noted_before_a_run_is_raised_when_it_starts_and_nothing_runs():
    """The console script notes a Ctrl-C (archfleet.console.Pressed) rather than letting Python
    raise it wherever the main thread is: raised in an import system callback or a finalizer,
    the KeyboardInterrupt was dropped and the build went on and pushed, exit 0 (1-3 runs in 100
    interrupted ~0.1 s after start; found by the fresh-user helper). The next run raises it
    before it starts: Interrupted (exit 130), the work never called."""
    import signal

    from archfleet import cli
    from archfleet.console import Pressed
    from archfleet.errors import Interrupted

    class Hooks:
        async def session_end(self, session):
            pass

    ran = []

    async def work(session):
        ran.append(True)

    pressed = Pressed()
    before = signal.signal(signal.SIGINT, pressed)
    try:
        pressed(signal.SIGINT, None)  # noted, not raised
        with pytest.raises(Interrupted, match="^interrupted$"):
            cli._run(Hooks(), work)
        assert ran == []
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("more,after", [(True, "noting"), (False, "python's")])
def test_after_a_run_the_ctrl_c_is_noted_only_when_another_run_follows(more, after):
    """Between the build's input check and its run a Ctrl-C is noted for the run to raise;
    after the command's last run Python's own handler is back, for what the command still does
    (writing --metadata-file: a Ctrl-C there is exit 130 and says the tags moved)."""
    import signal

    from archfleet import cli
    from archfleet.console import Pressed

    class Hooks:
        async def session_end(self, session):
            pass

    async def work(session):
        return None

    pressed = Pressed()
    before = signal.signal(signal.SIGINT, pressed)
    try:
        cli._run(Hooks(), work, more=more)
        now = signal.getsignal(signal.SIGINT)
        assert (now is pressed) if after == "noting" else (now is signal.default_int_handler)
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("count,raised", [(0, False), (1, True)])
def test_a_command_without_a_run_raises_a_noted_ctrl_c_and_gives_the_signals_back(count, raised):
    """plugins and binfmt have no run to raise a Ctrl-C the console script noted: they call
    _no_run first, which raises it (Interrupted: exit 130, one line) and puts Python's handlers
    back, so a Ctrl-C during the rest interrupts them (a single one went unheard by `binfmt
    --uninstall`, which went on: found by the fresh-user helper)."""
    import signal

    from archfleet import cli
    from archfleet.console import Pressed
    from archfleet.errors import Interrupted

    pressed = Pressed()
    pressed.count, pressed.signum = count, signal.SIGINT if count else None
    before = signal.signal(signal.SIGINT, pressed)
    before_term = signal.signal(signal.SIGTERM, pressed)
    try:
        if raised:
            with pytest.raises(Interrupted, match="^interrupted$"):
                cli._no_run()
        else:
            cli._no_run()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before)
        signal.signal(signal.SIGTERM, before_term)


@pytest.mark.parametrize("signum,line", [(2, "archfleet: error: interrupted"),
                                          (15, "archfleet: error: terminated (SIGTERM)")])
def test_a_second_ctrl_c_before_a_run_ends_the_process_with_one_line(capsys, signum, line):
    """The second Ctrl-C (or SIGTERM) before a run does not wait: exit 130 with the one line. A
    KeyboardInterrupt raised through click printed an empty line before it (found by the
    fresh-user helper)."""
    from archfleet.console import Pressed

    pressed = Pressed()
    pressed(signum, None)
    with pytest.raises(SystemExit) as ended:
        pressed(signum, None)
    assert ended.value.code == 130
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("tmpdir", ["/nonexistent/dir", "file"])
def test_a_spool_directory_archfleet_cannot_write_in_is_one_line_and_3_before_anything(monkeypatch, tmp_path, capsys,
                                                                                      tmpdir):
    """Rule: the environment is checked before anything is built: a TMPDIR that names no
    writable directory (exports are spooled there) was a plugin's FileNotFoundError, exit 1,
    once the build had ended (found by the fresh-user helper)."""
    from archfleet import pipeline

    from stubs import CTX

    if tmpdir == "file":
        (tmp_path / "file").write_text("x")
        tmpdir = str(tmp_path / "file")
    monkeypatch.setenv("TMPDIR", tmpdir)
    monkeypatch.setattr(pipeline, "probe", lambda *a, **k: pytest.fail("probed before the check"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ARCHFLEET_DEBUG", raising=False)
    code = cli.main(["build", "--push", "-t", "127.0.0.1:5000/exec/app:1", str(CTX)])
    assert code == 3
    assert capsys.readouterr().err.splitlines() == [
        f"archfleet: error: TMPDIR={tmpdir} is not a directory archfleet can write in (image exports are spooled "
        "there): set TMPDIR to one, or unset it to use /var/tmp"]
