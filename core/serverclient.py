"""The console script's side of :mod:`archfleet.server`: hand this command to a running server of
the same install, or say that none will run it (the command then runs in this process).

Kept small on purpose: it is imported before anything else of archfleet's, and what it imports
(``os``, ``socket``, ``signal``, ``json``) is what a Python process has loaded anyway or costs
~3 ms. The protocol, all on one Unix stream socket (:func:`socket_path`):

- request, one ``sendmsg``: ``<length:4 bytes big-endian><JSON>`` with this process's fds 0, 1
  and 2 as SCM_RIGHTS; the JSON holds ``argv``, ``cwd``, ``umask``, ``env`` (strings; bytes that
  are not UTF-8 as surrogate escapes, ``ensure_ascii``) and how ``stdio`` was set up here
  (encoding, errors, line buffering);
- the server answers one line: ``P<pid>`` (the command runs in process ``pid``), or ``F<why>``
  (not run: stale server, refused; the caller runs it itself);
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
ENV_SWITCH = "ARCHFLEET_SERVER"  # "0": never use a server (the tests set it; a user may)


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
    exe = os.stat(os.path.realpath(sys.executable))
    pkg = os.stat(os.path.dirname(os.path.abspath(__file__)))
    return f"{exe.st_dev:x}-{exe.st_ino:x}-{pkg.st_dev:x}-{pkg.st_ino:x}"


def socket_path() -> str:
    """The socket of this user's server for this install (:func:`install_key`)."""
    return os.path.join(runtime_dir(), f"server-{install_key()}.sock")


def wanted(argv: list[str]) -> bool:
    """Whether to look for a server at all: not with ``ARCHFLEET_SERVER=0``, not for the
    ``server`` command itself."""
    return os.environ.get(ENV_SWITCH) != "0" and not (len(argv) > 1 and argv[1] == "server")


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


def request(argv: list[str]) -> bytes:
    """The request for ``argv`` as sent (length and JSON)."""
    import json

    body = json.dumps({"argv": argv, "cwd": os.getcwd(), "umask": _umask(), "env": dict(os.environ),
                       "stdio": _stdio(), "ignored": ignored()}).encode("ascii")
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
    directory = runtime_dir()
    if not private_dir(directory):
        return None
    path = os.path.join(directory, f"server-{install_key()}.sock")
    if not os.path.exists(path):
        return None
    try:
        for fd in (0, 1, 2):  # a closed one: the socket would take its number and be sent as it
            os.fstat(fd)
    except OSError:
        return None
    import socket

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        conn.sendmsg([request(argv)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        bytes(memoryview(_fds()).cast("B")))])
    except OSError:
        conn.close()
        return None
    lines = _Lines(conn)
    first = _first_line(conn, lines, pressed)
    if first is not None and first[:1] in ("X", "K"):
        return _ended(first)  # the command ran and said its end before the server said it started
    if first is None or not first.startswith("P") or not first[1:].isdigit():
        conn.close()
        return None  # "F...": the server would not run it (stale, refused): run it here
    return _wait(conn, lines, pressed, int(first[1:]))


def _first_line(conn, lines: "_Lines", pressed) -> str | None:
    """The server's first line. A Ctrl-C or SIGTERM while waiting for it (a server that does not
    answer: stopped, swamped) ends this command as one before its run would: the one line, 130
    (closing the socket stops a command the server may have started: SIGTERM)."""
    conn.settimeout(0.1)
    try:
        while True:
            try:
                return lines.next(raise_timeout=True)
            except TimeoutError:
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
