"""Build-slot leases on a node, so that archfleet runs sharing a node see each other's builds.

A run that starts a build on a node leaves a lease there (one small file: the start time in the
node's clock, the estimate in seconds and a heartbeat the run renews every 20 s) and removes it
when the build frees its slot. A probe reads the node's leases: each live one is a slot busy for
about ``estimate - elapsed`` more seconds (and, once the build overruns its estimate, for a
tenth of the estimate more). The planner treats those slots as taken. A lease whose heartbeat
is older than 75 s belongs to a run that died or lost the node, and is ignored.

Leases live in ``/tmp/archfleet-leases/<engine key>/`` on the node (world-writable with the
sticky bit, like /tmp itself, so two users building on one engine see each other), keyed by the
engine the node's builds go to (its ``docker_host``), since that is the shared resource: two
lab nodes on one machine with their own engines do not share slots. A lease's content is read
as numbers and nothing else; a bad or foreign file is ignored. Leases steer the plan; they do
not lock anything, and failing to write or read one never fails a build.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Iterable

from .model import NodeSpec

ROOT = "/tmp/archfleet-leases"
HEARTBEAT, STALE_BEAT = 20.0, 75.0
SWEEP_AGE = 600.0  # taking a lease removes (its user's) lease files untouched for this long
STALE_FACTOR, STALE_GRACE = 3.0, 600.0  # for a lease without a heartbeat
OVERRUN_SHARE = 0.1

# Fixed scripts: the root ($1), engine key ($2) and lease name ($3) are ours (a constant and
# hex); the estimate ($4) a number we formatted.
_TAKE = ('mkdir -p "$1" "$1/$2" 2>/dev/null; chmod 1777 "$1" "$1/$2" 2>/dev/null;'
         ' t=$(date +%s); echo "$t $4 $t" > "$1/$2/$3";'
         ' find "$1/$2" -type f -mmin +10 -exec rm -f {} + 2>/dev/null; true')
# renewed through a dot-file (the reader's glob skips those) and a rename, never half-written
_BEAT = ('f="$1/$2/$3"; [ -f "$f" ] && read -r s e _ < "$f" && echo "$s $e $(date +%s)" > "$1/$2/.$3"'
         ' && mv -f "$1/$2/.$3" "$f"')
_DROP = 'rm -f "$1/$2/$3" "$1/$2/.$3"'
# One "lease=now start estimate beat" line per lease in $1/$2, leaving out those named "$3..."
# when $3 is given (a run waiting on other runs' slots skips its own). Also the tail of the
# probe's facts script, which passes only $1 and $2.
READ_SCRIPT = (
    'if [ -n "$2" ]; then now=$(date +%s); for f in "$1/$2"/*; do [ -f "$f" ] || continue;'
    ' if [ -n "$3" ]; then case "${f##*/}" in "$3"*) continue;; esac; fi;'
    ' read -r s e b _ < "$f" || continue; echo "lease=$now $s $e $b"; done; fi'
)


def engine_key(node: NodeSpec) -> str:
    """Which engine the node's builds go to, as a directory name."""
    host = node.docker_host
    if host is None and node.transport == "local":
        host = os.environ.get("DOCKER_HOST")
    return hashlib.sha256((host or "unix:///var/run/docker.sock").encode()).hexdigest()[:16]


def remaining(now: float, start: float, estimate: float, beat: float | None = None) -> float | None:
    """Seconds until a lease's slot frees up, or None when the lease is stale or makes no sense."""
    if not (estimate >= 0 and now - start >= -60):
        return None
    elapsed = max(now - start, 0.0)
    if beat is not None:
        if now - beat > STALE_BEAT:
            return None
    elif elapsed > STALE_FACTOR * estimate + STALE_GRACE:
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


def _is_local(transport) -> bool:
    from .transport import LocalTransport

    return isinstance(transport, LocalTransport)


# This process's leases are named "<RUN>-<hex>": a run waiting for slots skips its own.
RUN = f"{os.getpid()}{secrets.token_hex(4)}"


def read_local(node: NodeSpec, root: str = ROOT, skip: str | None = None) -> tuple[float, ...]:
    """The local node's leases (but those named ``skip...``), read directly (no process to start)."""
    values = []
    now = time.time()
    try:
        entries = list(Path(root, engine_key(node)).iterdir())
    except OSError:
        return ()
    for path in entries:
        if path.name.startswith(".") or (skip and path.name.startswith(skip)):
            continue
        try:
            values.append(f"{now} {path.read_text()[:64]}")
        except (OSError, UnicodeDecodeError):
            continue
    return parse(values)


def _sweep(directory: Path, now: float) -> None:
    for path in directory.iterdir():
        try:
            if now - path.lstat().st_mtime > SWEEP_AGE:
                path.unlink()
        except OSError:
            pass  # another user's (sticky directory) or already gone


async def take(transport, node: NodeSpec, estimate: float, root: str = ROOT) -> str | None:
    """Leave a lease for one build slot on ``node``; its name (for :func:`drop`), None if it could not."""
    name = f"{RUN}-{secrets.token_hex(6)}"
    key = engine_key(node)
    if _is_local(transport):
        try:
            directory = Path(root, key)
            for d in (directory.parent, directory):
                d.mkdir(exist_ok=True)
                if d.stat().st_uid == os.getuid():
                    d.chmod(0o1777)
            now = int(time.time())
            (directory / name).write_text(f"{now} {estimate:.1f} {now}\n")
            _sweep(directory, now)
            return name
        except OSError:
            return None
    try:
        done = await transport.run(["sh", "-c", _TAKE, "sh", root, key, name, f"{estimate:.1f}"], timeout=5)
    except Exception:
        return None
    return name if done.ok else None


async def drop(transport, node: NodeSpec, name: str | None, root: str = ROOT, timeout: float = 5) -> None:
    if name is None:
        return
    key = engine_key(node)
    if _is_local(transport):
        try:
            Path(root, key, name).unlink()
        except OSError:
            pass
        return
    try:
        await transport.run(["sh", "-c", _DROP, "sh", root, key, name], timeout=timeout)
    except Exception:
        pass


async def others(transport, node: NodeSpec, root: str = ROOT) -> tuple[float, ...]:
    """Busy seconds of the slots other runs hold on ``node`` now (this process's leases left out)."""
    if _is_local(transport):
        return read_local(node, root, skip=RUN + "-")
    lines: list[str] = []
    try:
        done = await transport.run(["sh", "-c", READ_SCRIPT, "sh", root, engine_key(node), RUN + "-"],
                                   on_line=lines.append, timeout=10)
    except Exception:
        return ()
    if not done.ok:
        return ()
    return parse(l.strip()[len("lease="):] for l in lines if l.strip().startswith("lease="))


async def beat(transport, node: NodeSpec, name: str, root: str = ROOT) -> None:
    """Renew a lease's heartbeat (the run holding it is alive)."""
    key = engine_key(node)
    if _is_local(transport):
        path = Path(root, key, name)
        try:
            start, estimate = path.read_text().split()[:2]
            tmp = path.with_name("." + name)
            tmp.write_text(f"{start} {estimate} {int(time.time())}\n")
            os.replace(tmp, path)
        except (OSError, ValueError):
            pass
        return
    try:
        await transport.run(["sh", "-c", _BEAT, "sh", root, key, name], timeout=10)
    except Exception:
        pass


class Held:
    """One lease, from taking it (at once, in the background) to dropping it: renewed every
    ``HEARTBEAT`` seconds meanwhile."""

    def __init__(self, transport, node: NodeSpec, estimate: float, root: str = ROOT):
        self.transport, self.node, self.root = transport, node, root
        self._taking = asyncio.ensure_future(take(transport, node, estimate, root))
        self._renewing = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        name = await asyncio.shield(self._taking)
        while name is not None:
            await asyncio.sleep(HEARTBEAT)
            await beat(self.transport, self.node, name, self.root)

    async def release(self, timeout: float = 5) -> None:
        self._renewing.cancel()
        await asyncio.gather(self._renewing, return_exceptions=True)
        try:
            name = await self._taking
        except Exception:
            return
        await drop(self.transport, self.node, name, self.root, timeout)
