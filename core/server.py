"""``archfleet server``: a process of this user's that has loaded archfleet once and runs each
command in a fork of itself, so a command skips the interpreter's start and its imports (issue
17: ~170 ms of the ~270 ms archfleet added to a tiny one-platform build+push were those).

Started by the first command that finds none (as Gradle's daemon and sccache's server start):
that command runs in its own process and, as it exits, starts the server in the background
(:func:`archfleet.serverclient.start_in_background`; ``ARCHFLEET_SERVER=manual``: only
``archfleet server start`` starts one; ``0``: never use one). While one runs, the ``archfleet``
command of the same install and the same context hands it every command but ``server``
(:mod:`archfleet.serverclient`, which also holds the protocol). The command's process is a fork
made for it, given the caller's fds 0-2, working directory, umask, environment and arguments; it
raises on itself each signal the caller gets, and its exit code (or killing signal) becomes the
caller's. What it does not take from the caller: the process tree (its parent is the server),
session and controlling terminal (none; a tty on fds 0-2 still is one) and the hash seed.
Everything else a process is run in (ids and groups, audit login uid, namespaces, root, cgroup,
LSM label, capabilities, limits, nice value, CPU affinity, Python's options:
:func:`archfleet.serverclient.context`) is the server's, so a server serves only callers whose
context is the same as its own: each context has its own socket (its key in the name), and the
server compares the whole text of each request's. Its own environment holds only what runs
Python (:func:`archfleet.serverclient.server_env`): a credential of the command that started it
does not live on in it.

Trust: the socket lives in :func:`archfleet.serverclient.runtime_dir`, a directory of this user's
that no one else may enter (checked by both sides, made 0700 by the server), and the server runs
a request only from a peer with its own uid (``SO_PEERCRED``; the caller checks the server's
uid the same way before it sends anything). It stops, and callers run commands
themselves, once any file it loaded changed (an upgrade, an edit of a checkout), when stopped
(``archfleet server stop``, SIGTERM) and after ``--idle`` seconds without a command (default 900).

Fork safety: the server loads no thread and no Go runtime (BuildKit's Dockerfile parser loads in
each command's process, :func:`archfleet.dockerfile._import_parser`) and makes no event loop; it
refuses to fork with a thread running."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time

from . import serverclient

IDLE_SECONDS = serverclient.IDLE_SECONDS  # default --idle
MAX_REQUEST = 1 << 20  # bytes: the request (directory, stdio, context)
REQUEST_SECONDS = 5.0  # a request not sent whole by then is dropped
LOG_BYTES = 1 << 20  # a log larger than this is emptied when a server starts
MAX_IDLE = 7 * 86400  # seconds (a selector's timeout is at most ~24.8 days)
# loaded before forking: what a build, plan or ls imports (the Go parser excepted, see the docstring)
PRELOAD = ("archfleet.cli", "archfleet.pipeline", "archfleet.api", "archfleet.manager", "archfleet.publish",
           "archfleet.index", "archfleet.learn", "archfleet.progress", "archfleet.outputs", "archfleet.doctor",
           "archfleet.plugins.local", "archfleet.plugins.native", "archfleet.plugins.qemu",
           "archfleet.plugins.cross", "archfleet.plugins.estimates", "archfleet.plugins.ssh",
           "archfleet.plugins.reuse", "sqlite3", "isal.isal_zlib", "httpcore", "h11", "sniffio",
           "anyio._backends._asyncio")


def log_path(socket: str | None = None) -> str:
    """The log of the server on ``socket`` (this context's): beside it, ``.log`` for ``.sock``
    (mode 0600)."""
    return (socket or serverclient.socket_path())[:-len(".sock")] + ".log"


# ioprio_get(2)'s number by the interpreter's architecture (sysconfig MULTIARCH's first part):
# no libc wrapper, no /proc file
_IOPRIO_GET = {"x86_64": 252, "i386": 290, "aarch64": 31, "riscv64": 31, "arm": 315, "s390x": 283,
               "powerpc64le": 274, "powerpc64": 274}


def ioprio(pid: int) -> int | None:
    """Process ``pid``'s I/O scheduling class and priority (``ionice``), as ioprio_get(2) says
    it; None where the call is not known or fails. Part of what a command's process would take
    from the server (:func:`archfleet.serverclient.context` cannot read it from a file)."""
    import ctypes
    import sysconfig

    number = _IOPRIO_GET.get((sysconfig.get_config_var("MULTIARCH") or "").split("-")[0])
    if number is None:
        return None
    value = ctypes.CDLL(None, use_errno=True).syscall(number, 1, pid)  # IOPRIO_WHO_PROCESS
    return None if value < 0 else value


def differs(mine: str, theirs) -> str | None:
    """The names of the :func:`archfleet.serverclient.context` lines that differ between
    ``mine`` and ``theirs`` (a request's), comma-separated, or None when they are the same."""
    if theirs == mine:
        return None
    if not isinstance(theirs, str):
        return "context missing"
    a = dict(line.partition(" ")[::2] for line in mine.splitlines())
    b = dict(line.partition(" ")[::2] for line in theirs.splitlines())
    return ", ".join(sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))) or "context"


# -- the server ------------------------------------------------------------------------------

def preload() -> None:
    """Import what commands use (:data:`PRELOAD`, httpx through its lazy module), then freeze
    it for the collector (forks share those pages)."""
    for name in PRELOAD:
        importlib.import_module(name)
    from .httpxlib import httpx

    httpx.AsyncClient  # noqa: B018 - loads the lazy module
    from . import dockerlib, manager

    dockerlib.module()  # the Engine API's export, without starting the CLI (engine.DockerEngine.export)
    manager.make_hooks()  # what the first making of a plugin manager caches (entry points: ~4 ms)
    if "dockerfile" in sys.modules:
        raise RuntimeError("the Go Dockerfile parser was loaded before forking")
    gc.collect()
    gc.freeze()


def loaded_files() -> dict[str, tuple[int, int]]:
    """Every loaded module's file -> (mtime in ns, size): the server is stale once one differs."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path:
            try:
                st = os.stat(path)
            except OSError:
                continue
            files[path] = (st.st_mtime_ns, st.st_size)
    return files


def changed(files: dict[str, tuple[int, int]]) -> str | None:
    """The first file of ``files`` that is not as it was, or None."""
    for path, seen in files.items():
        try:
            st = os.stat(path)
        except OSError:
            return path
        if (st.st_mtime_ns, st.st_size) != seen:
            return path
    return None


class _Stop(Exception):
    pass


class Server:
    """The accept loop (one thread, a selector over the socket and each command's pidfd)."""

    def __init__(self, listener: socket.socket, path: str, idle: float, context: str | None = None):
        self.listener, self.path, self.idle = listener, path, idle
        self.context = serverclient.context() if context is None else context
        self.inode = os.stat(path).st_ino  # the socket file it bound (not the socket's own inode)
        self.files = loaded_files()
        self.started = time.time()
        self.served = 0
        self.children: dict[int, tuple[socket.socket, int]] = {}  # pid -> (caller's socket, pidfd)
        self.selector = selectors.DefaultSelector()
        self.stopping: str | None = None
        self.pending: set[_Pending] = set()  # requests still being read
        self.lock = -1  # the start lock's fd (main), closed in each command's process

    def serve(self) -> None:
        """Accept commands and report their ends until stopped (SIGTERM or SIGINT, ``stop``, a
        stale file, ``idle`` seconds with nothing to do), then until the running ones ended."""
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        last = time.monotonic()

        def stop(signum, frame):
            raise _Stop(f"signal {signum}")

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while True:
            try:
                if self.stopping and not self.children:
                    return
                timeout = None if self.children or self.stopping else max(0.0, self.idle - (time.monotonic() - last))
                if self.pending:
                    timeout = min(timeout if timeout is not None else REQUEST_SECONDS, REQUEST_SECONDS)
                events = self.selector.select(timeout)
                if not events and not self.children and not self.pending and time.monotonic() - last >= self.idle:
                    self._stop("idle")
                    continue
                # a stop is handled between events, never halfway through one (a command forked
                # and not yet watched would never be reaped)
                held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                try:
                    for key, _ in events:
                        try:
                            if key.data is None:
                                self._accept()
                            elif isinstance(key.data, _Pending):
                                if self._read(key.data):  # a command started (not a status asked)
                                    last = time.monotonic()
                            else:
                                self._reap(key.data)
                                last = time.monotonic()
                        except Exception as exc:  # noqa: BLE001 - one request's trouble never ends the server
                            _log(f"error handling {'a request' if not isinstance(key.data, int) else f'command {key.data}'}: "
                                 f"{exc!r}")
                    self._expire()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
            except _Stop as exc:
                self._stop(str(exc))

    def _stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = why
        _log(f"stopping ({why}); {len(self.children)} command(s) still running")
        self.selector.unregister(self.listener)
        _unlink_if_ours(self.path, self.inode)
        self.listener.close()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                 struct.calcsize("3i")))
        except OSError:
            conn.close()
            return
        if uid != os.getuid():
            _log(f"refused a request from uid {uid} (pid {pid})")
            conn.close()
            return
        # read through the selector: a caller that connects and sends nothing holds up no one
        conn.setblocking(False)
        pending = _Pending(conn, time.monotonic() + REQUEST_SECONDS, pid)
        self.pending.add(pending)
        self.selector.register(conn, selectors.EVENT_READ, pending)

    def _expire(self) -> None:
        now = time.monotonic()
        for pending in [p for p in self.pending if p.deadline < now]:
            _log(f"dropped a request not sent whole within {REQUEST_SECONDS:g} s")
            self._drop(pending)

    def _drop(self, pending: "_Pending") -> None:
        self.pending.discard(pending)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(pending.conn)
        pending.close_fds()
        pending.conn.close()

    def _read(self, pending: "_Pending") -> bool:
        """More of a pending request; once whole, run it. True when a command started."""
        try:
            req = pending.feed()
        except (OSError, ValueError) as exc:
            _log(f"a bad request: {exc}")
            self._drop(pending)
            return False
        if req is None:
            return False  # not whole yet
        self.pending.discard(pending)
        self.selector.unregister(pending.conn)
        conn = pending.conn
        pending.close_fds()  # a caller sends its fds to the command's process, not with the request
        if _hung_up(conn):  # the caller gave up while the request waited (a busy or stopped server)
            pending.close_fds()
            conn.close()
            return False
        conn.setblocking(True)
        conn.settimeout(10)
        if "control" in req:
            pending.close_fds()
            self._control(conn, req["control"])
            return False
        try:
            why = self._refusal(req, pending.pid)
            if why:
                with contextlib.suppress(OSError):
                    conn.sendall(f"F{why}\n".encode())
                conn.close()
                if why.startswith("stale"):
                    self._stop(why)
                return False
            pid = self._fork(conn, req)
        finally:
            pending.close_fds()
        if pid is None:
            return False
        self.served += 1
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (conn, pidfd)
        self.selector.register(pidfd, selectors.EVENT_READ, pid)
        try:
            conn.sendall(f"P{pid}\n".encode())
        except OSError:
            pass  # the caller went away: its command sees the socket closed (SIGTERM)
        return True

    def _refusal(self, req: dict, pid: int = 0) -> str | None:
        if self.stopping:
            return "stopping"
        if not isinstance(req.get("cwd"), str) or not isinstance(req.get("umask"), int):
            return "malformed request"
        stale = changed(self.files)
        if stale:
            return f"stale: {stale} changed since the server started"
        other = differs(self.context, req.get("context"))
        if other is None and pid and ioprio(pid) != ioprio(os.getpid()):
            other = "ioprio"
        if other:
            return f"the caller's context differs from the server's: {other}"
        if threading.active_count() != 1:
            return "a thread is running in the server"
        return None

    def _fork(self, conn: socket.socket, req: dict) -> int | None:
        try:
            pid = os.fork()
        except OSError as exc:
            _log(f"fork failed: {exc}")
            with contextlib.suppress(OSError):
                conn.sendall(f"Ffork failed: {exc}\n".encode())
            conn.close()
            return None
        if pid == 0:
            keep = {conn.fileno()}
            others = [self.listener.fileno() if self.listener.fileno() >= 0 else -1, self.lock,
                      *(c.fileno() for c, _ in self.children.values()), *(p for _, p in self.children.values()),
                      *(p.conn.fileno() for p in self.pending), *(fd for p in self.pending for fd in p.fds)]
            _command(conn, req, [fd for fd in others if fd >= 0 and fd not in keep], self.selector)
        return pid

    def _reap(self, pid: int) -> None:
        conn, pidfd = self.children.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = 70
        try:
            conn.sendall((f"K{-code}\n" if code < 0 else f"X{code}\n").encode())
        except OSError:
            pass
        conn.close()

    def _control(self, conn: socket.socket, what: str) -> None:
        stale = changed(self.files)
        if stale and not self.stopping:
            self._stop(f"stale: {stale} changed since the server started")
        info = {"pid": os.getpid(), "started": self.started, "idle": self.idle, "served": self.served,
                "running": len(self.children), "python": sys.version.split()[0], "stopping": self.stopping}
        try:
            conn.sendall(f"I{json.dumps(info)}\n".encode())
        except OSError:
            pass
        conn.close()
        if what == "stop":
            self._stop("archfleet server stop")


class _Pending:
    """A request being read (serverclient's layout): its bytes and the fds sent with them."""

    def __init__(self, conn: socket.socket, deadline: float, pid: int = 0):
        self.conn, self.deadline, self.pid = conn, deadline, pid  # pid: the caller's (SO_PEERCRED)
        self.data = b""
        self.fds: list[int] = []

    def feed(self) -> dict | None:
        """Read what the socket has; the request once whole, else None. Raises ValueError or
        OSError for a request that is not one."""
        import array

        try:
            msg, anc, _flags, _ = self.conn.recvmsg(1 << 16, socket.CMSG_SPACE(3 * 4))
        except BlockingIOError:
            return None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
                self.fds.extend(got)
        if not msg:
            raise ValueError("the caller closed the socket mid-request")
        self.data += msg
        if len(self.data) < 4:
            return None
        size = int.from_bytes(self.data[:4], "big")
        if size > MAX_REQUEST:
            raise ValueError("request too large")
        if len(self.data) < 4 + size:
            return None
        req = json.loads(self.data[4:4 + size])
        if not isinstance(req, dict):
            raise ValueError("not a JSON object")
        return req

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def _hung_up(conn: socket.socket) -> bool:
    """Whether the caller closed its end (non-blocking ``conn``): nothing is run for it then."""
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _unlink_if_ours(path: str, inode: int) -> None:
    """Remove the socket file at ``path`` if it is still the one this server bound (``inode``):
    a server started since may have put its own there."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


def _log(line: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} archfleet server[{os.getpid()}]: {line}\n")
    sys.stderr.flush()


# -- a command's process ---------------------------------------------------------------------

def _command(conn: socket.socket, req: dict, close: list[int], selector) -> None:
    """In the fork: become the caller's command and exit with its code. Never returns."""
    code = 70
    try:
        try:
            selector.close()
        except Exception:
            pass
        for fd in close:
            try:
                os.close(fd)
            except OSError:
                pass
        # sent by the caller once told the pid (serverclient.command): the server never held
        # them, and a stopped server holds no pipe of the caller's open
        argv, env, fds = _command_message(conn)
        for target, fd in zip((0, 1, 2), fds):
            if fd != target:
                os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        # as the caller's were: ignored ones stay ignored (nohup, a background job's SIGINT)
        ignored = {int(s) for s in req.get("ignored") or () if isinstance(s, int)}
        for signum in (*serverclient.SIGNALS, signal.SIGTSTP, signal.SIGCONT):
            signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)
        if signal.SIGINT not in ignored:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # forked while the server held its stops
        os.chdir(req["cwd"])
        os.umask(req["umask"])
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        time.tzset()
        import random
        import tempfile

        tempfile.tempdir = None
        random.seed()
        sys.argv = [str(a) for a in argv]
        _stdio(req.get("stdio") or {})
        watcher = threading.Thread(target=_watch, args=(conn,), name="archfleet-caller", daemon=True)
        watcher.start()
        from .console import run_here

        run_here()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - the process ends here whatever happened
        # what the interpreter does with an exception nobody caught (ARCHFLEET_DEBUG=1 lets a
        # command's own error through): the traceback, exit 1; a KeyboardInterrupt: death by SIGINT
        try:
            sys.excepthook(type(exc), exc, exc.__traceback__)
        except BaseException:  # noqa: BLE001
            pass
        code = 1
        if isinstance(exc, KeyboardInterrupt):
            _finish(code)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        code = _finish(code)
        try:  # said by the command itself: its exit (unmapping ~100 MB) would take ~10 ms more
            conn.sendall(f"X{code}\n".encode())
        except BaseException:  # noqa: BLE001 - the server says it once the process ended
            pass
        os._exit(code)


def _command_message(conn: socket.socket) -> tuple[list, dict, list[int]]:
    """The caller's arguments, environment and fds 0-2 (:func:`archfleet.serverclient.command`);
    a caller that closes the socket first (it gave up waiting, or died), or a message that is
    not one, ends this process: nothing ran."""
    import array

    conn.settimeout(REQUEST_SECONDS)
    data, fds = b"", []
    try:
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            if len(data) >= 4 and int.from_bytes(data[:4], "big") > serverclient.MAX_MESSAGE:
                os._exit(70)
            chunk, anc, _flags, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(3 * 4))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
                    fds.extend(got)
            if not chunk:
                os._exit(70)
            data += chunk
        message = json.loads(data[4:4 + int.from_bytes(data[:4], "big")])
    except (OSError, ValueError):
        os._exit(70)
    conn.settimeout(10)
    if len(fds) != 3 or not isinstance(message, dict) or not isinstance(message.get("argv"), list) \
            or not isinstance(message.get("env"), dict):
        os._exit(70)
    return message["argv"], message["env"], fds


def _finish(code: int) -> int:
    """What the interpreter does at exit, in its order: wait for non-daemon threads (and run
    what they registered), the atexit callbacks, flush the standard streams."""
    try:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
        import atexit

        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    return code if 0 <= code <= 255 else 1


def _stdio(how: dict) -> None:
    """sys.stdin/stdout/stderr over fds 0-2, set up as the caller's were."""
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        spec = how.get(name) or {}
        try:
            stream = open(fd, mode, encoding=spec.get("encoding") or "utf-8", errors=spec.get("errors") or "strict",
                          closefd=False, buffering=-1, newline=None if mode == "r" else "\n")
        except (OSError, LookupError, ValueError):
            continue
        if mode == "w":
            stream.reconfigure(line_buffering=bool(spec.get("line_buffering")),
                               write_through=bool(spec.get("write_through")))
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _watch(conn: socket.socket) -> None:
    """The caller's signals, raised here; the caller gone is a SIGTERM."""
    conn.settimeout(None)
    buffer = b""
    while True:
        try:
            chunk = conn.recv(64)
        except OSError:
            chunk = b""
        if not chunk:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        buffer += chunk
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            if line.startswith(b"S") and line[1:].isdigit() and int(line[1:]) in serverclient.SIGNALS:
                os.kill(os.getpid(), int(line[1:]))


# -- start, stop, status (the ``archfleet server`` command) ------------------------------------

class ServerProblem(Exception):
    """One line for ``archfleet server``."""


def ask(what: str, timeout: float = 5.0, path: str | None = None) -> dict | None:
    """A control request (``status`` or ``stop``) to the server on ``path`` (this install's for
    this context); its answer, or None when none runs. Raises :class:`ServerProblem` for one
    that took the request and did not answer within ``timeout`` seconds (a stopped or hung
    server: commands wait for it)."""
    directory = serverclient.runtime_dir()
    if not serverclient.private_dir(directory):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    path = path or serverclient.socket_path()
    try:
        conn.connect(path)
        body = json.dumps({"control": what}).encode()
        conn.sendall(len(body).to_bytes(4, "big") + body)
        line = serverclient._Lines(conn).next(raise_timeout=True)
    except TimeoutError:
        raise ServerProblem(f"the server on {path} took the request and did not answer within {timeout:g} s "
                            f"(stopped? see {log_path(path)}); commands pass it by after "
                            f"{serverclient.FIRST_LINE_SECONDS:g} s, ARCHFLEET_SERVER=0 at once") from None
    except OSError:
        return None
    finally:
        conn.close()
    if not line or not line.startswith("I"):
        return None
    return json.loads(line[1:])


def start(idle: float) -> dict:
    """Start this install's server for this context in the background (its own session, its
    log beside its socket, :func:`archfleet.serverclient.server_env`) unless one answers; its
    :func:`ask` status. Raises :class:`ServerProblem`."""
    running = ask("status")
    if running and running.get("stopping"):
        raise ServerProblem(f"the server (pid {running['pid']}) is stopping ({running['stopping']}); "
                            f"start one again once it has ended (archfleet server status)")
    if running:
        return dict(running, already=True)
    directory = _make_runtime_dir()
    import subprocess

    with open(os.open(log_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "archfleet.server", "--idle", str(idle), "--context",
                                 serverclient.context_key()],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                cwd="/", env=serverclient.server_env())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = ask("status")
        if status:
            return status
        if proc.poll() not in (None, 0):  # 0: another start's server took the lock; wait for it
            raise ServerProblem(f"the server exited with code {proc.returncode} at start (see {log_path()})")
        time.sleep(0.05)
    raise ServerProblem(f"the server did not answer within 30 s (see {log_path()}, in {directory})")


def _make_runtime_dir() -> str:
    directory = serverclient.runtime_dir()
    if len(os.fsencode(serverclient.socket_path())) > 107:  # sockaddr_un's sun_path, with its NUL
        raise ServerProblem(f"the socket path under {directory} is longer than a Unix socket's 107 bytes: "
                            f"set XDG_RUNTIME_DIR to a shorter directory")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ServerProblem(f"cannot make {directory}: {exc.strerror}") from None
    if not serverclient.private_dir(directory):
        raise ServerProblem(f"{directory} must be a directory of uid {os.getuid()} that no one else may enter "
                            f"(mode 0700, not a link): fix or remove it")
    return directory


def main(argv: list[str] | None = None) -> int:
    """``python -m archfleet.server --idle SECONDS [--context KEY]``: serve in the foreground
    until stopped; with ``--context``, only when this process's context has that key (the
    caller's: exit 3 when not, as a server no caller would reach)."""
    ap = argparse.ArgumentParser(prog="python -m archfleet.server")
    ap.add_argument("--idle", type=int, choices=range(1, MAX_IDLE + 1), metavar=f"1..{MAX_IDLE}", default=IDLE_SECONDS)
    ap.add_argument("--context", metavar="KEY")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a command ending ignores it, and started this one
    os.chdir("/")  # holds no directory of the starter's busy (a mount)
    with contextlib.suppress(OSError):
        if os.fstat(2).st_size > LOG_BYTES:  # the log (stderr, appended to): from here on
            os.ftruncate(2, 0)
    text = serverclient.context()
    key = serverclient.context_key(text)
    if args.context is not None and args.context != key:
        _log(f"not serving: this process's context {key} is not its caller's {args.context} "
             f"(Python options the server does not take?)")
        return 3
    try:
        directory = _make_runtime_dir()
    except ServerProblem as exc:
        _log(str(exc))
        return 2
    if not hasattr(os, "pidfd_open"):
        _log("needs os.pidfd_open (Linux 5.3 or later)")
        return 3
    path = serverclient.socket_path(key)
    # held for the server's life (not by its commands' processes): two starts at once would
    # each remove the other's socket
    lock = os.open(path[:-len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _log("a server of this install is already running or starting")
        return 0
    with contextlib.suppress(OSError):
        os.unlink(path)  # a socket left by a server that died: nobody holds the lock
    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    _log(f"serving on {path} (idle timeout {args.idle:g} s) in {directory}")
    server = Server(listener, path, args.idle, text)
    server.lock = lock
    try:
        server.serve()
    finally:
        _unlink_if_ours(path, server.inode)
    _log(f"stopped after {server.served} command(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
