"""The console script's side of :mod:`archfleet.server`: hand this command to a running server of
the same install and context, or say that none will run it (the command then runs in this
process and, by default, starts one as it exits: :func:`mode`, :func:`start_in_background`).

Kept small on purpose: it is imported before anything else of archfleet's, and what it imports
(``os``, ``socket``, ``signal``, ``json``) is what a Python process has loaded anyway or costs
~3 ms. The protocol, all on one Unix stream socket (:func:`socket_path`):

- request: ``<length:4 bytes big-endian><JSON>`` holding ``cwd``, ``umask``, how ``stdio`` was
  set up here (encoding, errors, line buffering), the signals ``ignored`` here and the
  ``context`` (:func:`context`): nothing secret, no fds;
- the server answers one line: ``P<pid>`` (the command runs in process ``pid``), or ``F<why>``
  (not run: stale server, other context, refused; the caller runs it itself); none within
  :data:`FIRST_LINE_SECONDS`: the caller runs it itself;
- after ``P``, one ``sendmsg`` to the command's process: ``<length><JSON {"argv", "env"}>``
  (strings; bytes that are not UTF-8 as surrogate escapes, ``ensure_ascii``) with this
  process's fds 0, 1 and 2 as SCM_RIGHTS (:func:`command`); the process runs nothing before;
- this side then sends ``S<signum>`` lines for each SIGINT, SIGTERM, SIGHUP, SIGQUIT or SIGWINCH it gets
  (the command's process raises them on itself, so Ctrl-C means what it means without a server);
  closing the socket is a SIGTERM;
- the server's last line: ``X<code>`` (the command exited) or ``K<signum>`` (it was killed by
  that signal; this process then dies of the same signal)."""

from __future__ import annotations

import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)
ENV_SWITCH = "ARCHFLEET_SERVER"  # see mode(); "0": never use a server (the tests set it; a user may)
IDLE_SECONDS = 900  # a server's default --idle (one started by a command, or by ``server start``)
MAX_MESSAGE = 4 << 20  # bytes: a command's arguments and environment as sent (larger: run here)
FIRST_LINE_SECONDS = 10.0  # a server that has not said it took the command by then is passed by
MAX_STARTED = 4  # servers of an install running at once, beyond which a command starts no more
# the variables that shape the interpreter itself (CPython's and glibc's loader's, by name): part
# of the context, and kept in a server's own environment
INTERPRETER_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "PYTHONUSERBASE",
                   "PYTHONPLATLIBDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONIOENCODING",
                   "PYTHONUTF8", "PYTHONCOERCECLOCALE", "PYTHONWARNINGS", "PYTHONHASHSEED", "PYTHONOPTIMIZE",
                   "PYTHONDEBUG", "PYTHONVERBOSE", "PYTHONUNBUFFERED", "PYTHONDEVMODE", "PYTHONMALLOC",
                   "PYTHONMALLOCSTATS", "PYTHONFAULTHANDLER", "PYTHONTRACEMALLOC", "PYTHONPROFILEIMPORTTIME",
                   "PYTHONASYNCIODEBUG", "PYTHONINTMAXSTRDIGITS", "PYTHONNODEBUGRANGES", "PYTHONBREAKPOINT",
                   "PYTHONEXECUTABLE", "LD_LIBRARY_PATH", "LD_PRELOAD", "LD_AUDIT", "LD_BIND_NOW", "LD_BIND_NOT",
                   "LD_ASSUME_KERNEL", "LD_DYNAMIC_WEAK", "LD_HWCAP_MASK", "LD_ORIGIN_PATH", "LD_POINTER_GUARD",
                   "LD_PROFILE", "LD_USE_LOAD_BIAS", "GLIBC_TUNABLES")
LOCALE_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES", "LC_MONETARY", "LC_NUMERIC",
              "LC_TIME", "LC_ADDRESS", "LC_IDENTIFICATION", "LC_MEASUREMENT", "LC_NAME", "LC_PAPER", "LC_TELEPHONE")
# what a server keeps of the environment it was started with (its commands get their callers'
# whole one): what runs Python as the caller does, by name, nothing that may be a credential
# (coverage.py's, for the test suite's measuring)
SERVER_ENV = ("PATH", "HOME", "USER", "LOGNAME", "TZ", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME",
              "XDG_CONFIG_HOME", "XDG_DATA_HOME", *LOCALE_ENV, *INTERPRETER_ENV, "COV_CORE_SOURCE", "COV_CORE_CONFIG",
              "COV_CORE_DATAFILE", "COV_CORE_BRANCH", "COV_CORE_CONTEXT", "COVERAGE_PROCESS_START",
              "COVERAGE_PROCESS_CONFIG", "COVERAGE_RCFILE", "COVERAGE_FILE")


def mode() -> str:
    """How commands use a server, from ``ARCHFLEET_SERVER``: ``auto`` (unset, ``auto`` or ``1``:
    run in this context's server when one runs, else here, and start one in the background
    once this command has ended, as Gradle's and sccache's daemons start), ``manual`` (use one
    ``archfleet server start`` started, never start one) or ``off`` (``0``, ``off``, ``no``,
    ``false`` and any other value: never use one)."""
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value in ("", "auto", "1"):
        return "auto"
    return "manual" if value == "manual" else "off"


def runtime_dir() -> str:
    """Where this user's servers keep their sockets: ``archfleet`` in
    :func:`archfleet.cachedir.runtime_dir` (``$XDG_RUNTIME_DIR``) when there is one, else
    ``/tmp/archfleet-<uid>`` (as tmux does). Checked by :func:`private_dir`."""
    from .cachedir import runtime_dir as base

    run = base()
    return os.path.join(run, "archfleet") if run is not None else f"/tmp/archfleet-{os.getuid()}"


def private_dir(path: str) -> bool:
    """Whether ``path`` is a real directory (not a link) owned by this user with no access for
    others: only then may a socket in it be trusted, or one be put there."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def install_key() -> str:
    """Which install a server serves: the device and inode of the running interpreter and of
    this package's directory (another virtualenv or checkout has its own server)."""
    try:
        exe = os.stat(os.path.realpath(sys.executable))
    except OSError:  # a base interpreter in a directory this user may not enter: the venv's link
        exe = os.lstat(sys.executable)
    pkg = os.stat(os.path.dirname(os.path.abspath(__file__)))
    return f"{exe.st_dev:x}-{exe.st_ino:x}-{pkg.st_dev:x}-{pkg.st_ino:x}"


def context() -> str:
    """What a process is run in, beyond its environment, working directory, umask and fds (which
    a request carries): one ``name value`` line each for its user and group ids and
    supplementary groups, the audit login uid, each namespace, its root directory, cgroup, LSM
    label, capabilities, no_new_privs, seccomp mode and filter count, speculation controls, THP
    setting, allowed CPUs and memory nodes, OOM score adjustment, core dump filter, timer slack,
    execution domain (``personality``: ``setarch i686`` makes ``uname -m`` say i686), scheduling
    policy, real-time priority, nice value, CPU affinity, resource limits, Python's options and
    the environment that shapes the interpreter itself (:data:`INTERPRETER_ENV`, the locale's
    character set). The I/O priority, which no file shows, the server compares itself
    (:func:`archfleet.server.ioprio`). Not compared, as no file shows them: Landlock rules, the
    NUMA memory policy, which seccomp filter is loaded. A fork of the server has the
    server's, not its caller's: a server serves only callers whose context is its own (its
    socket's name holds :func:`context_key`; it compares the whole text), so a command never
    runs with another cgroup's limits, another network namespace or another login's audit id
    than it would on its own. Costs ~1 ms."""
    import resource

    lines = [f"ids {os.getuid()} {os.geteuid()} {os.getgid()} {os.getegid()}",
             f"groups {' '.join(map(str, sorted(os.getgroups())))}"]
    for ns in ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"):
        try:
            lines.append(f"ns.{ns} {os.readlink(f'/proc/self/ns/{ns}')}")
        except OSError:
            lines.append(f"ns.{ns} -")
    root = os.stat("/")
    lines.append(f"root {root.st_dev}:{root.st_ino}")
    for name in ("loginuid", "cgroup", "attr/current", "oom_score_adj", "coredump_filter", "timerslack_ns",
                 "personality"):
        lines.append(f"{name} {_read(f'/proc/self/{name}')}")
    status = _read("/proc/self/status")
    lines += [line.replace("\t", " ") for line in status.splitlines()
              if line.startswith(("Cap", "NoNewPrivs", "Seccomp", "Speculation", "THP_enabled", "Cpus_allowed_list",
                                  "Mems_allowed_list"))]
    stat = _read("/proc/self/stat").rpartition(")")[2].split()  # from field 3 (state) on: proc(5)
    lines.append(f"sched {' '.join(stat[37:39])}")  # rt_priority, policy
    lines.append(f"nice {os.getpriority(os.PRIO_PROCESS, 0)}")
    lines.append(f"affinity {' '.join(map(str, sorted(os.sched_getaffinity(0))))}")
    for name in sorted(n for n in dir(resource) if n.startswith("RLIMIT_")):
        try:
            lines.append(f"{name.lower()} {resource.getrlimit(getattr(resource, name))}")
        except (OSError, ValueError):
            pass
    lines.append(f"python {sys.flags!r} {sorted(sys._xoptions.items())!r} {sys.warnoptions!r} "
                 f"{sys.getfilesystemencoding()}")
    env = os.environ
    lines.append("ctype " + (env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""))
    lines += [f"env {k}={env[k]}" for k in sorted(INTERPRETER_ENV) if k in env]
    return "\n".join(lines)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "-"


def context_key(text: str | None = None) -> str:
    """8 hex digits naming :func:`context` (``text``) in a socket's name (CRC-32: which server
    to ask; the server compares the whole text)."""
    import zlib

    return f"{zlib.crc32((context() if text is None else text).encode()):08x}"


def socket_path(key: str | None = None) -> str:
    """The socket of this user's server for this install (:func:`install_key`) and this context
    (:func:`context_key`, or ``key``)."""
    return os.path.join(runtime_dir(), f"server-{install_key()}-{key or context_key()}.sock")


def sockets() -> list[str]:
    """The sockets of every server of this user's for this install, whatever its context."""
    directory = runtime_dir()
    if not private_dir(directory):
        return []
    prefix = f"server-{install_key()}-"
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.startswith(prefix) and n.endswith(".sock"))


def wanted(argv: list[str]) -> bool:
    """Whether to look for a server at all: not in :func:`mode` ``off``, not for the ``server``
    command itself."""
    return mode() != "off" and not (len(argv) > 1 and argv[1] == "server")


def starts_one(argv: list[str]) -> bool:
    """Whether this command, run here, starts a server when it ends (:func:`mode` ``auto``): one
    that ran a subcommand (not ``server``, not ``--help`` or ``--version`` alone)."""
    if mode() != "auto" or len(argv) < 2 or argv[1].startswith("-") or argv[1] == "server":
        return False
    return not any(a in ("-h", "--help") for a in argv[2:])


def server_env(env=None) -> dict[str, str]:
    """The environment a server process starts with (:data:`SERVER_ENV`)."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k in SERVER_ENV}


def interpreter_options(orig_argv: list[str], script: str) -> list[str]:
    """The options the interpreter was given before the script (``sys.orig_argv``; ``-X dev``,
    ``-W error``, ``-O``...), for a server started with the same ones: without them its
    context would not be the caller's (:func:`context`'s Python flags)."""
    options, i = [], 1
    while i < len(orig_argv):
        arg = orig_argv[i]
        if arg in ("-m", "-c", "-") or arg == script or not arg.startswith("-"):
            break
        options.append(arg)
        if arg in ("-X", "-W", "--check-hash-based-pycs") and i + 1 < len(orig_argv):
            options.append(orig_argv[i + 1])
            i += 1
        i += 1
    return options


def running(paths: list[str]) -> int:
    """How many of the servers whose sockets are ``paths`` run (hold their start lock)."""
    import fcntl

    count = 0
    for path in paths:
        try:
            fd = os.open(path[:-len(".sock")] + ".lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            count += 1
        finally:
            os.close(fd)
    return count


def runtime_problem() -> str | None:
    """Why servers are not used here, when the runtime dir exists and may not be trusted (a
    link, another owner, access for others); None otherwise."""
    directory = runtime_dir()
    if os.path.lexists(directory) and not private_dir(directory):
        return (f"{directory} is not a directory of uid {os.getuid()} that no one else may enter (mode 0700, "
                f"not a link), so no server is used: fix or remove it")
    return None


_asked_key: str | None = None  # run()'s context_key, for start_in_background


def start_in_background(idle: int = IDLE_SECONDS) -> None:
    """Start this context's server and return at once (``atexit``, :func:`starts_one`): its own
    session, its log beside its socket. Nothing when one runs or starts already (its lock is
    held), :data:`MAX_STARTED` of this install's run already (each network namespace, cgroup or
    login has its own), or the runtime dir cannot be private; never raises (the command's
    outcome is said)."""
    import fcntl

    try:
        directory = runtime_dir()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # the context this command had when it looked for a server, which the next one will
        # have; a server whose own differs (this process changed its limits...) exits at once
        key = _asked_key or context_key()
        path = socket_path(key)
        if not private_dir(directory) or len(os.fsencode(path)) > 107 or running(sockets()) >= MAX_STARTED:
            return
        from .server import ioprio

        if ioprio(os.getpid()) not in (0, None):  # ionice: not in the socket's key (no file shows it);
            return  # a server of it would refuse every caller of that key without one
        lock = os.open(path[:-len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at once: the server takes it
        except BlockingIOError:
            return
        finally:
            os.close(lock)
        import subprocess

        log = os.open(path[:-len(".sock")] + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                      0o600)
        try:
            options = interpreter_options(list(getattr(sys, "orig_argv", [])), sys.argv[0])
            proc = subprocess.Popen([sys.executable, *options, "-m", "archfleet.server", "--idle", str(idle),
                                     "--context", key], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, cwd="/", env=server_env())
            # not waited for: it outlives this process (then init's child); said done, so Popen's
            # finalizer neither warns (ResourceWarning under -X dev) nor keeps it to reap
            proc.returncode = 0
        finally:
            os.close(log)
    except Exception:  # noqa: BLE001 - a server is a saving, never a failure
        pass


def _stdio() -> dict:
    out = {}
    for name in ("stdin", "stdout", "stderr"):
        stream = getattr(sys, name)
        out[name] = {"encoding": getattr(stream, "encoding", None) or "utf-8",
                     "errors": getattr(stream, "errors", None) or "strict",
                     "line_buffering": bool(getattr(stream, "line_buffering", False)),
                     "write_through": bool(getattr(stream, "write_through", False))}
    return out


def ignored() -> list[int]:
    """The signals of :data:`SIGNALS` (and SIGTSTP) this process ignores, as it inherited them
    (``nohup``: SIGHUP; a background job of a script: SIGINT, SIGQUIT): the command ignores them
    too, and they are not forwarded."""
    return [int(s) for s in (*SIGNALS, signal.SIGTSTP) if signal.getsignal(s) == signal.SIG_IGN]


def request(text: str | None = None) -> bytes:
    """The request as sent (length and JSON); ``text``: this process's :func:`context`, when
    known. It holds neither the arguments nor the environment nor fds (:func:`command`)."""
    import json

    body = json.dumps({"cwd": os.getcwd(), "umask": _umask(), "stdio": _stdio(),
                       "ignored": ignored(), "context": context() if text is None else text}).encode("ascii")
    return len(body).to_bytes(4, "big") + body


def command(argv: list[str]) -> bytes:
    """``argv`` and this process's environment as sent, with fds 0-2 as SCM_RIGHTS, to the
    command's process once it exists (``P``), so the server itself never holds them (build-arg
    values, tokens) and a stopped server holds no pipe open: ``<length:4 bytes
    big-endian><JSON {"argv", "env"}>``."""
    import json

    body = json.dumps({"argv": argv, "env": dict(os.environ)}).encode("ascii")
    return len(body).to_bytes(4, "big") + body


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def run(argv: list[str], pressed=None) -> int | None:
    """Run ``argv`` (``sys.argv``) in this user's server for this install; its exit code, or
    None when no server ran it (none is running, or it said no): the caller runs it itself.
    Never raises for a missing or stale server. ``pressed``: the console script's SIGINT and
    SIGTERM handler until now (:class:`archfleet.console.Pressed`); a signal it noted before the
    server took the command is forwarded first."""
    import socket

    try:
        directory = runtime_dir()
        if not private_dir(directory):
            return None
        text = context()
        global _asked_key
        _asked_key = context_key(text)
        path = socket_path(_asked_key)
        if not os.path.exists(path):
            return None
        message = command(argv)
        if len(message) > MAX_MESSAGE:
            return None  # an environment of megabytes: run here
        for fd in (0, 1, 2):  # a closed one: the socket would take its number and be sent as it
            os.fstat(fd)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        conn.connect(path)
        peer = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        if int.from_bytes(peer[4:8], sys.byteorder) != os.getuid():  # struct ucred: pid, uid, gid
            conn.close()
            return None  # not this user's server: it gets neither the fds nor the environment
        conn.sendall(request(text))
    except OSError:
        conn.close()
        return None
    lines = _Lines(conn)
    first = _first_line(conn, lines, pressed, path)
    if first is not None and first[:1] in ("X", "K"):
        return _ended(first)  # the command ran and said its end before the server said it started
    if first is None or not first.startswith("P") or not first[1:].isdigit():
        conn.close()
        return None  # "F...": the server would not run it (stale, refused): run it here
    try:  # the command's process waits for it before anything
        conn.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview(_fds()).cast("B")))])
    except OSError:
        pass  # the server went: said by _wait
    return _wait(conn, lines, pressed, int(first[1:]))


def _first_line(conn, lines: "_Lines", pressed, path: str = "") -> str | None:
    """The server's first line, or None when there is none within :data:`FIRST_LINE_SECONDS`
    (a stopped or swamped server: said in one warning line, and the command runs here; a fork
    the server makes later finds the socket closed before it got the environment, and ends
    without running anything). A Ctrl-C or SIGTERM while waiting ends this command as one before
    its run would: the one line, 130."""
    import time

    conn.settimeout(0.1)
    deadline = time.monotonic() + FIRST_LINE_SECONDS
    try:
        while True:
            try:
                return lines.next(raise_timeout=True)
            except TimeoutError:
                if time.monotonic() > deadline:
                    conn.close()
                    sys.stderr.write(f"archfleet: warning: the archfleet server on {path} did not answer within "
                                     f"{FIRST_LINE_SECONDS:g} s (stopped? 'archfleet server status'); running the "
                                     f"command here\n")
                    sys.stderr.flush()
                    return None
                if pressed is not None and pressed.count:
                    conn.close()
                    sys.stderr.write(f"archfleet: error: {_word(pressed.signum)}\n")
                    sys.stderr.flush()
                    os._exit(130)
    finally:
        if conn.fileno() >= 0:
            conn.settimeout(None)


def _word(signum) -> str:
    return "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"


def _fds():
    import array

    return array.array("i", [0, 1, 2])


class _Lines:
    """The server's lines, one at a time (blocking)."""

    def __init__(self, conn):
        self.conn, self.buffer = conn, b""

    def next(self, raise_timeout: bool = False) -> str | None:
        while b"\n" not in self.buffer:
            try:
                chunk = self.conn.recv(256)
            except TimeoutError:
                if raise_timeout:
                    raise
                return None
            except OSError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("ascii", "replace")


def _wait(conn, lines: _Lines, pressed=None, pid: int | None = None) -> int:
    """Forward signals until the server says how the command ended. Ctrl-Z (SIGTSTP) stops the
    command's process ``pid``, then this one (the shell sees the job stopped); SIGCONT (``fg``,
    ``bg``) continues it. A signal this process ignores is neither handled nor forwarded."""
    def forward(signum, frame):
        try:
            conn.sendall(f"S{signum}\n".encode())
        except OSError:
            pass

    def stop(signum, frame):
        _signal(pid, signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stops here until a SIGCONT
        signal.signal(signal.SIGTSTP, stop)
        resume(signal.SIGCONT, None)

    def resume(signum, frame):
        _signal(pid, signal.SIGCONT)

    skip = set(ignored())
    for signum in SIGNALS:
        if signum not in skip:
            signal.signal(signum, forward)
    if signal.SIGTSTP not in skip:
        signal.signal(signal.SIGTSTP, stop)
    signal.signal(signal.SIGCONT, resume)
    if pressed is not None and pressed.count:
        forward(pressed.signum or signal.SIGINT, None)
    while True:
        line = lines.next()
        if line is None:
            sys.stderr.write("archfleet: error: the archfleet server stopped before the command ended "
                             "(see 'archfleet server status')\n")
            return 70
        if line[:1] in ("X", "K"):
            return _ended(line)


def _ended(line: str) -> int:
    """The exit code for the server's last line: ``X<code>`` is it; ``K<signum>`` kills this
    process with the same signal (128 + signum if that does not end it)."""
    if line.startswith("X"):
        return int(line[1:])
    signum = int(line[1:])
    for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)
    sys.stdout.flush()
    os.kill(os.getpid(), signum)
    return 128 + signum


def _signal(pid: int | None, signum: int) -> None:
    """``signum`` to the command's process, which may have ended."""
    if pid is not None:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
