"""What core knows of a node's transport: the :class:`Transport` interface, the local transport,
and the pieces every transport plugin shares.

A transport runs argv lists on its node and streams their output; commands are always argv
lists and an environment to add is always a mapping, so no caller ever writes a command line.
Everything else core does on a node goes through the same object: the engine API
(``docker_client``), the build context (``prepare_context``) and other runs' build slots
(``leases``). How a transport reaches its node is its plugin's business: the ``local`` plugin
uses :class:`LocalTransport` here (``execve``, no shell); the ``ssh`` plugin has its own, built on
:class:`CommandNode` (the context sync and leases as fixed ``sh`` scripts over ``run``) and the
helpers below (:func:`pump_lines`, :func:`supervise`, :func:`guard_callback`,
:func:`guard_chunks`).

Ending a run: whatever ends it early (a timeout, a cancel, an exception raised by ``on_line``),
the process is killed before ``run`` returns or raises, with what it started (locally: SIGKILL
to its process group), so nothing of a run outlives it (and its lease).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shlex
import signal
import weakref
from typing import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Protocol, Sequence
from urllib.parse import urlsplit

import attrs

from . import dockerlib

LineCallback = Callable[[str], None]

@attrs.frozen
class Completed:
    """How a command ended: exit status and the last lines it printed (stdout and stderr).

    ``argv`` is the command as asked for; the environment it ran with is never kept here."""

    argv: tuple[str, ...]
    returncode: int
    tail: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0

    def last_line(self) -> str:
        """The last non-empty output line (where CLIs put their error), else ``exit status N``."""
        for line in reversed(self.tail):
            if line.strip():
                return line.strip()
        return f"exit status {self.returncode}"


class Transport(Protocol):
    """What a transport plugin's ``archfleet_connect`` returns; everything core does on a node.

    ``run`` runs ``argv`` (a list of words, never a command line) with ``env`` added to the
    node's environment (never put in any argv), ``stdin`` (bytes or an iterable of byte chunks)
    as its standard input, each output line (stdout and stderr, decoded as UTF-8 with
    replacement) passed to ``on_line``; ``timeout`` in seconds. The process is killed if the
    run ends any other way than by the process exiting (a timeout, a cancel, an exception).
    It raises :class:`~archfleet.errors.InfrastructureError` when the node cannot be reached."""

    node: str

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_line: LineCallback | None = None,
        timeout: float | None = None,
    ) -> Completed:
        """Run ``argv`` on the node and return how it ended (see the class doc)."""
        ...

    async def stream(
        self,
        argv: Sequence[str],
        sink: Callable[[bytes], Awaitable[None]],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Completed:
        """Run ``argv`` on the node as :meth:`run` does (``env``, ``timeout``, killed if the run
        ends any other way), with no standard input and its standard output passed as it comes,
        in pieces of bytes, to ``await sink(piece)`` (the next piece is read once ``sink``
        returns: the caller's pace); standard error is kept apart, its last lines the
        :class:`Completed`'s tail. An exception ``sink`` raises ends the run and is raised here.
        For an engine's image export (``docker save``, ``podman save``), which :meth:`run`'s text
        lines cannot carry. Optional: without it, an engine reads the export through the Engine
        API (:meth:`docker_client`) or as text (podman's base64)."""
        ...

    def docker_client(self):
        """A ``docker.DockerClient`` for the node's engine (blocking calls: use a thread)."""
        ...

    async def prepare_context(self, request, reporter=None) -> tuple[str, str, "Transfer | None"]:
        """Make the build context and Dockerfile readable on the node: (context dir, Dockerfile)
        as paths there, and the :class:`~archfleet.model.Transfer` measured if the context was
        sent (None otherwise), for the learn stage."""
        ...

    @property
    def leases(self):
        """The node's lease store: ``claim``/``drop``/``beat`` as in
        :class:`archfleet.leases.LocalLeases` (see :mod:`archfleet.leases`)."""
        ...

    def agent_socket(self, local_path: str) -> "contextlib.AbstractAsyncContextManager[str]":
        """An async context manager: the path *on the node* of a Unix socket that reaches the SSH
        agent listening at ``local_path`` on this machine, for the block's duration only (a
        build's ``--ssh``, :mod:`archfleet.secrets`); nothing of it is left afterwards. Optional:
        a transport without it cannot forward an agent (the build is told so)."""
        ...


class CommandNode:
    """The node-side work of a transport whose :meth:`run` reaches a POSIX node: the build
    context synced with fixed ``sh`` scripts (:func:`archfleet.context.sync_context`, once per
    context per transport however many platforms build from it) and build-slot leases as fixed
    scripts (:class:`archfleet.leases.ShellLeases`). A transport plugin subclasses it and
    provides ``node``, ``run``, ``docker_client`` and ``close``."""

    node: str

    @property
    def leases(self):
        """The node's lease store: fixed scripts through :meth:`run` (:class:`archfleet.leases.ShellLeases`)."""
        from .leases import ShellLeases

        store = self.__dict__.get("_shell_leases")
        if store is None:
            store = self.__dict__["_shell_leases"] = ShellLeases(self)
        return store

    async def prepare_context(self, request, reporter=None) -> tuple[str, str]:
        """Sync the request's context to the node once (per context and transport, however many platforms build from it); its (context dir, Dockerfile) paths there."""
        from .context import sync_context

        syncs = self.__dict__.setdefault("_syncs", {})
        key = (str(request.context), str(request.dockerfile))
        if key not in syncs or (syncs[key].done() and syncs[key].exception()):
            syncs[key] = asyncio.ensure_future(sync_context(self, request, reporter))
        return await asyncio.shield(syncs[key])


def _chunks(data) -> Iterable[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [bytes(data)] if data else []
    return data


def quote_argv(argv: Sequence[str]) -> str:
    """An argv list as POSIX sh would read it, for *showing* a command to a person (messages,
    docs). Nothing archfleet runs is ever built this way."""
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


STREAM_PIECE = 1024 * 1024  # bytes of a streamed output read at a time, at most


async def pump_bytes(reader, sink: Callable[[bytes], Awaitable[None]], *, guard: bool = False) -> None:
    """Read ``reader`` (an asyncio or asyncssh stream of bytes) to EOF, handing each piece of at
    most :data:`STREAM_PIECE` bytes to ``await sink(piece)`` before reading on. ``guard``:
    whatever ``sink`` raises is wrapped in :class:`CallerError` (so a transport can tell the
    caller's failure from the node's)."""
    while True:
        piece = await reader.read(STREAM_PIECE)
        if not piece:
            return
        if not guard:
            await sink(piece)
            continue
        try:
            await sink(piece)
        except Exception as exc:
            raise CallerError() from exc


REAP_SECONDS = 5.0  # how long a stopped command's end is waited for, at most


async def reap(ending: Callable[[], Awaitable], timeout: float = REAP_SECONDS) -> None:
    """Await ``ending()`` (a killed command's end: its process reaped, its pipes closed) for up
    to ``timeout`` seconds, even through a cancellation of the caller, which is raised
    afterwards; ``ending`` is called again if something cancels its task (``asyncio.run``'s
    shutdown cancels every task left). A run's cleanup must not be cut short: ``asyncio.gather``
    ends on its first cancelled child, and ``asyncio.run`` then cancels the others while they
    still reap their processes; those ended after the loop had closed ("Loop ... that handles
    pid ... is closed", then "Event loop is closed" tracebacks after a registry error's one
    line: seen in CI, one run in ~60 here). What ``ending`` raises, or the timeout, ends the
    wait quietly."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    cancelled: asyncio.CancelledError | None = None
    task: asyncio.Future | None = None
    while True:
        if task is None or task.cancelled():
            task = asyncio.ensure_future(ending())
        if task.done():
            break
        left = deadline - loop.time()
        if left <= 0:
            task.cancel()
            break
        try:
            await asyncio.wait_for(asyncio.shield(task), left)
        except asyncio.CancelledError as exc:
            cancelled = exc  # the caller's (or the task's own): the command's end comes first
        except Exception:  # the timeout, or what ``ending`` raised
            break
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" noise
    if cancelled is not None:
        raise cancelled


class OutputFailed(Exception):
    """The command :func:`stream_output` read ended with a non-zero status: ``done`` says how
    (its standard error's last lines)."""

    def __init__(self, done: Completed):
        super().__init__(done.last_line())
        self.done = done


async def stream_output(transport: "Transport", argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                        ahead: int = 4) -> AsyncIterator[bytes]:
    """:meth:`Transport.stream` as an async iterator of the command's output pieces, read at the
    consumer's pace: at most ``ahead`` pieces wait. Closing it early (or cancelling the
    consumer) kills the command. Raises :class:`OutputFailed` after the last piece when the
    command ends with a non-zero status, and whatever the transport raises (``InfrastructureError``)."""
    queue: asyncio.Queue = asyncio.Queue(ahead)

    async def produce() -> None:
        try:
            done = await transport.stream(argv, queue.put, env=env)
        except Exception as exc:
            await queue.put(exc)
            return
        await queue.put(done)

    task = asyncio.ensure_future(produce())
    try:
        while True:
            item = await queue.get()
            if isinstance(item, Completed):
                if not item.ok:
                    raise OutputFailed(item)
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class CallerError(Exception):
    """An exception the caller's own code raised while a remote command ran (its ``stdin``
    iterable, its ``on_line`` callback): re-raised as it was, never taken for a lost connection
    (a reporter's BrokenPipeError or a context file that vanished is not the node's fault)."""


def guard_callback(fn: LineCallback | None) -> LineCallback | None:
    """``fn`` with whatever it raises wrapped in :class:`CallerError` (so a transport can tell the caller's failure from the node's); None stays None."""
    if fn is None:
        return None

    def call(line: str) -> None:
        try:
            fn(line)
        except Exception as exc:
            raise CallerError() from exc

    return call


def guard_chunks(data) -> Iterable[bytes]:
    """The byte chunks of ``data`` (bytes or an iterable of bytes), with whatever producing them raises wrapped in :class:`CallerError`."""
    it = iter(_chunks(data))
    while True:
        try:
            chunk = next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise CallerError() from exc
        yield chunk


async def supervise(parts, timeout: float | None, stop: Callable[[], Awaitable[None]]) -> None:
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


# this process's commands being started (asyncio.create_subprocess_exec tasks); weakly held, so
# that counting them keeps none alive (a start a closed loop left would outlive it)
_STARTING: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()


def _starting(start) -> asyncio.Task:
    """``start`` (a ``create_subprocess_exec`` coroutine) as a task, counted in :func:`starting`
    until it is done."""
    task = asyncio.ensure_future(start)
    _STARTING.add(task)
    return task


def starting() -> bool:
    """True while a command is being started here: asyncio has forked it and connects its pipes
    in tasks of its own. A loop stopped then (a second Ctrl-C) cancels those tasks when it shuts
    down, and a half-connected subprocess transport never reports the end of its process, so
    the shutdown waits on it for ever (CPython's asyncio, 3.11: ``_connect_pipes`` cancelled
    leaves a pipe unset, and ``_try_finish`` waits for every pipe). :class:`archfleet.cli._CtrlC`
    stops the loop only once this is False. Only the running loop's starts count (one of a loop
    closed before would never end). Call it on the loop."""
    loop = asyncio.get_running_loop()
    return any(not f.done() and f.get_loop() is loop for f in _STARTING)


class LocalTransport:
    """Runs commands on this machine; the ``local`` node's transport. Leases live in this
    machine's file system (:class:`archfleet.leases.LocalLeases`); the context is used where it
    is."""

    def __init__(self, node: str = "local", docker_host: str | None = None):
        self.node = node
        self.docker_host = docker_host
        self._client = None
        self.bytes_sent = 0

    @property
    def leases(self):
        """This machine's lease store (:class:`archfleet.leases.LocalLeases`)."""
        from .leases import LocalLeases

        return LocalLeases()  # stateless: the rules live in archfleet.leases

    async def prepare_context(self, request, reporter=None) -> tuple[str, str, None]:
        """(context dir, Dockerfile) as paths the node's engine CLI can read: here, as given;
        nothing is sent."""
        return str(request.context), str(request.dockerfile), None

    @contextlib.asynccontextmanager
    async def agent_socket(self, local_path: str):
        """The agent at ``local_path`` is on this machine already: the path itself."""
        yield local_path

    async def _spawn(self, argv, env, *, stdin: bool, stderr):
        """``argv`` started here in a process group of its own, stdout piped; a
        :class:`Completed` (127/126) when the program is missing or not executable."""
        full_env = dict(os.environ)
        if self.docker_host:
            full_env["DOCKER_HOST"] = self.docker_host
        if env:
            full_env.update(env)
        spawn = _starting(asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=full_env,
            # its own process group, so stopping it stops what it started too (a killed
            # `sh -c` would leave its children holding the output pipe)
            start_new_session=True,
        ))
        try:
            # shielded: cancelled while the process starts, asyncio would kill only the leader
            # and then wait until its children close the output pipe (a `sleep 5` under `sh -c`:
            # 5 s); the process group is stopped here instead
            return await asyncio.shield(spawn)
        except FileNotFoundError:
            return Completed(tuple(argv), 127, (f"{argv[0]}: command not found",))
        except PermissionError:
            return Completed(tuple(argv), 126, (f"{argv[0]}: permission denied",))
        except asyncio.CancelledError:
            async def kill_started() -> None:
                if spawn.cancelled():  # never started (asyncio's own start cleans up after itself)
                    return
                started = await asyncio.shield(spawn)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(started.pid, signal.SIGKILL)
                await started.wait()

            await reap(kill_started)
            raise

    @staticmethod
    async def _stop(proc, drain=None) -> None:
        # Not proc.kill(): Popen.send_signal polls first, and that poll can reap a child that
        # has just exited while asyncio's child-watcher thread waits on it; the watcher then
        # logs "Unknown child process pid ..." and reports 255 (seen under a one-line error in
        # CI). A signal to a zombie is harmless.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group outlives a leader that already exited

        async def ended() -> None:
            if drain is not None:
                # ``drain`` (a pipe nobody reads any more: an export whose reader stopped early)
                # is read to its end first: asyncio left it paused, and its wait() returns only
                # once every pipe has closed (else 5 s here, and the pipe closed by the garbage
                # collector after the loop, which printed "Event loop is closed" tracebacks)
                with contextlib.suppress(Exception):
                    await drain.read()
            await proc.wait()

        await reap(ended)

    async def run(self, argv, *, env=None, stdin=None, on_line=None, timeout=None) -> Completed:
        """Run ``argv`` here, in a process group of its own (see :class:`Transport`); 127/126 when the program is missing or not executable."""
        proc = await self._spawn(argv, env, stdin=stdin is not None, stderr=asyncio.subprocess.STDOUT)
        if isinstance(proc, Completed):
            return proc
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

        await supervise([feed(), pump_lines(proc.stdout, on_line, tail), proc.wait()], timeout,
                        lambda: self._stop(proc))
        return Completed(tuple(argv), proc.returncode, tuple(tail))

    async def stream(self, argv, sink, *, env=None, timeout=None) -> Completed:
        """Run ``argv`` here with its standard output handed to ``sink`` as it comes (see
        :meth:`Transport.stream`); 127/126 when the program is missing or not executable."""
        proc = await self._spawn(argv, env, stdin=False, stderr=asyncio.subprocess.PIPE)
        if isinstance(proc, Completed):
            return proc
        tail: collections.deque = collections.deque(maxlen=40)
        await supervise([pump_bytes(proc.stdout, sink), pump_lines(proc.stderr, None, tail), proc.wait()], timeout,
                        lambda: self._stop(proc, drain=proc.stdout))
        return Completed(tuple(argv), proc.returncode, tuple(tail))

    def docker_client(self):
        """A docker-py client for ``docker_host`` (else the environment's ``DOCKER_HOST`` or the default socket), made once."""
        docker = dockerlib.module()

        if self._client is None:
            if self.docker_host:
                self._client = docker.DockerClient(base_url=self.docker_host)
            else:
                self._client = docker.from_env()
        return self._client

    async def close(self) -> None:
        """Close the docker-py client, if one was made."""
        if self._client is not None:
            self._client.close()
            self._client = None


