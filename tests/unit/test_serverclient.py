"""archfleet.serverclient in this process, against a stand-in server on a socket of the test's
own: the caller's side of the protocol (the request it sends, what each answer means)."""

from __future__ import annotations

import json
import os
import signal
import sys
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from archfleet import serverclient


class StandIn:
    """A server socket in a private runtime dir that reads one request and says ``answers``."""

    def __init__(self, monkeypatch, answers: bytes):
        self.runtime = Path(tempfile.mkdtemp(prefix="afc-", dir="/tmp"))
        self.runtime.chmod(0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(self.runtime))
        (self.runtime / "archfleet").mkdir(mode=0o700)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(serverclient.socket_path())
        self.listener.listen(1)
        self.answers, self.request, self.fds, self.command = answers, None, [], None
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.listener.accept()
        self.request = json.loads(self.message(conn))
        conn.sendall(self.answers)
        if self.answers.startswith(b"P"):  # the caller then sends argv, environment and fds
            conn.settimeout(5)
            try:
                self.command = json.loads(self.message(conn))
            except (OSError, ValueError):
                pass
        conn.close()

    def message(self, conn) -> bytes:
        import array

        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            msg, anc, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(3 * 4))
            for _level, _kind, payload in anc:
                got = array.array("i")
                got.frombytes(payload)
                self.fds.extend(got)
            if not msg:
                raise ValueError("closed")
            data += msg
        return data[4:]

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.listener.close()
        import shutil

        shutil.rmtree(self.runtime, ignore_errors=True)


@pytest.fixture
def stand_in(monkeypatch):
    made = []

    def make(answers: bytes) -> StandIn:
        made.append(StandIn(monkeypatch, answers))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def keep_handlers():
    saved = {s: signal.getsignal(s) for s in (*serverclient.SIGNALS, signal.SIGTSTP, signal.SIGCONT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_a_command_the_server_ran_ends_with_its_exit_code_and_the_request_is_the_callers(stand_in, keep_handlers,
                                                                                          monkeypatch, tmp_path):
    """Rule: the request carries the working directory and the umask, not the arguments, the
    environment or fds 0-2: those go to the command's process once the server said it
    (``P<pid>``), so the server never holds them; then ``X7``: the command ran, exit 7."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AF_TEST_VALUE", "\udcff-not-utf8")
    server = stand_in(f"P{os.getpid()}\nX7\n".encode())
    assert serverclient.run(["archfleet", "plugins"]) == 7
    server.thread.join(5)
    req = server.request
    assert req["cwd"] == str(tmp_path) and isinstance(req["umask"], int)
    assert "env" not in req and "argv" not in req and "AF_TEST_VALUE" not in json.dumps(req)
    assert server.command["argv"] == ["archfleet", "plugins"]
    assert server.command["env"]["AF_TEST_VALUE"] == "\udcff-not-utf8"
    assert len(server.fds) == 3 and set(req["stdio"]) == {"stdin", "stdout", "stderr"}


def test_an_end_said_before_the_start_is_the_commands_end_not_a_refusal(stand_in, keep_handlers):
    """Rule: ``X`` first (the command said its end before the server said it started) is the
    end: the caller must not run the command a second time."""
    stand_in(b"X3\nP1\nX3\n")
    assert serverclient.run(["archfleet", "plugins"]) == 3


@pytest.mark.parametrize("answers", [b"Fstale: x changed\n", b"", b"P\n"])
def test_a_refusal_or_no_answer_means_the_caller_runs_the_command(answers, stand_in, keep_handlers):
    """Rule: ``F...``, a closed socket or a malformed start: None (run it here)."""
    stand_in(answers)
    assert serverclient.run(["archfleet", "plugins"]) is None


def test_a_server_gone_mid_command_is_one_line_and_70(stand_in, keep_handlers, capsys):
    stand_in(f"P{os.getpid()}\n".encode())
    assert serverclient.run(["archfleet", "plugins"]) == 70
    assert capsys.readouterr().err.startswith("archfleet: error: the archfleet server stopped")


def test_no_runtime_dir_or_no_socket_means_no_server(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert serverclient.run(["archfleet", "plugins"]) is None  # no archfleet/ dir
    (tmp_path / "archfleet").mkdir(mode=0o700)
    assert serverclient.run(["archfleet", "plugins"]) is None  # no socket
    (tmp_path / "archfleet").chmod(0o755)
    assert not serverclient.private_dir(str(tmp_path / "archfleet"))


def test_the_server_is_wanted_unless_switched_off_or_for_the_server_command(monkeypatch):
    monkeypatch.delenv("ARCHFLEET_SERVER", raising=False)
    assert serverclient.wanted(["archfleet", "build"])
    assert not serverclient.wanted(["archfleet", "server", "start"])
    monkeypatch.setenv("ARCHFLEET_SERVER", "0")
    assert not serverclient.wanted(["archfleet", "build"])


def test_ignored_signals_are_said_and_not_forwarded(keep_handlers):
    """Rule: a signal this process ignores (nohup's SIGHUP) is in the request's ``ignored``."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    assert int(signal.SIGHUP) in serverclient.ignored()
    assert int(signal.SIGHUP) in json.loads(serverclient.request()[4:])["ignored"]


def test_the_server_reads_a_request_as_it_comes_and_refuses_what_is_not_one():
    """Rule (archfleet.server._Pending): a request read in pieces is whole only once its length
    is; larger than MAX_REQUEST or not a JSON object: ValueError; a caller that hung up is seen."""
    from archfleet import server

    a, b = socket.socketpair(socket.AF_UNIX)
    b.setblocking(False)
    pending = server._Pending(b, 0)
    body = json.dumps({"argv": ["x"]}).encode()
    a.sendall(len(body).to_bytes(4, "big") + body[:3])
    assert pending.feed() is None
    a.sendall(body[3:])
    assert pending.feed() == {"argv": ["x"]}
    assert not server._hung_up(b)
    a.close()
    assert server._hung_up(b)
    b.close()
    for raw in ((server.MAX_REQUEST + 1).to_bytes(4, "big"), (2).to_bytes(4, "big") + b"[]"):
        a, b = socket.socketpair(socket.AF_UNIX)
        a.sendall(raw)
        with pytest.raises(ValueError):
            server._Pending(b, 0).feed()
        a.close()
        b.close()


def test_a_loaded_file_that_changed_is_named(tmp_path):
    """Rule (archfleet.server.changed): a file whose mtime or size differ, or that is gone."""
    from archfleet import server

    f = tmp_path / "m.py"
    f.write_text("x = 1\n")
    st = f.stat()
    files = {str(f): (st.st_mtime_ns, st.st_size)}
    assert server.changed(files) is None
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert server.changed(files) == str(f)
    f.unlink()
    assert server.changed(files) == str(f)
    assert all(isinstance(v, tuple) for v in server.loaded_files().values())


@pytest.mark.parametrize("value, mode", [(None, "auto"), ("", "auto"), ("auto", "auto"), ("1", "auto"),
                                         ("manual", "manual"), ("0", "off"), ("off", "off"), ("false", "off"),
                                         ("nonsense", "off")])
def test_archfleet_server_says_the_mode_and_anything_unknown_is_off(monkeypatch, value, mode):
    """Rule: unset/auto/1: use and start a server; manual: use one, start none; anything else:
    never use one (a typo keeps commands in their own process)."""
    if value is None:
        monkeypatch.delenv("ARCHFLEET_SERVER", raising=False)
    else:
        monkeypatch.setenv("ARCHFLEET_SERVER", value)
    assert serverclient.mode() == mode
    assert serverclient.starts_one(["archfleet", "build", "."]) == (mode == "auto")


def test_the_context_names_what_a_fork_would_take_from_the_server_and_its_key_names_the_socket(monkeypatch):
    """Rule: the context holds the limits, cgroup, namespaces, ids and interpreter options (one
    line each); the socket's name holds its CRC-32 (8 hex digits), so a change of context is
    another socket."""
    text = serverclient.context()
    names = {line.split(" ", 1)[0] for line in text.splitlines()}
    assert {"ids", "groups", "ns.net", "ns.mnt", "cgroup", "loginuid", "rlimit_nofile", "nice", "affinity",
            "python", "CapEff:", "personality", "sched", "timerslack_ns", "Seccomp_filters:",
            "Cpus_allowed_list:"} <= names
    key = serverclient.context_key(text)
    assert len(key) == 8 and serverclient.socket_path(key).endswith(f"-{key}.sock")
    monkeypatch.setenv("PYTHON_KEYRING_PASSWORD", "not part of it")
    assert serverclient.context_key() == key
    monkeypatch.setenv("PYTHONWARNINGS", "error")
    assert serverclient.context_key() != key


def test_only_a_subcommand_that_ran_starts_a_server(monkeypatch):
    monkeypatch.delenv("ARCHFLEET_SERVER", raising=False)
    assert serverclient.starts_one(["archfleet", "ls"])
    for argv in (["archfleet"], ["archfleet", "--version"], ["archfleet", "ls", "--help"], ["archfleet", "server", "start"]):
        assert not serverclient.starts_one(argv), argv


def test_a_servers_environment_keeps_what_runs_python_and_nothing_else():
    env = {"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", "PYTHONPATH": "x", "AWS_SECRET_ACCESS_KEY": "k",
           "REGISTRY_PASSWORD": "p", "ARCHFLEET_SERVER": "auto", "PYTHON_KEYRING_PASSWORD": "s", "LC_SECRET": "s",
           "LD_AUDIT_TOKEN": "s"}
    assert serverclient.server_env(env) == {"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", "PYTHONPATH": "x"}


def test_a_server_that_does_not_say_it_took_the_command_is_passed_by(keep_handlers, monkeypatch, capsys):
    """Rule: no first line within FIRST_LINE_SECONDS (a stopped server): one warning line and
    None (the command runs here; the environment was never sent, so nothing runs there)."""
    import shutil

    monkeypatch.setattr(serverclient, "FIRST_LINE_SECONDS", 0.3)
    runtime = Path(tempfile.mkdtemp(prefix="afc-", dir="/tmp"))
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    (runtime / "archfleet").mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(serverclient.socket_path())
    listener.listen(1)  # accepted by the kernel, never read: a stopped server
    try:
        assert serverclient.run(["archfleet", "plugins"]) is None
    finally:
        listener.close()
        shutil.rmtree(runtime, ignore_errors=True)
    err = capsys.readouterr().err
    assert err.startswith("archfleet: warning: the archfleet server on ") and "did not answer within 0.3 s" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("orig, options", [
    (["/v/bin/python", "/v/bin/archfleet", "ls"], []),
    (["/v/bin/python", "-X", "dev", "/v/bin/archfleet", "ls"], ["-X", "dev"]),
    (["python3", "-Wd", "-O", "-m", "archfleet", "ls"], ["-Wd", "-O"]),
    (["python3", "-W", "error", "-c", "x"], ["-W", "error"]),
])
def test_a_server_is_started_with_the_interpreter_options_of_its_caller(orig, options):
    """Rule: the options before the script, ``-m`` or ``-c`` (sys.orig_argv), so the server's
    Python flags, part of the context, are its caller's."""
    assert serverclient.interpreter_options(orig, "/v/bin/archfleet") == options


def test_servers_running_are_counted_by_their_held_locks(tmp_path):
    """Rule: a server holds its start lock for its life; a socket whose lock is free is left
    by one that died, and does not count towards MAX_STARTED."""
    import fcntl

    held = os.open(tmp_path / "a.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    (tmp_path / "b.lock").write_text("")
    try:
        assert serverclient.running([str(tmp_path / "a.sock"), str(tmp_path / "b.sock"),
                                     str(tmp_path / "c.sock")]) == 1
    finally:
        os.close(held)


def test_an_untrusted_runtime_dir_is_said(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert serverclient.runtime_problem() is None  # none yet: a server makes it
    (tmp_path / "archfleet").mkdir(mode=0o755)
    (tmp_path / "archfleet").chmod(0o755)
    assert "mode 0700" in serverclient.runtime_problem()


def test_an_environment_too_large_to_send_runs_the_command_here(stand_in, keep_handlers, monkeypatch):
    """Rule: arguments and environment over MAX_MESSAGE as sent (JSON escapes grow non-ASCII
    3-6x): None before the server is asked (the fork would refuse it and end with 70)."""
    server = stand_in(f"P{os.getpid()}\nX0\n".encode())
    monkeypatch.setenv("AF_BIG", "\u00e9" * (serverclient.MAX_MESSAGE // 5))
    assert serverclient.run(["archfleet", "plugins"]) is None
    assert server.request is None


def test_warning_options_are_part_of_the_context(monkeypatch):
    """Rule: ``python -W error`` (sys.warnoptions) is a context of its own, as PYTHONWARNINGS is."""
    key = serverclient.context_key()
    monkeypatch.setattr(sys, "warnoptions", ["error"])
    assert serverclient.context_key() != key


class _Spawned:
    """subprocess.Popen's stand-in for start_in_background: records what would be started."""

    calls: list = []

    def __init__(self, argv, **kw):
        _Spawned.calls.append((argv, kw))
        self.returncode = None


@pytest.fixture
def spawns(monkeypatch, tmp_path):
    import subprocess

    _Spawned.calls = []
    runtime = Path(tempfile.mkdtemp(prefix="afs-", dir="/tmp"))
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("AF_TEST_TOKEN", "not kept")
    monkeypatch.setattr(subprocess, "Popen", _Spawned)
    monkeypatch.setattr(serverclient, "_asked_key", None)
    yield runtime
    import shutil

    shutil.rmtree(runtime, ignore_errors=True)


def test_a_server_is_started_for_the_callers_key_with_a_scrubbed_environment_in_its_own_session(spawns):
    """Rule (start_in_background): ``python [options] -m archfleet.server --idle 900 --context
    KEY``, the key of the context the command had, its own session, cwd /, the log beside the
    socket, an environment of SERVER_ENV's names only; nothing while MAX_STARTED run."""
    serverclient.start_in_background()
    (argv, kw), = _Spawned.calls
    key = serverclient.context_key()
    assert argv[-5:] == ["archfleet.server", "--idle", "900", "--context", key] and argv[0] == sys.executable
    assert kw["start_new_session"] and kw["cwd"] == "/" and "AF_TEST_TOKEN" not in kw["env"]
    assert (spawns / "archfleet" / f"server-{serverclient.install_key()}-{key}.log").exists()


def test_no_server_is_started_beyond_max_started_or_under_an_io_priority(spawns, monkeypatch):
    from archfleet import server

    monkeypatch.setattr(serverclient, "running", lambda paths: serverclient.MAX_STARTED)
    serverclient.start_in_background()
    monkeypatch.setattr(serverclient, "running", lambda paths: 0)
    monkeypatch.setattr(server, "ioprio", lambda pid: 24583)  # ionice -c3
    serverclient.start_in_background()
    assert _Spawned.calls == []


def test_the_install_key_falls_back_to_the_venvs_link_and_unreadable_proc_files_read_as_dash(monkeypatch, tmp_path):
    """Rule: a base interpreter in a directory this user may not enter (realpath unreadable)
    keys the install by the venv's own link; a /proc file that cannot be read is ``-``."""
    key = serverclient.install_key()
    monkeypatch.setattr(os.path, "realpath", lambda p: str(tmp_path / "gone"))
    assert serverclient.install_key().split("-")[2:] == key.split("-")[2:]
    assert serverclient._read(str(tmp_path / "nothing")) == "-"
