"""Build-slot leases on a node, so that archfleet runs sharing a node see each other's builds.

A run that starts a build on a node leaves a lease there (one small file: the start time in the
node's clock, the estimate in seconds and a heartbeat the run renews every 20 s) and removes it
when the build frees its slot. A probe reads the node's leases: each live one is a slot busy for
about ``estimate - elapsed`` more seconds (and, once the build overruns its estimate, for a
tenth of the estimate more). The planner treats those slots as taken. A lease whose heartbeat
is older than 75 s belongs to a run that died or lost the node, and is ignored.

Where: ``/tmp/archfleet-leases/<engine key>/`` on the node (world-writable with the sticky bit,
like /tmp itself, so two users building on one engine see each other), keyed by the engine the
node's builds go to (its ``docker_host``), since that is the shared resource: two lab nodes on
one machine with their own engines do not share slots.

Leases are read from and written to a place any local user can write, so nothing there is
trusted (review finding 1, a symlink attack; finding 8, a denial of service):

- a directory is used only when it is a real directory (never a symlink: opened with
  ``O_NOFOLLOW``, or ``[ -L ]`` and ``stat`` in the node-side scripts) owned by this user or
  by root, and, when others may write in it, sticky. Only the last path component is created
  (``os.mkdir``, ``mkdir`` without ``-p``), and only a directory this run just made (a real
  directory, this user's) is ever chmod-ed: never an existing one, whatever it is;
- when ``/tmp/archfleet-leases`` or its per-engine directory fails the check (a symlink, a file,
  another user's directory), this user's leases go to a private directory instead:
  ``$XDG_RUNTIME_DIR/archfleet-leases`` (when that is set, this user's and writable by nobody
  else), else ``leases`` in the user's cache dir (``~/.cache/archfleet/leases``, or under
  ``$XDG_CACHE_HOME``: :mod:`archfleet.cachedir`), both mode 0700. The trade-off: leases then steer
  only this user's runs on that engine. So two users' runs see each other's leases only
  through directories root made (a run as root makes both levels, sticky and world-writable);
  a directory one user made sends every other user to a private one;
- lease files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (``set -C`` on the node) and
  renewed through a fresh temp file (``mkstemp``/``mktemp``) renamed over them; only regular
  files are read (``O_NOFOLLOW|O_NONBLOCK`` and ``S_ISREG``; ``[ -f ] && ! [ -L ]`` with
  ``head -c 64`` under ``timeout`` on the node), at most ``READ_BYTES`` bytes of each and at most
  ``MAX_FILES`` files, in a worker thread (never on the event loop);
- sweeping dead leases removes only this user's own files;
- a lease's numbers must be finite; an estimate counts for at most ``MAX_ESTIMATE``; a lease
  without a heartbeat counts for at most ``NO_BEAT_STALE`` seconds after its start, and one
  whose heartbeat is in the future (beyond ``CLOCK_SKEW``) not at all.

A lease's content is read as numbers and nothing else; a bad or foreign file is ignored.

A build *claims* its slot (:func:`claim`): under an exclusive ``flock`` of the lease directory
(``fcntl.flock`` on its fd here, ``flock -w 2`` on the node), it counts the live leases and
writes its own only when fewer than the node's ``max_builds`` are live, so two runs that start
at the same moment (both probes saw no lease) cannot both take the last slot: the second finds
the first's lease and waits. The lock is only ever waited on for 2 s (anyone who can read the
directory can hold it: past that the claim goes on unlocked), and on a node without ``flock(1)``
the count and the write are merely back to back. Counting in the node-side script takes a lease
as archfleet writes it (whole seconds; :func:`remaining` also reads a foreign file's decimals).
Failing to write or read a lease never fails a build.

Test hook: ``ARCHFLEET_LEASE_ROOT`` replaces ``/tmp/archfleet-leases`` (on every node) so a test
can use a fresh root without touching the one other runs on the machine use. It is not a
setting: the code path is the same as for the default root.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import math
import os
import secrets
import stat
import time
from typing import Iterable

import attrs

from . import cachedir
from .model import NodeSpec

ROOT = "/tmp/archfleet-leases"
ROOT_ENV = "ARCHFLEET_LEASE_ROOT"  # test hook (see the module docstring)
PRIVATE = "archfleet-leases"  # the private root's name in $XDG_RUNTIME_DIR (else the cache dir's leases/)
HEARTBEAT, STALE_BEAT = 20.0, 75.0
SWEEP_AGE = 600.0  # taking a lease removes this user's lease files untouched for this long
NO_BEAT_STALE = 600.0  # a lease without a heartbeat (a foreign file, an old archfleet) counts this long
MAX_ESTIMATE = 24 * 3600.0  # no lease says a slot is busy for longer than this
CLOCK_SKEW = 60.0  # a start or heartbeat further in the future than this is not believed
OVERRUN_SHARE = 0.1
READ_BYTES = 64  # a lease is "start estimate beat\n": 40 bytes at most in practice
MAX_FILES = 256  # lease files read per engine (a node has a few slots, not thousands)
MAX_WAIT = 300.0  # a build waits at most this long (or its own estimate) for other runs' slots


def shared_root() -> str:
    """The lease root every run on a node uses: ``/tmp/archfleet-leases`` (or the test hook)."""
    return os.environ.get(ROOT_ENV) or ROOT


# --- the node-side scripts ------------------------------------------------------------------
# Fixed scripts: the root ($1), engine key ($2) and lease name ($3) are ours (a constant and
# hex); the estimate ($4) a number we formatted. Every one starts with these functions, the
# shell twin of the Python checks below:
#   ok DIR   DIR is a real directory (no link), ours or root's, sticky if others may write in it
#   own DIR  ... and ours, and nobody else may write in it
#   mk DIR MODE  make DIR (the last component only; chmod-ed to MODE when this made it); then ok
#   priv     p = the private root ($XDG_RUNTIME_DIR/archfleet-leases, else the cache dir's leases:
#            $XDG_CACHE_HOME/archfleet/leases, else ~/.cache/archfleet/leases, as archfleet.cachedir)
#   pick ROOT KEY [make]  d = ROOT/KEY when both pass ok, else the private root's KEY (made 0700)
_PRELUDE = r"""u=$(id -u)
ok() {
  [ -d "$1" ] && ! [ -L "$1" ] || return 1
  set -- $(stat -c '%f %u' -- "$1" 2>/dev/null)
  [ $# = 2 ] || return 1
  m=$1; o=$2
  [ $((0x$m & 0xF000)) = $((0x4000)) ] || return 1
  [ "$o" = "$u" ] || [ "$o" = 0 ] || return 1
  [ $((0x$m & 0x12)) = 0 ] || [ $((0x$m & 0x200)) != 0 ]
}
own() { ok "$1" && [ "$o" = "$u" ] && [ $((0x$m & 0x12)) = 0 ]; }
mk() {
  if mkdir -- "$1" 2>/dev/null && [ -d "$1" ] && ! [ -L "$1" ] && [ -O "$1" ]; then chmod "$2" -- "$1"; fi
  ok "$1"
}
priv() {
  case $XDG_RUNTIME_DIR in /*) if own "$XDG_RUNTIME_DIR"; then p=$XDG_RUNTIME_DIR/archfleet-leases; return 0; fi;; esac
  case $XDG_CACHE_HOME in /*) p=$XDG_CACHE_HOME/archfleet/leases; return 0;; esac
  case $HOME in /*) p=$HOME/.cache/archfleet/leases;; *) return 1;; esac
}
pick() {
  if [ -n "$3" ]; then
    if mk "$1" 1777 && mk "$1/$2" 1777; then d=$1/$2; return 0; fi
    priv || return 1
    mkdir -p -- "${p%/*}" 2>/dev/null
    mk "$p" 700 && mk "$p/$2" 700 && d=$p/$2
    return
  fi
  if ok "$1" && ok "$1/$2"; then d=$1/$2; return 0; fi
  priv && ok "$p" && ok "$p/$2" && d=$p/$2
}
"""
# The claim: $4 the estimate, $5 the node's max_builds (0: take whatever is live). Under an
# exclusive flock of the lease directory (waited on for 2 s at most), the live leases are
# printed as READ_SCRIPT prints them and counted (live: whole-second start and heartbeat as
# archfleet writes them, the heartbeat at most 75 s old, none in the future beyond 60 s; without
# a heartbeat, started at most 600 s ago); the lease is written only when fewer than $5 are
# live, with noclobber (O_EXCL, never through a link); then this user's dead lease files (and
# only this user's: -user) in that one directory are swept. The last line says which:
# "claim=taken" or "claim=full".
_CLAIM = _PRELUDE + r"""pick "$1" "$2" make || exit 1
f=$d/$3
if [ -e "$f" ] || [ -L "$f" ]; then exit 1; fi
if command -v flock >/dev/null 2>&1 && (exec 9< "$d") 2>/dev/null; then exec 9< "$d"; flock -w 2 9 || true; fi
int() { case $1 in ''|*[!0-9]*|???????????*) return 1;; esac; }
now=$(date +%s); n=0; live=0
if command -v timeout >/dev/null 2>&1; then T="timeout 2"; else T=; fi
for g in "$d"/*; do
  [ -f "$g" ] && ! [ -L "$g" ] || continue
  n=$((n + 1)); [ $n -le 256 ] || break
  l=$($T head -c 64 -- "$g" 2>/dev/null | { read -r s e b _ && echo "$s $e $b"; }) || continue
  set -f; set -- "$1" "$2" "$3" "$4" "$5" $l; set +f
  [ $# -ge 7 ] || continue
  int "$6" || continue
  case $7 in ''|*[!0-9.]*|*.*.*|.*) continue;; esac
  [ $(($6 - now)) -le 60 ] || continue
  if [ $# -ge 8 ]; then
    int "$8" || continue
    [ $((now - $8)) -le 75 ] && [ $(($8 - now)) -le 60 ] || continue
    echo "lease=$now $6 $7 $8"
  else
    [ $((now - $6)) -le 600 ] || continue
    echo "lease=$now $6 $7"
  fi
  live=$((live + 1))
done
if [ "$5" != 0 ] && [ "$live" -ge "$5" ]; then echo claim=full; exit 0; fi
t=$(date +%s)
(set -C; echo "$t $4 $t" > "$f") 2>/dev/null || exit 1
chmod 644 -- "$f"
find "$d" -maxdepth 1 -type f -user "$u" -mmin +10 -exec rm -f -- {} + 2>/dev/null
echo claim=taken
"""
# Renewed through a fresh temp file (mktemp: O_EXCL, a random name; dot-files are skipped by
# the readers) renamed over the lease, never half-written; only a lease that is ours.
_BEAT = _PRELUDE + r"""pick "$1" "$2" || exit 0
f=$d/$3
[ -f "$f" ] && ! [ -L "$f" ] && [ -O "$f" ] || exit 0
l=$(head -c 64 -- "$f") || exit 0
set -f; set -- $l
[ $# -ge 2 ] || exit 0
case "$1$2" in *[!0-9.]*) exit 0;; esac
t=$(mktemp -- "$d/.lease.XXXXXX") || exit 0
if echo "$1 $2 $(date +%s)" > "$t" && chmod 644 -- "$t" && mv -f -- "$t" "$f"; then exit 0; fi
rm -f -- "$t"
"""
_DROP = _PRELUDE + r"""pick "$1" "$2" || exit 0
rm -f -- "$d/$3"
"""
# One "lease=now start estimate beat" line per lease in the lease directory of $1/$2: the tail
# of the probe's facts script. A file that is not a regular file is skipped; ``timeout`` bounds a read that races a file swapped for a FIFO.
READ_SCRIPT = _PRELUDE + r"""if [ -n "$2" ] && pick "$1" "$2"; then
  now=$(date +%s); n=0
  if command -v timeout >/dev/null 2>&1; then T="timeout 2"; else T=; fi
  for f in "$d"/*; do
    [ -f "$f" ] && ! [ -L "$f" ] || continue
    n=$((n + 1)); [ $n -le 256 ] || break
    $T head -c 64 -- "$f" 2>/dev/null | { read -r s e b _ && echo "lease=$now $s $e $b"; }
  done
fi
"""


def engine_key(node: NodeSpec) -> str:
    """Which engine the node's builds go to, as a directory name."""
    host = node.docker_host
    if host is None and node.transport == "local":
        host = os.environ.get("DOCKER_HOST")
    return hashlib.sha256((host or "unix:///var/run/docker.sock").encode()).hexdigest()[:16]


def remaining(now: float, start: float, estimate: float, beat: float | None = None) -> float | None:
    """Seconds until a lease's slot frees up (at most ``MAX_ESTIMATE``), or None when the lease is
    stale or makes no sense (a number not finite, a negative estimate, a start or heartbeat in
    the future, no heartbeat for ``NO_BEAT_STALE`` seconds, a heartbeat older than ``STALE_BEAT``)."""
    numbers = (now, start, estimate) if beat is None else (now, start, estimate, beat)
    if not all(math.isfinite(x) for x in numbers):
        return None
    if estimate < 0 or start - now > CLOCK_SKEW:
        return None
    estimate = min(estimate, MAX_ESTIMATE)
    elapsed = max(now - start, 0.0)
    if beat is not None:
        if now - beat > STALE_BEAT or beat - now > CLOCK_SKEW:
            return None
    elif elapsed > NO_BEAT_STALE:
        return None
    return round(max(estimate - elapsed, OVERRUN_SHARE * estimate), 1)


def parse(values: Iterable[str]) -> tuple[float, ...]:
    """``"now start estimate [heartbeat]"`` (the probe's ``lease=`` values) -> busy seconds, sorted."""
    out = []
    for value in values:
        try:
            numbers = [float(x) for x in value.split()[:4]]
        except ValueError:
            continue
        if len(numbers) < 3:
            continue
        left = remaining(*numbers)
        if left is not None:
            out.append(left)
    return tuple(sorted(out))


# This process's leases are named "<RUN>-<hex>".
RUN = f"{os.getpid()}{secrets.token_hex(4)}"


def _new_run() -> None:
    global RUN
    RUN = f"{os.getpid()}{secrets.token_hex(4)}"


os.register_at_fork(after_in_child=_new_run)  # each command archfleet server forks is its own run


# --- the local path: the same rules, through directory file descriptors ----------------------

class _Unusable(Exception):
    """A lease directory that fails the check (a link, not a directory, someone else's)."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _usable(st: os.stat_result, private: bool = False) -> bool:
    """``ok``/``own`` of the scripts: a directory, ours or root's (``private``: ours), and if
    group or others may write in it, sticky (``private``: nobody else may write)."""
    me = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        return False
    if private:
        return st.st_uid == me and not st.st_mode & 0o022
    return st.st_uid in (me, 0) and (not st.st_mode & 0o022 or bool(st.st_mode & stat.S_ISVTX))


def _subdir(parent: int, name: str, make: bool, mode: int) -> int | None:
    """An open fd of directory ``name`` in ``parent`` (made first when ``make``, then, when this
    call made it, chmod-ed to ``mode`` through the checked fd), None when it does not exist;
    raises _Unusable when it fails the check."""
    made = False
    if make:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            made = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise _Unusable(str(exc)) from exc
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if make:
            raise _Unusable(name) from None
        return None
    except OSError as exc:  # ELOOP (a symlink), ENOTDIR, EACCES
        raise _Unusable(str(exc)) from exc
    try:
        st = os.fstat(fd)
        if made and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            os.fchmod(fd, mode)
            st = os.fstat(fd)
        if not _usable(st):
            raise _Unusable(name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_pair(root: str, key: str, make: bool, mode: int) -> int | None:
    """fd of ``root/key`` (both levels checked, the last components made when ``make``)."""
    parent, name = os.path.split(os.path.abspath(root))
    try:
        top = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Unusable(str(exc)) from exc
    try:
        rfd = _subdir(top, name, make, mode)
    finally:
        os.close(top)
    if rfd is None:
        return None
    try:
        return _subdir(rfd, key, make, mode)
    finally:
        os.close(rfd)


def private_root() -> str | None:
    """This user's own lease root, used when the shared one fails the check:
    ``$XDG_RUNTIME_DIR/archfleet-leases`` when that variable names an absolute directory that is
    this user's and writable by nobody else, else ``leases`` in the user's cache dir
    (:func:`archfleet.cachedir.leases`: ``~/.cache/archfleet/leases``); None without either."""
    run = cachedir.runtime_dir()
    if run is not None:
        try:
            if _usable(os.lstat(run), private=True):
                return os.path.join(run, PRIVATE)
        except OSError:
            pass
    cache = cachedir.leases()
    return str(cache) if cache is not None else None


def _lease_dir(root: str, key: str, make: bool) -> int | None:
    """An open fd of the lease directory for engine ``key``: ``root/key`` when both pass the check,
    else the private root's ``key``; None when there is none (or, with ``make``, none could be made)."""
    try:
        fd = _open_pair(root, key, make, 0o1777)
        if fd is not None or make:
            return fd
    except _Unusable:
        pass
    private = private_root()
    if private is None:
        return None
    try:
        if make:
            os.makedirs(os.path.dirname(private), exist_ok=True)
        return _open_pair(private, key, make, 0o700)
    except (_Unusable, OSError):
        return None


def _write_new(dir_fd: int, name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o644)  # readable by the other users' runs whatever the umask
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read_one(dir_fd: int, name: str, own: bool = False) -> str | None:
    """At most READ_BYTES of ``name`` if it is a regular file (``own``: and ours); else None.
    Never blocks: a FIFO opens at once with O_NONBLOCK and is then refused by S_ISREG."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (own and st.st_uid != os.geteuid()):
            return None
        return os.read(fd, READ_BYTES).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _names(dir_fd: int) -> list[str]:
    out = []
    with os.scandir(dir_fd) as it:
        for entry in it:
            out.append(entry.name)
            if len(out) >= 4 * MAX_FILES:
                break
    return out


def read_local(node: NodeSpec, root: str | None = None) -> tuple[float, ...]:
    """The local node's leases, read directly (no process to start).
    Blocking (file system): call it in a thread."""
    return _read_key(root or shared_root(), engine_key(node))


def _read_key(root: str, key: str) -> tuple[float, ...]:
    fd = _lease_dir(root, key, make=False)
    if fd is None:
        return ()
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def _read_fd(fd: int) -> tuple[float, ...]:
    now = time.time()
    values = []
    try:
        for name in _names(fd):
            if name.startswith("."):
                continue
            text = _read_one(fd, name)
            if text is not None:
                values.append(f"{now} {text}")
            if len(values) >= MAX_FILES:
                break
    except OSError:
        pass
    return parse(values)


LOCK_WAIT = 2.0  # seconds a claim waits for the lease directory's lock before going on without it


def _lock(fd: int, wait: float = LOCK_WAIT) -> bool:
    """An exclusive ``flock`` of the directory ``fd`` (released when it is closed), waited on for
    ``wait`` seconds at most; False when it could not be had (anyone may hold it)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        except OSError:
            return False


def _sweep(dir_fd: int, now: float) -> None:
    """Remove this user's lease files (and beat temp files) untouched for ``SWEEP_AGE``."""
    me = os.geteuid()
    for name in _names(dir_fd):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_uid == me and not stat.S_ISDIR(st.st_mode) and now - st.st_mtime > SWEEP_AGE:
                os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass  # gone meanwhile


def _claim_local(root: str, key: str, name: str, estimate: float, cap: int) -> tuple[str | None, tuple[float, ...]]:
    """The claim (see the module docstring) in this machine's file system: (``name`` when the
    lease was written, else None; the busy seconds of the live leases it counted)."""
    fd = _lease_dir(root, key, make=True)
    if fd is None:
        return None, ()
    try:
        _lock(fd)
        busy = _read_fd(fd)
        if cap and len(busy) >= cap:
            return None, busy
        now = int(time.time())
        _write_new(fd, name, f"{now} {estimate:.1f} {now}\n")
        _sweep(fd, now)
        return name, busy
    except OSError:
        return None, ()
    finally:
        os.close(fd)  # and the lock with it


def _beat_local(root: str, key: str, name: str) -> None:
    fd = _lease_dir(root, key, make=False)
    if fd is None:
        return
    tmp = None
    try:
        text = _read_one(fd, name, own=True)
        if text is None:
            return
        start, estimate = text.split()[:2]
        float(start), float(estimate)
        tmp = f".lease.{secrets.token_hex(6)}"
        _write_new(fd, tmp, f"{start} {estimate} {int(time.time())}\n")
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        tmp = None
    except (OSError, ValueError):
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
        os.close(fd)


def _drop_local(root: str, key: str, name: str) -> None:
    fd = _lease_dir(root, key, make=False)
    if fd is None:
        return
    try:
        os.unlink(name, dir_fd=fd)  # unlink never follows a link
    except OSError:
        pass
    finally:
        os.close(fd)


def _estimate(estimate: float) -> float:
    return min(estimate, MAX_ESTIMATE) if math.isfinite(estimate) and estimate >= 0 else 0.0


class LocalLeases:
    """Leases in this machine's file system: the local node's lease store (no process to start;
    the rules above, through directory file descriptors, in a thread)."""

    async def claim(self, root: str, key: str, name: str, estimate: float,
                    cap: int) -> tuple[str | None, tuple[float, ...]]:
        """Write lease ``name`` only while fewer than ``cap`` leases are live (0: whatever is live),
        under the directory's lock: (its name or None, the live leases' busy seconds)."""
        return await asyncio.to_thread(_claim_local, root, key, name, estimate, cap)

    async def drop(self, root: str, key: str, name: str, timeout: float = 5) -> None:
        """Remove lease ``name`` (a lease of this user's only)."""
        await asyncio.to_thread(_drop_local, root, key, name)

    async def beat(self, root: str, key: str, name: str) -> None:
        """Renew lease ``name``'s heartbeat."""
        await asyncio.to_thread(_beat_local, root, key, name)


class ShellLeases:
    """Leases on a node reached by running commands: the fixed scripts above through
    ``transport.run`` (the lease store of :class:`archfleet.transport.CommandNode`). A node that
    does not answer never fails a build: nothing taken, nothing read."""

    def __init__(self, transport):
        self.transport = transport

    async def claim(self, root: str, key: str, name: str, estimate: float,
                    cap: int) -> tuple[str | None, tuple[float, ...]]:
        """As :meth:`LocalLeases.claim`, on the node (the ``_CLAIM`` script); (None, ()) when the
        node does not answer or has no lease directory."""
        lines: list[str] = []
        try:
            done = await self.transport.run(["sh", "-c", _CLAIM, "sh", root, key, name, f"{estimate:.1f}", str(cap)],
                                            on_line=lines.append, timeout=10)
        except Exception:
            return None, ()
        words = [l.strip() for l in lines]
        busy = parse(w[len("lease="):] for w in words if w.startswith("lease="))
        if not done.ok:
            return None, ()
        if "claim=taken" in words:
            return name, busy
        return None, busy if "claim=full" in words else ()

    async def drop(self, root: str, key: str, name: str, timeout: float = 5) -> None:
        """As :meth:`LocalLeases.drop`, on the node; waits at most ``timeout`` seconds."""
        try:
            await self.transport.run(["sh", "-c", _DROP, "sh", root, key, name], timeout=timeout)
        except Exception:
            pass

    async def beat(self, root: str, key: str, name: str) -> None:
        """As :meth:`LocalLeases.beat`, on the node."""
        try:
            await self.transport.run(["sh", "-c", _BEAT, "sh", root, key, name], timeout=10)
        except Exception:
            pass




@attrs.frozen
class Claim:
    """What :func:`claim` found: ``name`` of the lease it wrote (None when it wrote none),
    ``full`` when that is because the node's slots are all held (else the lease store did not
    answer: build without a lease, as before leases), ``busy`` the live leases' busy seconds."""
    name: str | None
    full: bool
    busy: tuple[float, ...] = ()


async def claim(transport, node: NodeSpec, estimate: float, cap: int, root: str | None = None) -> Claim:
    """Claim one of ``node``'s ``cap`` build slots (``node.max_builds``; 0: take one whatever
    is held): a lease is written, under the lease directory's lock, only while fewer than
    ``cap`` live leases are there (this run's own builds' included). See the module docstring."""
    name = f"{RUN}-{secrets.token_hex(6)}"
    got, busy = await transport.leases.claim(root or shared_root(), engine_key(node), name, _estimate(estimate),
                                             max(cap, 0))
    return Claim(got, got is None and cap > 0 and len(busy) >= cap, busy)


async def take(transport, node: NodeSpec, estimate: float, root: str | None = None) -> str | None:
    """Leave a lease for one build slot on ``node`` whatever is held there (:func:`claim` with no
    cap); its name (for :func:`drop`), None if it could not."""
    return (await claim(transport, node, estimate, 0, root)).name


async def drop(transport, node: NodeSpec, name: str | None, root: str | None = None, timeout: float = 5) -> None:
    """Remove lease ``name`` (from :func:`take`; None does nothing)."""
    if name is not None:
        await transport.leases.drop(root or shared_root(), engine_key(node), name, timeout)


async def beat(transport, node: NodeSpec, name: str, root: str | None = None) -> None:
    """Renew a lease's heartbeat (the run holding it is alive)."""
    await transport.leases.beat(root or shared_root(), engine_key(node), name)


def wait_limit(busy: Iterable[float], own_estimate: float) -> float:
    """How long a build waits for slots other runs hold before building anyway (seconds): twice
    the longest wait the probe saw, a minute at least, and at most ``MAX_WAIT`` or the build's
    own estimate, whichever is longer (waiting longer than the build takes does not pay)."""
    longest = max((b for b in busy if math.isfinite(b)), default=0.0)
    return min(max(60.0, 2 * longest), max(MAX_WAIT, _estimate(own_estimate)))


class Held:
    """One lease from its :func:`claim` to dropping it: renewed every ``HEARTBEAT`` seconds
    meanwhile. ``name`` None (the lease store did not answer): nothing to renew or drop."""

    def __init__(self, transport, node: NodeSpec, name: str | None, root: str | None = None):
        self.transport, self.node, self.root, self.name = transport, node, root or shared_root(), name
        self._renewing = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        while self.name is not None:
            await asyncio.sleep(HEARTBEAT)
            await beat(self.transport, self.node, self.name, self.root)

    async def release(self, timeout: float = 5) -> None:
        """Stop renewing and drop the lease (waiting at most ``timeout`` seconds for the node); never raises."""
        self._renewing.cancel()
        await asyncio.gather(self._renewing, return_exceptions=True)
        await drop(self.transport, self.node, self.name, self.root, timeout)
