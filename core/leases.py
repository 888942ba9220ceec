"""Build-slot leases on a node, so that archfleet runs sharing a node see each other's builds.

A run that starts a build on a node leaves a lease there (one small file: the start time in the
node's clock and the estimate in seconds) and removes it when the build frees its slot. A probe
reads the node's leases: each live one is a slot busy for about ``estimate - elapsed`` more
seconds (and, once the build overruns its estimate, for a tenth of the estimate more). The
planner treats those slots as taken. A lease left behind by a run that died expires after
three times its estimate plus ten minutes.

Leases live in ``/tmp/archfleet-leases/<engine key>/`` on the node (world-writable with the
sticky bit, like /tmp itself, so two users building on one engine see each other), keyed by the
engine the node's builds go to (its ``docker_host``), since that is the shared resource: two
lab nodes on one machine with their own engines do not share slots. A lease's content is read
as numbers and nothing else; a bad or foreign file is ignored. Leases steer the plan; they do
not lock anything, and failing to write or read one never fails a build.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Iterable

from .model import NodeSpec

ROOT = "/tmp/archfleet-leases"
STALE_FACTOR, STALE_GRACE = 3.0, 600.0
OVERRUN_SHARE = 0.1

# Fixed scripts: the root ($1), engine key ($2) and lease name ($3) are ours (a constant and
# hex); the estimate ($4) a number we formatted.
_TAKE = ('mkdir -p "$1" "$1/$2" 2>/dev/null; chmod 1777 "$1" "$1/$2" 2>/dev/null;'
         ' echo "$(date +%s) $4" > "$1/$2/$3"')
_DROP = 'rm -f "$1/$2/$3"'
# Part of the probe's facts script, which gets the root as $1 and the engine key as $2.
READ_SCRIPT = (
    'if [ -n "$2" ]; then now=$(date +%s); for f in "$1/$2"/*; do [ -f "$f" ] || continue;'
    ' read -r s e _ < "$f" || continue; echo "lease=$now $s $e"; done; fi'
)


def engine_key(node: NodeSpec) -> str:
    """Which engine the node's builds go to, as a directory name."""
    host = node.docker_host
    if host is None and node.transport == "local":
        host = os.environ.get("DOCKER_HOST")
    return hashlib.sha256((host or "unix:///var/run/docker.sock").encode()).hexdigest()[:16]


def remaining(now: float, start: float, estimate: float) -> float | None:
    """Seconds until a lease's slot frees up, or None when the lease is stale or makes no sense."""
    if not (estimate >= 0 and now - start >= -60):
        return None
    elapsed = max(now - start, 0.0)
    if elapsed > STALE_FACTOR * estimate + STALE_GRACE:
        return None
    return round(max(estimate - elapsed, OVERRUN_SHARE * estimate), 1)


def parse(values: Iterable[str]) -> tuple[float, ...]:
    """``"now start estimate"`` triples (the probe's ``lease=`` values) -> busy seconds, sorted."""
    out = []
    for value in values:
        try:
            now, start, estimate = (float(x) for x in value.split()[:3])
        except ValueError:
            continue
        left = remaining(now, start, estimate)
        if left is not None:
            out.append(left)
    return tuple(sorted(out))


def _is_local(transport) -> bool:
    from .transport import LocalTransport

    return isinstance(transport, LocalTransport)


def read_local(node: NodeSpec, root: str = ROOT) -> tuple[float, ...]:
    """The local node's leases, read directly (no process to start)."""
    values = []
    now = time.time()
    try:
        entries = list(Path(root, engine_key(node)).iterdir())
    except OSError:
        return ()
    for path in entries:
        try:
            values.append(f"{now} {path.read_text()[:64]}")
        except (OSError, UnicodeDecodeError):
            continue
    return parse(values)


async def take(transport, node: NodeSpec, estimate: float, root: str = ROOT) -> str | None:
    """Leave a lease for one build slot on ``node``; its name (for :func:`drop`), None if it could not."""
    name = f"{os.getpid()}-{secrets.token_hex(6)}"
    key = engine_key(node)
    if _is_local(transport):
        try:
            directory = Path(root, key)
            for d in (directory.parent, directory):
                d.mkdir(exist_ok=True)
                if d.stat().st_uid == os.getuid():
                    d.chmod(0o1777)
            (directory / name).write_text(f"{int(time.time())} {estimate:.1f}\n")
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
