"""The SSH node's transport: every command through one constant command line, argv and
environment on stdin; sessions per connection; the engine socket forwarded privately.

sshd runs the command string it is given through the login shell of the node's user, whatever
that is (sh, bash, dash, zsh, ksh, fish, csh, tcsh), and those shells disagree on quoting (in
fish ``\\'`` inside single quotes is a quote; csh expands ``!`` in them). So no user value ever
travels in that string:

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
a lost connection), a ``signal`` request (``KILL``; OpenSSH >= 7.9 delivers it to the session's
process group, so ``exec`` keeps the command in it) and then the channel is closed, so a quiet
remote build cannot outlive its run (and its lease).

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
import tempfile
from typing import Awaitable, Callable, Mapping, Sequence

from archfleet.api import (CallerError, CommandNode, Completed, InfrastructureError, docker_module, guard_callback,
                           guard_chunks, parse_docker_host, pump_bytes, pump_lines, reap, supervise)

# The fixed script every SSH command runs (see the module doc). It must stay free of ' \ ! and
# newlines (a unit test checks), and user data must only ever be read from stdin by it.
BOOTSTRAP = (
    'set --; ok=; while IFS= read -r l; do case $l in .) ok=1; break;; ?r*) v=${l#??};; '
    '?b*) v=$(printf %bx "${l#??}"); v=${v%x};; *) break;; esac; '
    'case $l in A*) set -- "$@" "$v";; E*) export "$v";; *) break;; esac; done; '
    '[ -n "$ok" ] || { echo "archfleet: the command frame on stdin was cut short" >&2; exit 125; }; exec "$@"'
)
REMOTE_COMMAND = f"exec /bin/sh -c '{BOOTSTRAP}'"

# A private directory for one build's forwarded ssh agent: on a tmpfs ($XDG_RUNTIME_DIR, else
# /dev/shm), 0700; its path is the last line. AGENT_RM_SCRIPT removes it ($1), and nothing else.
AGENT_DIR_SCRIPT = r"""
umask 077
base=${XDG_RUNTIME_DIR:-}
{ [ -n "$base" ] && [ -d "$base" ] && [ -w "$base" ]; } || base=/dev/shm
d=$(mktemp -d "$base/archfleet-ssh.XXXXXXXX") || exit 125
printf 'archfleet-dir=%s\n' "$d"
"""
AGENT_RM_SCRIPT = r"""
case $1 in
  */archfleet-ssh.*) [ -d "$1" ] && [ ! -L "$1" ] && rm -rf -- "$1" ;;
esac
exit 0
"""
FRAME_ERROR = 125  # the bootstrap's exit status when the frame did not arrive whole

_ENV_NAME = re.compile(rb"^[A-Za-z_][A-Za-z0-9_]*$")


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



class SSHTransport(CommandNode):
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
        """Run ``argv`` on the node through :data:`REMOTE_COMMAND` with argv and environment framed on stdin (module doc); raises :class:`InfrastructureError` when the connection fails or is lost."""
        tail: collections.deque = collections.deque(maxlen=40)
        return await self._process(argv, env, stdin, timeout, tail, merged=True,
                                   read=lambda proc: pump_lines(proc.stdout, guard_callback(on_line), tail))

    async def stream(self, argv, sink, *, env=None, timeout=None) -> Completed:
        """Run ``argv`` as :meth:`run` does, its standard output handed to ``await sink(piece)``
        as it comes and its standard error kept apart (the result's tail): an image export
        travels as bytes, not as lines (``Transport.stream``)."""
        tail: collections.deque = collections.deque(maxlen=40)
        return await self._process(argv, env, None, timeout, tail, merged=False,
                                   read=lambda proc: asyncio.gather(pump_bytes(proc.stdout, sink, guard=True),
                                                                    pump_lines(proc.stderr, None, tail)))

    async def _process(self, argv, env, stdin, timeout, tail: collections.deque, *, merged: bool,
                       read: Callable[[object], Awaitable]) -> Completed:
        """One command through :data:`REMOTE_COMMAND`: the frame and ``stdin`` fed, ``read(proc)``
        reading its output (stderr into stdout when ``merged``), ended as the module doc says."""
        import asyncssh

        full_env = {}
        if self.docker_host:
            full_env["DOCKER_HOST"] = self.docker_host
        full_env.update(env or {})
        header = frame(argv, full_env)
        async with self._session() as conn:
            try:
                proc = await conn.create_process(REMOTE_COMMAND, stderr=asyncssh.STDOUT if merged else asyncssh.PIPE,
                                                 encoding=None, request_pty=False)
            except (asyncssh.Error, OSError) as exc:
                raise InfrastructureError(self.node, f"SSH connection failed: {exc}") from None

            async def feed():
                try:
                    proc.stdin.write(header)
                    self.bytes_sent += len(header)
                    if stdin is not None:
                        for chunk in guard_chunks(stdin):
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
                await reap(proc.wait_closed)  # the session counts until sshd closes it

            try:
                # wait_closed, not wait(): asyncssh's wait() is communicate(), which lifts the
                # reading limit and takes whatever output is still buffered for its own result,
                # away from read(proc): a stream read at its consumer's pace lost all but the
                # first ~1 MB of a 5 MB export (and run() could lose its last lines)
                await supervise([feed(), read(proc), proc.wait_closed()], timeout, stop)
            except CallerError as exc:
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

    # -- forwarding the user's ssh agent for one build ----------------------------------------

    @contextlib.asynccontextmanager
    async def agent_socket(self, local_path: str):
        """Forward the SSH agent at ``local_path`` (this machine) to a socket on the node, for
        the block's duration: a fresh private (0700) directory on a tmpfs of the node
        (:data:`AGENT_DIR_SCRIPT`), sshd listening on ``agent.sock`` in it (a streamlocal
        forward over the node's connection, like ``ssh -R``, but for this build only; sshd makes
        the socket 0600), connections to it relayed to the agent here. Yields the socket's path
        on the node. Afterwards the forward is closed and the directory removed, also when the
        block fails or is cancelled. Raises :class:`InfrastructureError` when the node refuses the
        forward (sshd's ``AllowStreamLocalForwarding no``) or the directory cannot be made."""
        import asyncssh

        lines: list[str] = []
        done = await self.run(["sh", "-c", AGENT_DIR_SCRIPT, "sh"], on_line=lines.append, timeout=60)
        made = [line.removeprefix("archfleet-dir=") for line in lines if line.startswith("archfleet-dir=/")]
        if not done.ok or not made:
            raise InfrastructureError(self.node, f"cannot make a private directory for the ssh agent: "
                                                 f"{done.last_line()}")
        directory = made[-1]
        remote = f"{directory}/agent.sock"
        listener = None
        try:
            try:
                listener = await self.conn.forward_remote_path(remote, local_path)
            except (asyncssh.Error, OSError) as exc:
                raise InfrastructureError(self.node, f"the node refused to forward the ssh agent ({exc}); allow "
                                                     "it in its sshd_config: AllowStreamLocalForwarding yes") from None
            yield remote
        finally:
            if listener is not None:
                listener.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.wait_closed(), 5)
            # shielded: a cancelled build still removes the directory (the connection allowing)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(
                    self.run(["sh", "-c", AGENT_RM_SCRIPT, "sh", directory], timeout=30)), 30)

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
        """Forward the node's engine socket to a private local Unix socket (before :meth:`docker_client`)."""
        await self._forward_engine()

    def docker_client(self):
        """A docker-py client over the forwarded engine socket (after :meth:`open_engine`)."""
        docker = docker_module()

        if self._client is None:
            if not self._local_base_url:
                raise RuntimeError("open_engine() first")
            self._client = docker.DockerClient(base_url=self._local_base_url)
        return self._client

    async def close(self) -> None:
        """Close the docker-py client, the forward and its directory, and every connection (waiting at most 5 s for each)."""
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
