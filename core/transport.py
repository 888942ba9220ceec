"""Run argv lists on a node and stream their output.

Commands are always argv lists, and an environment to add is always a mapping: no caller ever
writes a command line. The local transport hands both to the OS as they are (``execve``, no
shell). The SSH transport cannot: sshd runs the command string it is given through the login
shell of the node's user, whatever that is (sh, bash, dash, zsh, ksh, fish, csh, tcsh), and
those shells disagree on quoting (in fish ``\\'`` inside single quotes is a quote; csh expands
``!`` in them). So no user value ever travels in that string:

- The string is one constant, :data:`REMOTE_COMMAND`: ``exec /bin/sh -c '<bootstrap>'``, where
  the bootstrap holds no ``'``, ``\\``, ``!`` or newline, so every one of those shells passes it
  to ``/bin/sh`` literally.
- Every argv word and environment value travels on the channel's stdin, ahead of the caller's
  own stdin, framed by :func:`frame` (the one place anything is encoded for a node): one line
  per item, ``A`` (argv word) or ``E`` (``NAME=value``), then ``r`` and the bytes as they are
  when they are all printable ASCII, else ``b`` and the bytes with every other byte (and ``\\``)
  written as a ``\\0ooo`` octal escape; a line ``.`` ends the frame. The bootstrap reads it with
  ``IFS= read -r`` (which reads a pipe byte by byte in dash, bash and busybox, so the caller's
  stdin stays in place for the command), decodes ``b`` items with ``printf %b`` plus a trailing
  sentinel (so trailing newlines survive), ``export``\\ s the environment and ``exec``\\ s the argv.
  A frame that does not end with ``.`` runs nothing (exit 125).
- So the node's process list shows the constant (the shell) and then the command's own argv;
  environment values (``DOCKER_HOST``, build args from the environment) are in no argv.

Ending a run: whatever ends it early (a timeout, a cancel, an exception raised by ``on_line``,
a lost connection), the process is killed before ``run`` returns or raises: locally with
SIGKILL, over SSH with a ``signal`` request (``KILL``; OpenSSH >= 7.9 delivers it to the
session's process group, so ``exec`` keeps the command in it) and then the channel is closed,
so a quiet remote build cannot outlive its run (and its lease).

Sessions: OpenSSH's sshd allows ``MaxSessions`` (default 10) sessions per connection. One SSH
transport keeps at most :attr:`SSHTransport.SESSIONS_PER_CONNECTION` (8) sessions open on a
connection and opens another connection to the node (same options, same host-key check) when
more are wanted, up to :attr:`SSHTransport.MAX_CONNECTIONS`; beyond that, runs wait for a free
session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shlex
import signal
import tempfile
from typing import Awaitable, Callable, Iterable, Mapping, Protocol, Sequence
from urllib.parse import urlsplit

import attrs

LineCallback = Callable[[str], None]

# The fixed script every SSH command runs (see the module doc). It must stay free of ' \ ! and
# newlines (a unit test checks), and user data must only ever be read from stdin by it.
BOOTSTRAP = (
    'set --; ok=; while IFS= read -r l; do case $l in .) ok=1; break;; ?r*) v=${l#??};; '
    '?b*) v=$(printf %bx "${l#??}"); v=${v%x};; *) break;; esac; '
    'case $l in A*) set -- "$@" "$v";; E*) export "$v";; *) break;; esac; done; '
    '[ -n "$ok" ] || { echo "archfleet: the command frame on stdin was cut short" >&2; exit 125; }; exec "$@"'
)
REMOTE_COMMAND = f"exec /bin/sh -c '{BOOTSTRAP}'"
FRAME_ERROR = 125  # the bootstrap's exit status when the frame did not arrive whole

_ENV_NAME = re.compile(rb"^[A-Za-z_][A-Za-z0-9_]*$")


@attrs.frozen
class Completed:
    """How a command ended: exit status and the last lines it printed (stdout and stderr).

    ``argv`` is the command as asked for; the environment it ran with is never kept here."""

    argv: tuple[str, ...]
    returncode: int
    tail: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_line(self) -> str:
        for line in reversed(self.tail):
            if line.strip():
                return line.strip()
        return f"exit status {self.returncode}"


class Transport(Protocol):
    """What a transport plugin's ``archfleet_connect`` returns.

    ``run`` runs ``argv`` (a list of words, never a command line) with ``env`` added to the
    node's environment (never put in any argv), ``stdin`` (bytes or an iterable of byte chunks)
    as its standard input, each output line (stdout and stderr, decoded as UTF-8 with
    replacement) passed to ``on_line``; ``timeout`` in seconds. The process is killed if the
    run ends any other way than by the process exiting (a timeout, a cancel, an exception)."""

    node: str

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_line: LineCallback | None = None,
        timeout: float | None = None,
    ) -> Completed: ...

    def docker_client(self):  # -> docker.DockerClient (blocking calls: use a thread)
        ...

    async def close(self) -> None: ...

    async def prepare_context(self, request, reporter=None) -> tuple[str, str]:
        """Make the build context and Dockerfile readable on the node; return their paths there."""
        ...


def _chunks(data) -> Iterable[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [bytes(data)] if data else []
    return data


def _word(value: str | bytes) -> bytes:
    """An argv word or env value as the bytes the node should receive (str: UTF-8, with
    surrogate escapes turned back into the bytes they stand for, as ``os.fsencode`` does)."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


def _item(kind: bytes, value: bytes) -> bytes:
    if all(0x20 <= b <= 0x7E for b in value):
        return kind + b"r" + value + b"\n"
    out = bytearray(kind + b"b")
    for b in value:
        if 0x20 <= b <= 0x7E and b != 0x5C:
            out.append(b)
        else:
            out += b"\\0%03o" % b  # printf %b: \0 and up to three octal digits
    return bytes(out) + b"\n"


def frame(argv: Sequence[str | bytes], env: Mapping[str, str | bytes] | None = None) -> bytes:
    """The stdin header :data:`BOOTSTRAP` turns back into ``env`` and ``argv``, byte for byte.

    Raises ``ValueError`` for an empty argv, a NUL byte (no argv word or environment value can
    hold one) or an environment name that is not ``[A-Za-z_][A-Za-z0-9_]*``."""
    if not argv:
        raise ValueError("empty argv")
    out = []
    for name, value in (env or {}).items():
        key = _word(name)
        if not _ENV_NAME.match(key):
            raise ValueError(f"not an environment variable name: {name!r}")
        data = _word(value)
        if b"\0" in data:
            raise ValueError(f"environment value of {name} holds a NUL byte")
        out.append(_item(b"E", key + b"=" + data))
    for word in argv:
        data = _word(word)
        if b"\0" in data:
            raise ValueError("an argv word holds a NUL byte")
        out.append(_item(b"A", data))
    out.append(b".\n")
    return b"".join(out)


def quote_argv(argv: Sequence[str]) -> str:
    """An argv list as POSIX sh would read it, for *showing* a command to a person (messages,
    docs). Nothing archfleet runs is ever built this way: remote commands go through
    :func:`frame`."""
    return shlex.join([str(a) for a in argv])


def parse_docker_host(value: str) -> tuple[str, str, int | None]:
    """``unix:///path`` -> ("unix", "/path", None); ``tcp://host:port`` -> ("tcp", host, port).

    The port is required (Docker's default ports differ with and without TLS, so archfleet will
    not guess); an IPv6 host is written ``tcp://[::1]:2375``. Raises ``ValueError`` naming what
    is wrong."""
    if value.startswith("unix://"):
        path = value[len("unix://"):]
        if not path.startswith("/") or "\0" in path:
            raise ValueError("unix:// needs an absolute socket path, e.g. unix:///var/run/docker.sock")
        return "unix", path, None
    if value.startswith("tcp://"):
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the port must be a number 1-65535") from None
        if (not parts.hostname or any(c.isspace() for c in parts.hostname) or parts.path not in ("", "/")
                or parts.query or parts.fragment or parts.username):
            raise ValueError("expected tcp://host:port")
        if port is None or not 1 <= port <= 65535:
            raise ValueError("tcp:// needs a port, e.g. tcp://10.0.0.5:2375")
        return "tcp", parts.hostname, port
    raise ValueError("expected unix:///path or tcp://host:port")


def valid_docker_host(value: str) -> bool:
    """Whether :func:`parse_docker_host` accepts ``value``."""
    try:
        parse_docker_host(value)
    except ValueError:
        return False
    return True


async def pump_lines(reader: asyncio.StreamReader, on_line: LineCallback | None, tail: collections.deque) -> None:
    """Read ``reader`` to EOF, splitting on newlines and carriage returns."""
    buf = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        buf += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            tail.append(line)
            if on_line:
                on_line(line)
    if buf:
        line = buf.decode("utf-8", "replace")
        tail.append(line)
        if on_line:
            on_line(line)


class _CallerError(Exception):
    """An exception the caller's own code raised while a remote command ran (its ``stdin``
    iterable, its ``on_line`` callback): re-raised as it was, never taken for a lost connection
    (a reporter's BrokenPipeError or a context file that vanished is not the node's fault)."""


def _guard_callback(fn: LineCallback | None) -> LineCallback | None:
    if fn is None:
        return None

    def call(line: str) -> None:
        try:
            fn(line)
        except Exception as exc:
            raise _CallerError() from exc

    return call


def _guard_chunks(data) -> Iterable[bytes]:
    it = iter(_chunks(data))
    while True:
        try:
            chunk = next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise _CallerError() from exc
        yield chunk


async def _supervise(parts, timeout: float | None, stop: Callable[[], Awaitable[None]]) -> None:
    """Run the coroutines ``parts`` (feed stdin, read output, wait for the exit) to the end within
    ``timeout``. If anything ends them early (the timeout, a cancel, one of them raising, e.g. an
    ``on_line`` callback), ``stop()`` kills the process first, then the rest are cancelled and
    awaited, and the exception goes on to the caller: nothing of the run outlives it."""
    tasks = [asyncio.ensure_future(p) for p in parts]
    gathered = asyncio.gather(*tasks)
    # A part cancelled while the others run sets CancelledError as the gather's *exception*
    # (asyncio's gather), which nobody awaits once wait_for has given up on it: retrieve it, or
    # asyncio logs "_GatheringFuture exception was never retrieved" under the one error line.
    gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        await asyncio.wait_for(gathered, timeout)
    except BaseException:
        await stop()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: no "exception was never retrieved" noise
        raise


class LocalTransport:
    """Runs commands on this machine; the ``local`` node's transport."""

    def __init__(self, node: str = "local", docker_host: str | None = None):
        self.node = node
        self.docker_host = docker_host
        self._client = None
        self.bytes_sent = 0

    async def prepare_context(self, request, reporter=None) -> tuple[str, str]:
        """(context dir, Dockerfile) as paths the node's engine CLI can read: here, as given."""
        return str(request.context), str(request.dockerfile)

    async def run(self, argv, *, env=None, stdin=None, on_line=None, timeout=None) -> Completed:
        full_env = dict(os.environ)
        if self.docker_host:
            full_env["DOCKER_HOST"] = self.docker_host
        if env:
            full_env.update(env)
        spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=full_env,
            # its own process group, so stopping it stops what it started too (a killed
            # `sh -c` would leave its children holding the output pipe)
            start_new_session=True,
        ))
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # Cancelled while the process was being started: it may exist already. Without
            # this, asyncio kills only the leader and then waits for the output pipe, which
            # what the leader started holds until it ends on its own.
            with contextlib.suppress(BaseException):
                started = await spawn
                os.killpg(started.pid, signal.SIGKILL)
                await asyncio.wait_for(started.wait(), 5)
            raise
        except FileNotFoundError:
            return Completed(tuple(argv), 127, (f"{argv[0]}: command not found",))
        except PermissionError:
            return Completed(tuple(argv), 126, (f"{argv[0]}: permission denied",))
        tail: collections.deque = collections.deque(maxlen=40)

        async def feed():
            if stdin is not None:
                try:
                    for chunk in _chunks(stdin):
                        proc.stdin.write(chunk)
                        self.bytes_sent += len(chunk)
                        await proc.stdin.drain()
                finally:
                    proc.stdin.close()

        async def stop():
            # Not proc.kill(): Popen.send_signal polls first, and that poll can reap a child that
            # has just exited while asyncio's child-watcher thread waits on it; the watcher then
            # logs "Unknown child process pid ..." and reports 255 (seen under a one-line error in
            # CI). A signal to a zombie is harmless.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group outlives a leader that already exited
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 5)

        await _supervise([feed(), pump_lines(proc.stdout, on_line, tail), proc.wait()], timeout, stop)
        return Completed(tuple(argv), proc.returncode, tuple(tail))

    def docker_client(self):
        import docker

        if self._client is None:
            if self.docker_host:
                self._client = docker.DockerClient(base_url=self.docker_host)
            else:
                self._client = docker.from_env()
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class SSHTransport:
    """Runs commands on a node over asyncssh, reusing its connection(s) for the whole command.

    ``conn`` is an open, host-key-verified connection; ``connect`` (optional) opens another one
    to the same node with the same options, used when ``conn`` has
    :attr:`SESSIONS_PER_CONNECTION` sessions open. Commands and their environment reach the node
    only through :func:`frame` on stdin (module doc). The engine socket (``docker_host``, a
    ``unix://`` path or ``tcp://host:port`` on the node) is forwarded to a Unix socket in a
    private (0700) directory here, so docker-py speaks the Engine API to the node and no other
    local user can (pushes carry ``auth_config`` in a header: registry credentials never reach
    the node's disk or process list).
    """

    SESSIONS_PER_CONNECTION = 8  # below OpenSSH's default MaxSessions (10)
    MAX_CONNECTIONS = 8

    def __init__(self, node: str, conn, docker_host: str | None = None, link_key: str | None = None, *,
                 connect: Callable[[], Awaitable] | None = None):
        self.node = node
        self.conn = conn
        self.docker_host = docker_host
        self.link_key = link_key  # where measured transfer rates to this node are kept
        self.bytes_sent = 0
        self._client = None
        self._listener = None
        self._sockdir: str | None = None
        self._local_base_url: str | None = None
        self._closed = False
        self._syncs: dict[tuple[str, str], asyncio.Future] = {}
        self._connect = connect
        self._conns: list = [conn]
        self._open_sessions: dict[int, int] = {id(conn): 0}
        self._opening = 0
        self._waiters: list[asyncio.Future] = []
        self.peak_sessions = 0  # most sessions open at once on one connection (for tests and figures)

    # -- sessions ----------------------------------------------------------------------------

    def _take(self):
        for conn in self._conns:
            if self._open_sessions[id(conn)] < self.SESSIONS_PER_CONNECTION:
                self._open_sessions[id(conn)] += 1
                self.peak_sessions = max(self.peak_sessions, self._open_sessions[id(conn)])
                return conn
        return None

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _acquire(self):
        while True:
            conn = self._take()
            if conn is not None:
                return conn
            if self._connect is not None and not self._opening and len(self._conns) < self.MAX_CONNECTIONS:
                self._opening += 1  # one at a time: the one being opened has room for the waiters
                try:
                    conn = await self._connect()
                except Exception:
                    # The node takes no more connections (MaxStartups, a firewall's limit, ...):
                    # share the ones there are.
                    self._connect = None
                    continue
                else:
                    self._conns.append(conn)
                    self._open_sessions[id(conn)] = 0
                    continue
                finally:
                    self._opening -= 1
                    self._wake()
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut

    def _release(self, conn) -> None:
        self._open_sessions[id(conn)] -= 1
        self._wake()

    @contextlib.asynccontextmanager
    async def _session(self):
        conn = await self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    # -- running -----------------------------------------------------------------------------

    async def run(self, argv, *, env=None, stdin=None, on_line=None, timeout=None) -> Completed:
        import asyncssh

        from .errors import InfrastructureError

        full_env = {}
        if self.docker_host:
            full_env["DOCKER_HOST"] = self.docker_host
        full_env.update(env or {})
        header = frame(argv, full_env)
        tail: collections.deque = collections.deque(maxlen=40)
        async with self._session() as conn:
            try:
                proc = await conn.create_process(REMOTE_COMMAND, stderr=asyncssh.STDOUT, encoding=None,
                                                 request_pty=False)
            except (asyncssh.Error, OSError) as exc:
                raise InfrastructureError(self.node, f"SSH connection failed: {exc}") from None

            async def feed():
                try:
                    proc.stdin.write(header)
                    self.bytes_sent += len(header)
                    if stdin is not None:
                        for chunk in _guard_chunks(stdin):
                            proc.stdin.write(chunk)
                            self.bytes_sent += len(chunk)
                            await proc.stdin.drain()
                finally:
                    with contextlib.suppress(Exception):
                        proc.stdin.write_eof()

            async def stop():
                # Kill the remote process group, then close the channel. Closing alone is not
                # enough: a quiet process lives on until its next write hits SIGPIPE.
                if proc.exit_status is None:
                    with contextlib.suppress(Exception):
                        proc.send_signal("KILL")
                with contextlib.suppress(Exception):
                    proc.close()
                with contextlib.suppress(BaseException):  # the session counts until sshd closes it
                    await asyncio.wait_for(asyncio.shield(proc.wait_closed()), 5)

            try:
                await _supervise([feed(), pump_lines(proc.stdout, _guard_callback(on_line), tail), proc.wait()],
                                 timeout, stop)
            except _CallerError as exc:
                raise exc.__cause__  # the caller's own exception, as it was
            except (asyncssh.Error, OSError) as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise InfrastructureError(self.node, f"SSH connection lost: {exc}") from None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait_closed(), 5)
        if proc.exit_status is None or proc.exit_status < 0:
            if proc.exit_signal:
                return Completed(tuple(argv), 128 + 9, tuple(tail) + (f"killed by signal {proc.exit_signal[0]}",))
            raise InfrastructureError(self.node, "SSH connection lost while running " + str(argv[0]))
        return Completed(tuple(argv), proc.exit_status, tuple(tail))

    # -- the engine socket -------------------------------------------------------------------

    async def _forward_engine(self) -> str:
        """Forward the node's engine socket to a local Unix socket in a private directory; return
        its base_url. Never a local TCP port: any local user could reach that, and the Engine
        API is root on the node."""
        if self._local_base_url:
            return self._local_base_url
        kind, where, port = parse_docker_host(self.docker_host or "unix:///var/run/docker.sock")
        self._sockdir = tempfile.mkdtemp(prefix="archfleet-")  # mode 0700, ours
        local = os.path.join(self._sockdir, "docker.sock")
        if kind == "unix":
            self._listener = await self.conn.forward_local_path(local, where)
        else:
            self._listener = await self.conn.forward_local_path_to_port(local, where, port)
        self._local_base_url = f"unix://{local}"
        return self._local_base_url

    async def open_engine(self) -> None:
        await self._forward_engine()

    def docker_client(self):
        import docker

        if self._client is None:
            if not self._local_base_url:
                raise RuntimeError("open_engine() first")
            self._client = docker.DockerClient(base_url=self._local_base_url)
        return self._client

    async def prepare_context(self, request, reporter=None) -> tuple[str, str]:
        """Sync once per context per connection, however many platforms build from it."""
        from .context import sync_context

        key = (str(request.context), str(request.dockerfile))
        if key not in self._syncs or (self._syncs[key].done() and self._syncs[key].exception()):
            self._syncs[key] = asyncio.ensure_future(sync_context(self, request, reporter))
        return await asyncio.shield(self._syncs[key])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            self._client.close()
        if self._listener is not None:
            self._listener.close()
        if self._sockdir:
            import shutil

            shutil.rmtree(self._sockdir, ignore_errors=True)
        for conn in self._conns:
            conn.close()
        for conn in self._conns:
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except Exception:
                pass
