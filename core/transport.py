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
from typing import Awaitable, Callable, Mapping, Protocol, Sequence

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
                proc.stdin.write(stdin)
                await proc.stdin.drain()
                proc.stdin.close()

        work = asyncio.gather(feed(), pump_lines(proc.stdout, on_line, tail), proc.wait())
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        try:
            await asyncio.wait_for(work, timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            if proc.returncode is None:
                proc.kill()
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


RunFn = Callable[..., Awaitable[Completed]]
