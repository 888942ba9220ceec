"""Transports: argv and environment reach a node byte for byte whatever its login shell, a run
that ends early never leaves its process behind, sessions per SSH connection stay under sshd's
MaxSessions, and the engine socket is forwarded to a private Unix socket."""

import asyncio
import os
import random
import shutil
import stat
import subprocess
import time

import pytest

from archfleet import transport as tr
from archfleet.plugins.ssh import KEYS as SSH_KEYS
from archfleet.errors import InfrastructureError
from archfleet.plugins.ssh import transport as sshtr
from archfleet.plugins.ssh.transport import BOOTSTRAP, REMOTE_COMMAND, SSHTransport, frame
from archfleet.transport import LocalTransport, quote_argv

# Values a shell would act on, plus bytes argv can carry but UTF-8 cannot.
HOSTILE = [b"'", b"\\", b";", b"$(touch /tmp/archfleet-pwned)", b"`id`", b"a\nb", b"trailing\n", b"\n\n",
           b"C:\\", b"; touch /tmp/pwned; #", b"\\'", b"!!", b"$HOME", b"%s%b\\c", b"\\0101", b"-n", b"*", b"",
           b" lead", b"tail ", b"\t", b"\r", b"caf\xe9", b"\xff\xfe", "tåg ✓".encode(), b"x" * 10240]

# Prints each argument, then $SECRET, then stdin, as hex (one line each): exact bytes, any byte.
ECHO = ('for a in "$@"; do printf %s "$a" | od -An -v -tx1 | tr -d " \\n"; echo; done; '
        'printf %s "$SECRET" | od -An -v -tx1 | tr -d " \\n"; echo; od -An -v -tx1 | tr -d " \\n"; echo')

LOGIN_SHELLS = ["/bin/sh", "/bin/dash", "/bin/bash", "/usr/bin/fish", "/usr/bin/tcsh", "/usr/bin/csh",
                "/usr/bin/zsh", "/bin/ksh", "/bin/mksh"]


def _decode(out: bytes, n: int) -> tuple[list[bytes], bytes, bytes]:
    lines = out.decode().split("\n")
    values = [bytes.fromhex(l) for l in lines[:n + 2]]
    return values[:n], values[n], values[n + 1]


def test_the_remote_command_is_a_constant_every_login_shell_reads_literally():
    # sshd runs the command string through the user's login shell: it must hold nothing any
    # shell (sh, fish, csh, ...) treats specially inside single quotes.
    for c in "'\\!\n":
        assert c not in BOOTSTRAP
    assert REMOTE_COMMAND == f"exec /bin/sh -c '{BOOTSTRAP}'"


@pytest.mark.parametrize("shell", [s for s in LOGIN_SHELLS if os.path.exists(s)])
def test_hostile_argv_env_and_stdin_arrive_byte_for_byte_through_any_login_shell(shell):
    # exactly what sshd does: <login shell> -c <command string>, the frame and data on stdin
    secret = b"npm_'t\\ok$(en)\n"
    stdin = frame(["/bin/sh", "-c", ECHO, "sh", *HOSTILE], {"SECRET": secret}) + b"REST\x00\xff\n"
    out = subprocess.run([shell, "-c", REMOTE_COMMAND], input=stdin, capture_output=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert out.returncode == 0, out.stderr
    args, env_value, rest = _decode(out.stdout, len(HOSTILE))
    assert args == HOSTILE
    assert env_value == secret
    assert rest == b"REST\x00\xff\n"  # the caller's stdin follows the frame untouched


def test_random_bytes_round_trip_through_the_frame():
    rng = random.Random(11)
    words = [bytes(rng.choice([rng.randrange(1, 256), ord("\n"), ord("\\"), ord("'")]) for _ in range(rng.randrange(0, 40)))
             for _ in range(60)]
    out = subprocess.run(["/bin/sh", "-c", REMOTE_COMMAND], input=frame(["/bin/sh", "-c", ECHO, "sh", *words]),
                         capture_output=True, timeout=60)
    assert _decode(out.stdout, len(words))[0] == words


def test_str_words_with_surrogate_escapes_become_the_bytes_they_stand_for():
    assert frame(["caf\udce9"]) == b"Ab" + b"caf\\0351" + b"\n.\n"
    assert frame(["plain -x=1 'q' \\"]) == b"Ar" + b"plain -x=1 'q' \\" + b"\n.\n"


def test_a_cut_short_frame_runs_nothing():
    whole = frame(["/bin/sh", "-c", "echo ran"])
    out = subprocess.run(["/bin/sh", "-c", REMOTE_COMMAND], input=whole[:-2], capture_output=True, timeout=10)
    assert out.returncode == sshtr.FRAME_ERROR and b"ran" not in out.stdout


def test_frame_refuses_what_no_argv_or_environment_can_hold():
    for bad in (lambda: frame([]), lambda: frame(["a\0b"]), lambda: frame(["x"], {"A B": "1"}),
                lambda: frame(["x"], {"1A": "1"}), lambda: frame(["x"], {"A": "\0"})):
        with pytest.raises(ValueError):
            bad()


def test_quote_argv_is_only_for_showing_commands_and_keeps_words_literal():
    import shlex

    nasty = ["$(touch /tmp/pwned)", "`id`", "a;b", "it's", 'say "hi"', "line\nbreak", "*", ""]
    assert shlex.split(quote_argv(["echo", *nasty])) == ["echo", *nasty]


def test_parse_docker_host_needs_a_port_for_tcp():
    assert tr.parse_docker_host("unix:///var/run/docker.sock") == ("unix", "/var/run/docker.sock", None)
    assert tr.parse_docker_host("tcp://10.0.0.5:2375") == ("tcp", "10.0.0.5", 2375)
    assert tr.parse_docker_host("tcp://[::1]:2376") == ("tcp", "::1", 2376)
    for bad in ("tcp://10.0.0.5", "tcp://10.0.0.5:", "tcp://10.0.0.5:99999", "tcp://:2375", "tcp://h:x",
                "tcp://h:2375/path", "unix://relative", "ssh://h", "http://h:1"):
        with pytest.raises(ValueError):
            tr.parse_docker_host(bad)


# -- the local transport -------------------------------------------------------------------------


def test_local_run_streams_lines_and_returns_status():
    lines = []
    done = asyncio.run(LocalTransport().run(["sh", "-c", 'printf "a\\nb\\r\\nc\\n"; printf err >&2; exit 3'],
                                            on_line=lines.append))
    assert done.returncode == 3
    assert lines == ["a", "b", "c", "err"]


def test_local_run_missing_binary():
    done = asyncio.run(LocalTransport().run(["/nonexistent/cli", "x"]))
    assert done.returncode == 127


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_local_child_is_killed_when_on_line_raises():
    # rule: whatever ends a run early, its process does not outlive it (here: a callback error,
    # e.g. a reporter choking on the build output)
    pids = []

    def on_line(line):
        pids.append(int(line))
        raise RuntimeError("reporter broke")

    with pytest.raises(RuntimeError, match="reporter broke"):
        asyncio.run(LocalTransport().run(["sh", "-c", "echo $$; exec sleep 300"], on_line=on_line))
    assert pids and not _alive(pids[0])


def test_local_child_is_killed_on_timeout_and_on_cancel():
    timed_out, cancelled = [], []

    async def cancel():
        task = asyncio.ensure_future(LocalTransport().run(["sh", "-c", "echo $$; exec sleep 300"],
                                                           on_line=lambda l: cancelled.append(int(l))))
        while not cancelled:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        asyncio.run(LocalTransport().run(["sh", "-c", "echo $$; exec sleep 300"], timeout=0.5,
                                         on_line=lambda l: timed_out.append(int(l))))
    asyncio.run(cancel())
    assert timed_out and cancelled and not _alive(timed_out[0]) and not _alive(cancelled[0])


# -- the SSH transport, against a stand-in for asyncssh ------------------------------------------


class FakeProcess:
    """What asyncssh's SSHClientProcess offers the transport: runs the framed command locally
    through /bin/sh, exactly as the node would, and records signals and closes."""

    def __init__(self, conn, command):
        assert command == REMOTE_COMMAND  # nothing else ever reaches the login shell
        self.conn = conn
        self.signals: list[str] = []
        self.closed = False
        self.exit_status = None
        self.exit_signal = None
        self._ended = False
        self._proc = None
        self._stdin = bytearray()
        self._eof = asyncio.Event()
        self.stdin = self
        self.stdout = self
        self._out = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run())

    # stdin side
    def write(self, data):
        self._stdin += data

    async def drain(self):
        pass

    def write_eof(self):
        self._eof.set()

    # stdout side
    async def read(self, n):
        return await self._out.get()

    async def _run(self):
        await self._eof.wait()
        if self.signals:
            self.exit_status, self.exit_signal = -1, ("KILL", False, "", "")
            await self._out.put(b"")
            return
        self._proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", REMOTE_COMMAND, stdin=asyncio.subprocess.PIPE,
                                                          stdout=asyncio.subprocess.PIPE,
                                                          stderr=asyncio.subprocess.STDOUT)
        if self.signals:  # signalled while it was starting
            self._proc.kill()
        self._proc.stdin.write(bytes(self._stdin))
        self._proc.stdin.close()
        while True:
            chunk = await self._proc.stdout.read(65536)
            await self._out.put(chunk)
            if not chunk:
                break
        code = await self._proc.wait()
        if code < 0:
            self.exit_status, self.exit_signal = -1, ("KILL", False, "", "")
        else:
            self.exit_status = code

    async def wait(self):
        await asyncio.shield(self._task)
        self._end()

    def _end(self):
        if not self._ended:
            self._ended = True
            self.conn.open -= 1

    def send_signal(self, name):
        self.signals.append(name)
        if self._proc and self._proc.returncode is None:
            self._proc.kill()

    def close(self):
        self.closed = True
        self._end()

    async def wait_closed(self):
        # the channel closes once the command has ended and its output was sent (sshd closes it)
        await asyncio.shield(self._task)
        self._end()


class FakeConn:
    """Counts open sessions; refuses a session beyond ``max_sessions`` as sshd does."""

    def __init__(self, max_sessions=10):
        self.max_sessions = max_sessions
        self.open = 0
        self.peak = 0
        self.procs: list[FakeProcess] = []
        self.forwards = []

    async def create_process(self, command, **kw):
        import asyncssh

        assert kw.get("request_pty") is False  # a pty would echo the frame and mangle bytes
        if self.open >= self.max_sessions:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "no more sessions")
        self.open += 1
        self.peak = max(self.peak, self.open)
        proc = FakeProcess(self, command)
        self.procs.append(proc)
        return proc

    async def forward_local_path(self, local, remote):
        self.forwards.append(("path", local, remote))
        return FakeListener()

    async def forward_local_path_to_port(self, local, host, port):
        self.forwards.append(("port", local, host, port))
        return FakeListener()

    async def forward_local_port(self, *a):  # pragma: no cover - must never be used
        raise AssertionError("the engine socket must never be forwarded to a local TCP port")

    def close(self):
        pass

    async def wait_closed(self):
        pass


class FakeListener:
    def close(self):
        pass


def test_ssh_run_passes_argv_and_environment_only_through_the_frame():
    async def go():
        conn = FakeConn()
        t = SSHTransport("n1", conn, docker_host="unix:///run/d.sock")
        lines = []
        done = await t.run(["/bin/sh", "-c", ECHO + '; printf %s "$DOCKER_HOST"', "sh", *HOSTILE[:6]],
                           env={"SECRET": "s3cr3t"}, stdin=b"in", on_line=lines.append)
        return done, lines

    done, lines = asyncio.run(go())
    assert done.ok
    args, secret, rest = _decode("\n".join(lines[:-1]).encode(), 6)
    assert args == HOSTILE[:6] and secret == b"s3cr3t" and rest == b"in"
    assert lines[-1] == "unix:///run/d.sock"
    assert "s3cr3t" not in repr(done)  # the environment is never kept with the result


def test_ssh_run_kills_the_remote_process_when_on_line_raises():
    # rule: any exception while a remote command runs sends it KILL, then closes the channel
    async def go():
        conn = FakeConn()
        t = SSHTransport("n1", conn)

        def boom(line):
            raise ValueError("[/] is not markup")

        with pytest.raises(ValueError):
            await t.run(["sh", "-c", "echo start; exec sleep 300"], on_line=boom)
        return conn.procs[0]

    proc = asyncio.run(go())
    assert proc.signals == ["KILL"] and proc.closed
    assert proc._proc.returncode is not None


def test_ssh_run_kills_the_remote_process_on_timeout_and_on_cancel():
    async def go():
        conn = FakeConn()
        t = SSHTransport("n1", conn)
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await t.run(["sleep", "300"], timeout=0.3)
        task = asyncio.ensure_future(t.run(["sleep", "300"]))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return conn.procs

    procs = asyncio.run(go())
    assert [p.signals for p in procs] == [["KILL"], ["KILL"]] and all(p.closed for p in procs)
    assert all(p._proc is None or p._proc.returncode is not None for p in procs)


def test_ssh_sessions_per_connection_stay_under_sshd_max_sessions():
    # rule: at most 8 sessions per connection (sshd's default MaxSessions is 10); max_builds = 12
    # on one node means 12 sessions wanted at once
    async def go(connect):
        conn = FakeConn(max_sessions=10)
        extra = []

        async def more():
            c = FakeConn(max_sessions=10)
            extra.append(c)
            return c

        t = SSHTransport("n1", conn, connect=more if connect else None)
        started = time.monotonic()
        done = await asyncio.gather(*(t.run(["sleep", "0.3"]) for _ in range(12)))
        return done, conn, extra, time.monotonic() - started

    done, conn, extra, took = asyncio.run(go(connect=True))
    assert all(d.ok for d in done)
    assert conn.peak == SSHTransport.SESSIONS_PER_CONNECTION == 8
    assert len(extra) == 1 and extra[0].peak == 4  # the other 4 on a second connection, at once
    assert took < 0.6 + 1.0
    done, conn, extra, _ = asyncio.run(go(connect=False))
    assert all(d.ok for d in done) and conn.peak == 8  # no way to open more: they queue, none fails


def test_ssh_session_failure_is_an_infrastructure_error():
    async def go():
        conn = FakeConn(max_sessions=0)
        await SSHTransport("n1", conn).run(["true"])

    with pytest.raises(InfrastructureError, match="node n1: SSH connection failed"):
        asyncio.run(go())


@pytest.mark.parametrize("docker_host, kind", [(None, "path"), ("unix:///run/af/docker.sock", "path"),
                                               ("tcp://127.0.0.1:2375", "port")])
def test_engine_socket_is_forwarded_to_a_private_unix_socket(docker_host, kind):
    # rule: never a local TCP port (any local user could reach the node's Engine API, which is
    # root there); a Unix socket in a 0700 directory of ours
    async def go():
        conn = FakeConn()
        t = SSHTransport("n1", conn, docker_host=docker_host)
        await t.open_engine()
        return t, conn

    t, conn = asyncio.run(go())
    (fwd,) = conn.forwards
    assert fwd[0] == kind
    local = fwd[1]
    assert t._local_base_url == f"unix://{local}"
    d = os.path.dirname(local)
    st = os.stat(d)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    if kind == "port":
        assert fwd[2:] == ("127.0.0.1", 2375)
    asyncio.run(t.close())
    assert not os.path.exists(d)


@pytest.mark.parametrize("value", ["tcp://10.0.0.5", "tcp://10.0.0.5:99999", "tcp://:2375", "unix://run/d.sock"])
def test_nodes_toml_rejects_a_docker_host_the_transport_could_not_use(tmp_path, value):
    # checked when nodes.toml is read (exit 2, file:line), not when the node is first connected
    from archfleet.errors import UsageError
    from archfleet.inventory import load_nodes_file

    path = tmp_path / "nodes.toml"
    path.write_text(f'[nodes.n1]\nhost = "h"\ndocker_host = "{value}"\n')
    with pytest.raises(UsageError, match=r"nodes.toml:3: node 'n1' key 'docker_host': expected unix:///absolute/path or "
                                         r"tcp://host:port \(the port is required\)"):
        load_nodes_file(path, {"ssh": SSH_KEYS})
    path.write_text('[nodes.n1]\nhost = "h"\ndocker_host = "tcp://10.0.0.5:2375"\n')
    assert load_nodes_file(path, {"ssh": SSH_KEYS})[0].docker_host == "tcp://10.0.0.5:2375"


def test_an_oserror_from_the_callers_own_code_is_not_a_lost_connection():
    # a reporter writing to a closed pipe, a context file that vanished while being sent: the
    # caller's exception comes back as it was (not InfrastructureError, which would mark the
    # node down and rebuild elsewhere), and the remote process is still killed
    async def go(**kw):
        conn = FakeConn()
        with pytest.raises(OSError) as err:
            await SSHTransport("n1", conn).run(["sh", "-c", "echo x; cat >/dev/null; exec sleep 300"], **kw)
        assert not isinstance(err.value, InfrastructureError)
        return conn.procs[0]

    def broken(line):
        raise BrokenPipeError("stderr closed")

    def vanishing():
        yield b"first"
        raise FileNotFoundError("ctx/file.txt")

    for kw in ({"on_line": broken}, {"stdin": vanishing()}):
        proc = asyncio.run(go(**kw))
        assert proc.signals == ["KILL"] and proc.closed


def test_a_run_cancelled_from_outside_leaves_no_unretrieved_exception():
    """Rule: cancelling a run (a probe cancelled because the registry check failed first) is
    silent: asyncio's handler sees no "exception was never retrieved" from the run's parts, which
    would print a traceback under the command's one error line."""
    import gc

    from archfleet.transport import LocalTransport

    seen = []
    marker = f"7.{os.getpid()}"  # a sleep nobody else runs

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, ctx: seen.append(ctx.get("message")))
        t = LocalTransport()
        for delay in (0.0, 0.05, 0.2):
            task = asyncio.ensure_future(t.run(["sh", "-c", f"echo start; sleep {marker}; :"],
                                               on_line=lambda line: None))
            await asyncio.sleep(delay)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.1)
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(main())
    assert seen == []
    # what the killed shell started went with it (its process group was killed)
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == ["sleep", marker]]
    assert left == []


def _cmdline(pid: str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(w) for w in f.read().split(b"\0") if w]
    except OSError:
        return []


# -- streamed output (an image export) -----------------------------------------------------------


def test_local_stream_hands_stdout_as_bytes_at_the_consumers_pace_and_keeps_stderr_apart():
    """Rule (Transport.stream): stdout arrives byte for byte, in pieces of at most STREAM_PIECE;
    stderr is the result's tail, never part of the bytes; the exit status is returned."""
    data = os.urandom(3 * tr.STREAM_PIECE + 123)
    pieces = []

    async def sink(piece):
        pieces.append(piece)
        await asyncio.sleep(0)

    done = asyncio.run(_stream_from(data, sink))
    assert b"".join(pieces) == data and max(map(len, pieces)) <= tr.STREAM_PIECE
    assert done.returncode == 4 and done.tail == ("a warning",)
    assert asyncio.run(LocalTransport().stream(["/nonexistent/cli"], sink)).returncode == 127


async def _stream_from(data: bytes, sink):
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        return await LocalTransport().stream(["sh", "-c", 'cat "$1"; echo "a warning" >&2; exit 4', "sh", f.name],
                                             sink)


def test_a_stream_closed_early_or_failing_kills_its_command_and_says_why():
    """Rule: a consumer that stops reading (an export abandoned) leaves no process behind; a
    command that ends non-zero raises OutputFailed after the bytes it wrote, naming its stderr;
    a sink that raises ends the run with its own exception."""
    pids = []

    async def first_piece_only():
        it = tr.stream_output(LocalTransport(), ["sh", "-c", 'echo $$; exec yes'])
        async for piece in it:
            pids.append(int(piece.split(b"\n", 1)[0]))
            break
        await it.aclose()

    asyncio.run(first_piece_only())
    deadline = time.time() + 5
    while _alive(pids[0]) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(pids[0])

    async def failing():
        argv = ["sh", "-c", 'printf part; echo "no such image" >&2; exit 1']
        return [p async for p in tr.stream_output(LocalTransport(), argv)]

    with pytest.raises(tr.OutputFailed, match="no such image") as failed:
        asyncio.run(failing())
    assert failed.value.done.returncode == 1

    async def broken_sink(piece):
        raise RuntimeError("spool disk full")

    with pytest.raises(RuntimeError, match="spool disk full"):
        asyncio.run(LocalTransport().stream(["sh", "-c", "echo $$; exec yes"], broken_sink))


def test_a_stream_abandoned_with_unread_output_leaves_no_pipe_for_the_garbage_collector():
    """Rule: an export whose reader stops before the command's last bytes (a tar read to its end
    marker, docker save's padding unread) leaves no asyncio pipe open after the run: closed by
    the garbage collector once the loop is gone, it printed 'Event loop is closed' tracebacks
    after a Ctrl-C's one line (seen in CI)."""
    _ends_clean(
        "import asyncio, gc, time\n"
        "from archfleet.transport import LocalTransport, stream_output\n"
        "async def main():\n"
        "    it = stream_output(LocalTransport(), ['sh', '-c', 'head -c 20000000 /dev/zero'])\n"
        "    async for _ in it:\n"
        "        break\n"
        "    t = time.monotonic()\n"
        "    await it.aclose()\n"
        "    assert time.monotonic() - t < 3, 'the abandoned command took the 5 s timeout to end'\n"
        "asyncio.run(main())\n"
        "gc.collect()\n")


def _ends_clean(code: str) -> None:
    """``code`` run in a Python of its own (as the CLI ends: the loop closed, the collector
    run at exit) exits 0 having printed nothing on stderr."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code + "print('ok')\n"], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")


def test_a_stopped_commands_end_is_awaited_through_a_second_cancel_then_that_cancel_is_raised():
    """Rule (tr.reap): asyncio.gather ends on its first cancelled child and asyncio.run then
    cancels the others while they still reap their killed commands; a command reaped after the
    loop closed printed 'Event loop is closed' tracebacks under a registry error's one line
    (CI). The end is awaited through that second cancel, which is raised afterwards; a timeout
    ends the wait quietly."""
    order = []

    async def ending():
        await asyncio.sleep(0.2)
        order.append("reaped")

    async def stopping():
        try:
            await tr.reap(ending)
        except asyncio.CancelledError:
            order.append("cancel raised")
            raise

    async def main():
        task = asyncio.ensure_future(stopping())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        await tr.reap(lambda: asyncio.sleep(10), timeout=0.1)  # a command that never ends: given up on
        return time.monotonic() - started

    assert asyncio.run(main()) < 1
    assert order == ["reaped", "cancel raised"]


def test_a_gather_of_runs_cancelled_leaves_no_process_for_after_the_loop():
    """The same rule end to end: runs gathered (as the probe gathers a node's CLIs), the gather
    cancelled, then asyncio.run's own cancel of what is left: no process outlives the loop, and
    nothing is printed after it (a subprocess, as the CLI ends)."""
    _ends_clean(
        "import asyncio\n"
        "from archfleet.transport import LocalTransport\n"
        "async def main():\n"
        "    t = LocalTransport()\n"
        "    runs = asyncio.gather(*(t.run(['sh', '-c', 'sleep 5']) for _ in range(6)))\n"
        "    await asyncio.sleep(0.3)\n"
        "    runs.cancel()\n"
        "    try:\n"
        "        await runs\n"
        "    except asyncio.CancelledError:\n"
        "        pass\n"
        "for _ in range(5):\n"
        "    asyncio.run(main())\n")
