"""Scans of image layers (what :func:`archfleet.elfcheck.scan_layer` found), cached on disk by
layer digest.

A layer is immutable and its digest is checked when it is fetched, so a scan never goes stale:
verification reads a base layer once, not once per platform per build (a 30 MB base, five
platforms, every build, would otherwise be downloaded again each time). Bounded: past
``MAX_ENTRIES`` files the least recently used go.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

MAX_ENTRIES = 400
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


def _dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("archfleet")) / "layers-v2"  # v2: scans with opaque dirs, hidden names


def _path(digest: str) -> Path | None:
    m = _DIGEST.match(digest)  # the digest comes from a registry: never a path of its choosing
    return _dir() / f"sha256-{m.group(1)}.json" if m else None


def load(digest: str) -> dict | None:
    path = _path(digest)
    if path is None:
        return None
    try:
        scan = json.loads(path.read_text())
        os.utime(path)  # recently used
    except (OSError, ValueError):
        return None
    if not isinstance(scan, dict) or not isinstance(scan.get("entries"), dict) \
            or not isinstance(scan.get("whiteouts"), list):
        return None
    return scan


def store(digest: str, scan: dict) -> None:
    path = _path(digest)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(scan, separators=(",", ":")))
        tmp.replace(path)  # atomic: a concurrent run reads the old file or the new one
        files = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in files[:max(len(files) - MAX_ENTRIES, 0)]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a cache: failing to write it costs a download next time, nothing more
