"""The rule: from the moment the tags start moving until the process exits, a Ctrl-C (SIGINT)
never kills archfleet by signal, and the exit code and the lines tell the truth (docs/cli.md,
exit code 130): either the run had finished (exit 0, the digest on stdout, no error line) or
exit 130 with ``interrupted after the index D was pushed to TAG``. Before the tags move, a
Ctrl-C is exit 130 ``interrupted`` and the tag is where it was.

Each case runs ``archfleet build --push`` as the console script does (the function
pyproject.toml names, ``sys.exit`` of its answer) in a fresh interpreter, against the
in-process registry, sending itself ONE SIGINT at one point (tests/unit/sigint_driver.py):
deterministic stand-ins for the tester's Ctrl-C 0.03-0.12 s after ``verifying`` (which died by
SIGINT after printing success, the tag moved)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TAG = "registry.test/app:1"


def run(point: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str | None]:
    """(the process, the digest the tag points at once it exited; None: not moved)."""
    out = tmp_path / "tag.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHFLEET_")}
    # the driver's monkeypatches live in its own process: no server may run (or start for) it
    env.update(ARCHFLEET_SERVER="0", HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, str(HERE / "sigint_driver.py"), point, str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, json.loads(out.read_text()) if out.exists() else None


def said(proc: subprocess.CompletedProcess) -> str:
    return f"rc {proc.returncode}\nstdout: {proc.stdout!r}\nstderr:\n{proc.stderr}"


def test_ctrl_c_before_the_tags_move_is_130_interrupted_and_the_tag_stays(tmp_path):
    proc, tagged = run("verifying", tmp_path)
    assert proc.returncode == 130, said(proc)
    assert proc.stderr.splitlines() == ["archfleet: error: interrupted"], said(proc)
    assert tagged is None and proc.stdout == ""


@pytest.mark.parametrize("point", ["moving", "moved", "task-done", "executor", "metadata"])
def test_ctrl_c_once_the_tags_move_is_130_and_says_the_index_was_pushed(tmp_path, point):
    """While the tags move (held until they have), after they moved while the run goes on, once
    the run's task is done but asyncio.run has not returned (asyncio.Runner raises
    KeyboardInterrupt itself then), while asyncio.run shuts the default executor down, and while
    the CLI writes --metadata-file: exit 130, and the line names the index and the tag."""
    proc, tagged = run(point, tmp_path)
    assert proc.returncode == 130, said(proc)
    assert tagged is not None, said(proc)
    assert proc.stderr.splitlines() == [f"archfleet: error: interrupted after the index {tagged} was pushed to {TAG}"], \
        said(proc)


@pytest.mark.parametrize("point", ["main-returned", "thread-join", "atexit", "teardown"])
def test_ctrl_c_after_the_outcome_was_said_changes_nothing(tmp_path, point):
    """After the command said its outcome (the digest on stdout): when main() returns, while the
    interpreter joins the threads left at exit, in an atexit callback, and while it tears its
    modules down (it has put SIGINT back to the default action by then: the tester's death by
    SIGINT): exit 0, no error line, no traceback."""
    proc, tagged = run(point, tmp_path)
    assert proc.returncode == 0, said(proc)
    assert tagged is not None and proc.stdout == tagged + "\n", said(proc)
    assert proc.stderr == "", said(proc)


def test_the_console_script_is_the_entrypoint_that_keeps_the_rule(monkeypatch):
    """``archfleet`` runs cli.entrypoint (through archfleet.console, which only turns the
    garbage collector off first), not cli.main: only entrypoint keeps SIGINT from killing the
    process while the interpreter exits."""
    import gc
    import tomllib

    from archfleet import cli, console

    scripts = tomllib.loads((HERE.parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["archfleet"] == "archfleet.console:entrypoint"
    seen = []
    monkeypatch.setattr(cli, "entrypoint", lambda: seen.append(gc.isenabled()))
    try:
        console.entrypoint()
    finally:
        gc.enable()
    assert seen == [False]


def test_a_ctrl_c_while_the_modules_load_is_one_line_and_130(monkeypatch, capsys):
    """A Ctrl-C in the first ~80 ms, while archfleet's modules load (before any handler of its
    own), is the same one line and exit 130 as later, not a KeyboardInterrupt traceback (found
    by the fresh-user helper)."""
    import gc
    import sys

    from archfleet import console

    class Pressed:
        def find_spec(self, name, path=None, target=None):
            if name == "archfleet.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "archfleet.cli")
    monkeypatch.setattr(sys, "meta_path", [Pressed(), *sys.meta_path])
    try:
        with pytest.raises(SystemExit) as stopped:
            console.entrypoint()
    finally:
        gc.enable()
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "archfleet: error: interrupted\n"


SPAWNING = """
import asyncio, os, signal, sys, threading
from archfleet import cli
from archfleet.manager import make_hooks
from archfleet.transport import LocalTransport

async def work(session):
    local = LocalTransport()

    async def start_commands():
        while True:
            await local.run(["true"])

    await asyncio.gather(*(start_commands() for _ in range(8)))

def press():
    os.kill(os.getpid(), signal.SIGINT)
    threading.Timer(float(sys.argv[2]), os.kill, (os.getpid(), signal.SIGINT)).start()

threading.Timer(float(sys.argv[1]), press).start()
cli._exit_after_command = True  # as the console script (cli.entrypoint) runs it
try:
    cli._run(make_hooks(load_entrypoints=False), work)
except cli.Interrupted as exc:
    cli._hold_sigint_until_exit()  # as the console script does: a press after the outcome changes nothing
    print(exc)
    sys.exit(130)
"""


@pytest.mark.parametrize("first,gap", [(0.2 + 0.013 * n, gap) for n in range(8) for gap in (0.0005, 0.003)])
def test_a_second_ctrl_c_while_commands_start_ends_the_run_and_never_waits_for_ever(first, gap):
    """Rule: a second Ctrl-C stops the loop between its steps and only once no command is half
    started (archfleet.transport.starting). Raised while asyncio connected a new command's
    pipes, the shutdown cancelled that work and then waited for ever on the command's end (two
    quick Ctrl-Cs into a build hung 1 run in 20-30 under load: found by the fresh-user helper).
    Here eight loops start commands without pause, so a press nearly always lands in a start."""
    proc = subprocess.run([sys.executable, "-c", SPAWNING, str(first), str(gap)], capture_output=True, text=True,
                          timeout=30)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (130, "interrupted", "")
