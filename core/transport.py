"""Run argv lists on a node and stream their output.

Commands are always argv lists. The local transport hands them to the OS as they are; a
remote transport (SSH) joins them with :func:`quote_argv`, the one place a command line is
ever quoted.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shlex
import signal
from typing import Awaitable, Callable, Iterable, Mapping, Protocol, Sequence

import attrs
import docker

LineCallback = Callable[[str], None]


@attrs.frozen
class Completed:
    """How a command ended: exit status and the last lines it printed (stdout and stderr)."""

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
    """What a transport plugin's ``archfleet_connect`` returns."""

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


def quote_argv(argv: Sequence[str]) -> str:
    """Quote an argv list once, for a remote shell. Every argument stays one literal word."""
    return shlex.join([str(a) for a in argv])


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
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=full_env,
            )
        except FileNotFoundError:
            return Completed(tuple(argv), 127, (f"{argv[0]}: command not found",))
        except PermissionError:
            return Completed(tuple(argv), 126, (f"{argv[0]}: permission denied",))
        tail: collections.deque = collections.deque(maxlen=40)

        async def feed():
            if stdin is not None:
                for chunk in _chunks(stdin):
                    proc.stdin.write(chunk)
                    self.bytes_sent += len(chunk)
                    await proc.stdin.drain()
                proc.stdin.close()

        work = asyncio.gather(feed(), pump_lines(proc.stdout, on_line, tail), proc.wait())
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        try:
            await asyncio.wait_for(work, timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            if proc.returncode is None:
                # Not proc.kill(): Popen.send_signal polls first, and that poll can reap a child
                # that has just exited while asyncio's child-watcher thread waits on it; the
                # watcher then logs "Unknown child process pid ..." and reports 255 (seen under a
                # one-line error in CI). A signal to a zombie is harmless.
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await proc.wait()
            raise
        return Completed(tuple(argv), proc.returncode, tuple(tail))

    def docker_client(self):
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
    """Runs commands on a node over one asyncssh connection, reused for the whole run.

    Commands are argv lists joined once by :func:`quote_argv`; the node's ``docker_host`` is
    passed as ``env DOCKER_HOST=...`` in that argv. The engine socket is forwarded to a local
    socket, so docker-py speaks the Engine API to the node (pushes carry ``auth_config`` in a
    header: registry credentials never reach the node's disk or process list).
    """

    def __init__(self, node: str, conn, docker_host: str | None = None, link_key: str | None = None):
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

    async def run(self, argv, *, env=None, stdin=None, on_line=None, timeout=None) -> Completed:
        import asyncssh

        from .errors import InfrastructureError

        full_env = {}
        if self.docker_host:
            full_env["DOCKER_HOST"] = self.docker_host
        full_env.update(env or {})
        words = (["env", *[f"{k}={v}" for k, v in full_env.items()]] if full_env else []) + [str(a) for a in argv]
        command = quote_argv(words)
        self.bytes_sent += len(command.encode())
        tail: collections.deque = collections.deque(maxlen=40)
        try:
            proc = await self.conn.create_process(command, stderr=asyncssh.STDOUT, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise InfrastructureError(self.node, f"SSH connection failed: {exc}") from None

        async def feed():
            try:
                if stdin is not None:
                    for chunk in _chunks(stdin):
                        proc.stdin.write(chunk)
                        self.bytes_sent += len(chunk)
                        await proc.stdin.drain()
            finally:
                proc.stdin.write_eof()

        work = asyncio.gather(feed(), pump_lines(proc.stdout, on_line, tail), proc.wait())
        work.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(work, timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            proc.close()
            raise
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            raise InfrastructureError(self.node, f"SSH connection lost: {exc}") from None
        if proc.exit_status is None or proc.exit_status < 0:
            if proc.exit_signal:
                return Completed(tuple(words), 128 + 9, tuple(tail) + (f"killed by signal {proc.exit_signal[0]}",))
            raise InfrastructureError(self.node, "SSH connection lost while running " + str(argv[0]))
        return Completed(tuple(words), proc.exit_status, tuple(tail))

    async def _forward_engine(self) -> str:
        """Forward the node's engine socket to a local one; return its base_url."""
        if self._local_base_url:
            return self._local_base_url
        import tempfile

        target = self.docker_host or "unix:///var/run/docker.sock"
        if target.startswith("unix://"):
            self._sockdir = tempfile.mkdtemp(prefix="archfleet-")
            local = os.path.join(self._sockdir, "docker.sock")
            self._listener = await self.conn.forward_local_path(local, target[len("unix://"):])
            self._local_base_url = f"unix://{local}"
        else:
            host, _, port = target[len("tcp://"):].rpartition(":")
            self._listener = await self.conn.forward_local_port("127.0.0.1", 0, host, int(port))
            self._local_base_url = f"tcp://127.0.0.1:{self._listener.get_port()}"
        return self._local_base_url

    async def open_engine(self) -> None:
        await self._forward_engine()

    def docker_client(self):
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
        self.conn.close()
        try:
            await asyncio.wait_for(self.conn.wait_closed(), 5)
        except Exception:
            pass
