"""``archfleet server`` (archfleet.server, archfleet.serverclient): a command handed to the
server behaves as it does in its own process, and only a caller of the server's own context is
served. Each test starts its own server in a runtime dir of its own (XDG_RUNTIME_DIR) and stops
it; those of the server's mechanics run with ARCHFLEET_SERVER=manual (no command starts one), the
rest of the suite with ARCHFLEET_SERVER=0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ARCHFLEET = str(Path(sys.executable).with_name("archfleet"))


@pytest.fixture
def server(monkeypatch):
    import shutil
    import tempfile

    runtime = Path(tempfile.mkdtemp(prefix="afs-", dir="/tmp"))  # short: a socket path has 107 bytes
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("ARCHFLEET_SERVER", "manual")
    started = run("server", "start", "--idle", "120")
    assert started.returncode == 0, started.stderr
    yield runtime
    run("server", "stop")
    deadline = time.monotonic() + 10
    while run("server", "status").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(runtime, ignore_errors=True)


def run(*args, env=None, cwd=None, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([ARCHFLEET, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, **kw)


def status() -> dict:
    from archfleet import server as srv

    return srv.ask("status")


def test_a_command_in_the_server_has_the_callers_environment_directory_streams_and_exit_code(server, tmp_path):
    """Rule: the command sees the caller's environment (ARCHFLEET_DISABLE_PLUGINS=qemu: "disabled:
    qemu" on stdout), working directory (a relative --nodes file read from there) and stdio, and
    exits with the command's code (2, one line naming the file and line)."""
    env = dict(os.environ, ARCHFLEET_DISABLE_PLUGINS="qemu")
    listed = run("plugins", env=env)
    assert listed.returncode == 0 and "disabled: qemu" in listed.stdout
    (tmp_path / "mine.toml").write_text("[nodes.x]\nhost = \n")
    bad = run("ls", "--nodes", "mine.toml", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stdout == "" and len(bad.stderr.splitlines()) == 1 and "mine.toml" in bad.stderr
    assert status()["served"] == 2


def test_without_a_server_or_with_archfleet_server_0_the_command_runs_in_its_own_process(server):
    """Rule: ARCHFLEET_SERVER=0 keeps the command in its own process (the server serves none)."""
    done = run("plugins", env=dict(os.environ, ARCHFLEET_SERVER="0"))
    assert done.returncode == 0 and "local" in done.stdout
    assert status()["served"] == 0


def test_a_runtime_dir_others_may_enter_is_not_trusted(server):
    """Rule: the socket's directory must be the user's own with no access for others; when it
    is not, the caller runs the command itself and no server starts there (exit 3, one line)."""
    directory = server / "archfleet"
    directory.chmod(0o755)
    try:
        done = run("plugins")
        assert done.returncode == 0 and status() is None  # not even asked: ask() refuses too
        again = run("server", "start")
        assert again.returncode == 3 and len(again.stderr.splitlines()) == 1 and "0700" in again.stderr
    finally:
        directory.chmod(0o700)
    assert status()["served"] == 0


def test_a_server_whose_files_changed_stops_and_the_caller_runs_the_command(server):
    """Rule: once a file the server loaded changed (an upgrade, an edited checkout), it runs no
    more commands: the caller runs it itself (right output), and the server stops."""
    import archfleet.serverclient as client

    path = client.__file__
    before = os.stat(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    try:
        done = run("plugins")
    finally:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert done.returncode == 0 and "local" in done.stdout
    deadline = time.monotonic() + 10
    while status() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status() is None and not list((server / "archfleet").glob("*.sock"))


@pytest.fixture
def silent_ssh(tmp_path):
    """A TCP port that accepts and never answers (an SSH node that hangs), and a nodes file naming it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    nodes = tmp_path / "nodes.toml"
    nodes.write_text(f'[nodes.hang]\nhost = "127.0.0.1"\nport = {listener.getsockname()[1]}\nuser = "x"\n'
                     f'known_hosts = "{tmp_path / "known_hosts"}"\n')
    yield nodes
    listener.close()
    for conn in held:
        conn.close()


def command_pids(server_pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server_pid:
                out.append(int(entry))
    return out


def wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_ctrl_c_reaches_the_command_which_ends_as_it_would_alone(server, silent_ssh):
    """Rule: a SIGINT the caller gets is raised in the command's process: exit 130 and the one
    line "archfleet: error: interrupted", as without a server."""
    server_pid = status()["pid"]
    proc = subprocess.Popen([ARCHFLEET, "ls", "--no-local", "--nodes", str(silent_ssh)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: command_pids(server_pid)), "the server ran no command"
    time.sleep(0.3)
    proc.send_signal(2)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert err.splitlines()[-1] == "archfleet: error: interrupted"
    assert wait_for(lambda: not command_pids(server_pid))


def test_a_caller_that_dies_ends_its_command_as_a_sigterm_would(server, silent_ssh):
    """Rule: the command does not outlive its caller: the caller's socket closing is a SIGTERM
    to the command (which stops its work and exits), not a command running on unseen."""
    server_pid = status()["pid"]
    proc = subprocess.Popen([ARCHFLEET, "ls", "--no-local", "--nodes", str(silent_ssh)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert wait_for(lambda: command_pids(server_pid)), "the server ran no command"
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=10)
    assert wait_for(lambda: not command_pids(server_pid), 20), "the command outlived its caller"
    assert status()["running"] == 0


def test_a_socket_path_too_long_for_unix_sockets_is_one_line_and_exit_3(tmp_path, monkeypatch):
    """Rule: sun_path holds 107 bytes; a runtime dir that makes the path longer is said, with
    what to do (exit 3, one line), not a traceback in the server's log."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    monkeypatch.delenv("ARCHFLEET_SERVER", raising=False)
    done = run("server", "start")
    assert done.returncode == 3 and len(done.stderr.splitlines()) == 1 and "XDG_RUNTIME_DIR" in done.stderr


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_signal_the_caller_ignores_is_ignored_by_the_command(server, silent_ssh):
    """Rule: ``nohup archfleet ...`` then SIGHUP (the terminal closing) leaves the command
    running, as it would alone: the caller's ignored signals are the command's too."""
    server_pid = status()["pid"]
    proc = subprocess.Popen(["nohup", ARCHFLEET, "ls", "--no-local", "--nodes", str(silent_ssh)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: command_pids(server_pid)), "the server ran no command"
    time.sleep(0.3)
    proc.send_signal(1)
    time.sleep(0.5)
    assert proc.poll() is None and command_pids(server_pid)
    proc.send_signal(2)
    assert proc.wait(timeout=20) == 130


def test_ctrl_z_stops_the_command_and_fg_continues_it(server, silent_ssh):
    """Rule: SIGTSTP to the caller stops the command's process as well as itself (a job the
    shell shows stopped prints nothing); SIGCONT continues both."""
    server_pid = status()["pid"]
    proc = subprocess.Popen([ARCHFLEET, "ls", "--no-local", "--nodes", str(silent_ssh)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert wait_for(lambda: command_pids(server_pid)), "the server ran no command"
    (command,) = command_pids(server_pid)
    time.sleep(0.3)
    proc.send_signal(20)  # SIGTSTP
    assert wait_for(lambda: proc_state(proc.pid) == "T" and proc_state(command) == "T")
    proc.send_signal(18)  # SIGCONT
    assert wait_for(lambda: proc_state(proc.pid) != "T" and proc_state(command) != "T")
    proc.send_signal(2)
    assert proc.wait(timeout=20) == 130


def test_a_caller_with_a_closed_stdout_runs_the_command_itself(server):
    """Rule: the socket would take a closed fd's number and be sent as the command's stdout;
    with one of fds 0-2 closed the command runs in the caller, as without a server (exit 0)."""
    done = subprocess.run(f"{ARCHFLEET} plugins >&-", shell=True, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert status()["served"] == 0


def test_an_uncaught_error_is_a_traceback_and_exit_1_as_python_says_it(server):
    """Rule: ARCHFLEET_DEBUG=1 lets a command's error through to the interpreter, which prints
    its traceback and exits 1; the server's command does the same."""
    env = dict(os.environ, ARCHFLEET_DEBUG="1")
    done = run("build", "--platform", "linux/amd64", "-t", "127.0.0.1:1/x:1", "--push", "/nonexistent-context", env=env)
    alone = run("build", "--platform", "linux/amd64", "-t", "127.0.0.1:1/x:1", "--push", "/nonexistent-context",
                env=dict(env, ARCHFLEET_SERVER="0"))
    assert (done.returncode, done.stderr.splitlines()[0]) == (alone.returncode, alone.stderr.splitlines()[0])
    assert status()["served"] == 1


def test_a_caller_that_sends_nothing_holds_up_no_other_command(server):
    """Rule: requests are read as they come; one connection that sends nothing does not make the
    next command wait (it is dropped after 5 s)."""
    from archfleet import serverclient

    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(serverclient.socket_path())
    try:
        started = time.monotonic()
        assert run("plugins").returncode == 0
        assert time.monotonic() - started < 4
        assert status()["served"] == 1
    finally:
        stuck.close()


def test_ctrl_c_while_the_server_does_not_answer_ends_the_caller(server):
    """Rule: a stopped (SIGSTOP) server never answers; a Ctrl-C then ends the caller with the
    one line and 130, as before a run."""
    server_pid = status()["pid"]
    os.kill(server_pid, 19)  # SIGSTOP
    try:
        proc = subprocess.Popen([ARCHFLEET, "plugins"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        proc.send_signal(2)
        code = proc.wait(timeout=10)
    finally:
        # the request, with the caller's stdout and stderr, waits in the stopped server's socket:
        # the pipes end once it has read and dropped them
        os.kill(server_pid, 18)  # SIGCONT
    out, err = proc.communicate(timeout=20)
    assert (code, out, err) == (130, "", "archfleet: error: interrupted\n")  # and nothing run for it after
    assert status()["served"] == 0


def test_status_of_a_server_that_does_not_answer_says_so(server):
    """Rule: a stopped server is there but silent: ``server status`` says that (exit 3, one
    line naming the log), not that none runs."""
    server_pid = status()["pid"]
    os.kill(server_pid, 19)  # SIGSTOP
    try:
        done = run("server", "status", timeout=30)
    finally:
        os.kill(server_pid, 18)
    assert done.returncode == 3 and len(done.stderr.splitlines()) == 1 and "did not answer" in done.stderr


@pytest.mark.parametrize("idle", ["nan", "inf", "0", "604801", "1e12"])
def test_an_idle_time_out_of_range_is_bad_input(idle, tmp_path, monkeypatch):
    """Rule: --idle is whole seconds, 1 to 7 days (a selector waits at most ~24.8 days; nan
    spun the server); anything else is exit 2 before a server starts."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("ARCHFLEET_SERVER", raising=False)
    done = run("server", "start", "--idle", idle)
    assert done.returncode == 2 and "--idle" in done.stderr and len(done.stderr.splitlines()) == 1


def test_status_and_stop_say_what_runs(server):
    """Rule: ``server status`` exits 0 naming the pid while one runs, 1 once ``server stop``
    stopped it; a second ``server start`` says it is already running."""
    pid = status()["pid"]
    again = run("server", "start")
    assert again.returncode == 0 and "already running" in again.stdout and str(pid) in again.stdout
    up = run("server", "status")
    assert up.returncode == 0 and f"pid {pid}" in up.stdout
    assert run("server", "stop").returncode == 0
    assert wait_for(lambda: run("server", "status").returncode == 1)


def test_a_peer_of_another_uid_is_refused(server):
    """Rule: the server runs requests only from its own uid (SO_PEERCRED). A request from uid
    65534 (nobody), let into the directory for the test, gets the connection closed, no command."""
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    from archfleet import serverclient

    path = serverclient.socket_path()
    directory = server / "archfleet"
    os.chmod(server, 0o711)
    directory.chmod(0o711)
    os.chmod(path, 0o777)
    code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "b=b'{\"control\": \"status\"}'; s.sendall(len(b).to_bytes(4,'big')+b)\n"
            "try: print(repr(s.recv(100)))\nexcept ConnectionResetError: print(repr(b''))")
    try:
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               code, path], capture_output=True, text=True, timeout=30)
    finally:
        directory.chmod(0o700)
        os.chmod(server, 0o700)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "b''"  # closed, nothing said
    assert "refused a request from uid 65534" in Path(srv_log()).read_text()
    assert json.dumps(status())  # still serving


def srv_log() -> str:
    from archfleet import server as srv

    return srv.log_path()


@pytest.fixture
def runtime(monkeypatch):
    """A runtime dir of the test's own and no ARCHFLEET_SERVER (the default: ``auto``); every
    server of this install started there is stopped at the end."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="afa-", dir="/tmp"))
    directory.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(directory))
    monkeypatch.delenv("ARCHFLEET_SERVER", raising=False)
    yield directory
    run("server", "stop", env=dict(os.environ, ARCHFLEET_SERVER="manual"))
    wait_for(lambda: not any(directory.glob("archfleet/*.sock")))
    shutil.rmtree(directory, ignore_errors=True)


def test_by_default_a_command_starts_a_server_as_it_ends_and_the_next_runs_there(runtime):
    """Rule (ARCHFLEET_SERVER unset, as Gradle's and sccache's daemons start): a command that
    found no server runs in its own process, then starts this context's server in the
    background; the next command is served (1 served)."""
    first = run("plugins")
    assert first.returncode == 0 and "local" in first.stdout
    assert wait_for(lambda: status() is not None, 30)
    assert status()["served"] == 0
    second = run("plugins")
    assert second.returncode == 0 and second.stdout == first.stdout
    assert status()["served"] == 1


@pytest.mark.parametrize("how", [("manual", "plugins"), ("0", "plugins"), ("", "--version"), ("", "plugins --help"),
                                 ("", "server status")])
def test_manual_off_help_version_and_server_commands_start_no_server(runtime, how):
    """Rule: only ``auto`` (the default) starts one, and only after a subcommand ran:
    ARCHFLEET_SERVER=manual or 0, ``--version``, ``--help`` and ``server ...`` start none (no
    log, the first thing a start makes, appears)."""
    value, args = how
    env = dict(os.environ, ARCHFLEET_SERVER=value) if value else None
    done = run(*args.split(), env=env)
    assert done.returncode in (0, 1), done.stderr
    assert not list(runtime.glob("archfleet/*.log")) and status() is None


def test_a_caller_of_another_context_is_not_served_by_this_contexts_server(server):
    """Rule: a fork of the server has the server's resource limits, cgroup, namespaces...; a
    caller whose context differs (here: its open-files limit, ``prlimit --nofile``) has another
    socket and runs the command itself (0 served); a request that names another context anyway
    is refused, naming what differs (``rlimit_nofile``)."""
    from archfleet import serverclient

    soft, hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    other = f"{min(soft, 1000) - 1}:{min(hard, 1000) - 1}"
    done = subprocess.run(["prlimit", f"--nofile={other}", ARCHFLEET, "plugins"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "local" in done.stdout
    assert status()["served"] == 0
    text = serverclient.context().replace(f"rlimit_nofile ({soft}, {hard})", "rlimit_nofile (999, 999)")
    assert text != serverclient.context()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(serverclient.socket_path())
    conn.sendall(serverclient.request(text))
    line = conn.recv(4096).decode()
    conn.close()
    assert line.startswith("F") and line.strip().endswith("differs from the server's: rlimit_nofile")
    assert status()["served"] == 0


def test_a_server_whose_context_is_not_its_callers_does_not_serve(tmp_path, monkeypatch):
    """Rule: a server started for a caller (``--context KEY``) whose own context has another key
    (Python options it was not given) would serve no one: exit 3, said in its log."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "archfleet.server", "--idle", "5", "--context", "00000000"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "not its caller's 00000000" in done.stderr
    assert not list(tmp_path.glob("archfleet/*.sock"))


def test_a_server_keeps_none_of_its_starters_credentials_in_its_environment(runtime):
    """Rule: a server outlives the command that started it; its own environment keeps what
    runs Python (PATH, HOME, LANG, PYTHON*...) and nothing else (an API token of the starter's
    is not in /proc/PID/environ), while its commands get their callers' whole environment."""
    env = dict(os.environ, ARCHFLEET_TEST_TOKEN="s3cr3t-token")
    assert run("plugins", env=env).returncode == 0
    assert wait_for(lambda: status() is not None, 30)
    environ = Path(f"/proc/{status()['pid']}/environ").read_bytes()
    assert b"s3cr3t-token" not in environ and b"PATH=" in environ
    served = run("plugins", env=dict(env, ARCHFLEET_DISABLE_PLUGINS="qemu"))
    assert "disabled: qemu" in served.stdout and status()["served"] == 1


@pytest.mark.parametrize("wrapper, differs", [(["setarch", "i686"], "personality"), (["chrt", "--idle", "0"], "sched"),
                                              (["ionice", "-c3"], "ioprio"), (["nice", "-n", "3"], "nice")])
def test_an_execution_domain_scheduling_class_or_io_priority_of_its_own_keeps_a_caller_out(server, wrapper, differs):
    """Rule: a fork would take the server's personality (``setarch i686``: ``uname -m`` says
    i686, so archfleet's default platform is linux/386), scheduling policy, I/O priority and nice
    value; a caller with others is not served (0 served): a socket of its own, or (I/O priority,
    which no file shows) a refusal by the server, and the command runs in its own process."""
    from archfleet import serverclient

    done = subprocess.run([*wrapper, ARCHFLEET, "plugins"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "local" in done.stdout
    assert status()["served"] == 0
    if differs == "ioprio":  # the same context text: the same socket, refused by the server itself
        probe = subprocess.run([*wrapper, sys.executable, "-c", "from archfleet import serverclient as s; "
                                "print(s.socket_path())"], capture_output=True, text=True, timeout=60)
        assert probe.stdout.strip() == serverclient.socket_path()
    if differs == "personality":
        plan = subprocess.run([*wrapper, sys.executable, "-c", "import platform; print(platform.machine())"],
                              capture_output=True, text=True, timeout=60)
        assert plan.stdout.strip() == "i686"


def test_a_stopped_server_is_passed_by_and_holds_no_pipe_of_the_callers(server):
    """Rule: a server that does not say it took the command within FIRST_LINE_SECONDS (10 s;
    SIGSTOP) is passed by: the command runs in its own process, says one warning line, and its
    stdout pipe reaches EOF when it exits (the fds go to the command's process after ``P``, so
    the stopped server holds none; ``x=$(archfleet ...)`` and ``archfleet ... | cmd`` end). Once
    continued, the server runs nothing for it (0 served)."""
    pid = status()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        done = run("plugins", timeout=60)  # capture_output: waits for EOF on the pipes
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert done.returncode == 0 and "local" in done.stdout and took < 30
    assert done.stderr.startswith("archfleet: warning: the archfleet server on ") and len(done.stderr.splitlines()) == 1
    assert wait_for(lambda: status() is not None) and status()["served"] == 0
