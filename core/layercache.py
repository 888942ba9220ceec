"""Scans of image layers (what :func:`archfleet.elfcheck.scan_layer` found), cached on disk by
layer digest.

A layer is immutable and its digest is checked when it is fetched, so a scan never goes stale:
verification reads a base layer once, not once per platform per build (a 30 MB base, five
platforms, every build, would otherwise be downloaded again each time). Bounded: past
``MAX_ENTRIES`` files the least recently used go. Verification reads the cache (:func:`load`);
the scans it makes are kept by the learn stage (:func:`store`, from :mod:`archfleet.learn`).
The directory is ``layers-v2/`` in :mod:`archfleet.cachedir`.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from . import cachedir, cachefile

MAX_ENTRIES = 400
STALE_TMP = 3600.0  # a temp file this old was left by a writer that died
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


def _dir() -> Path:
    return cachedir.layers()


def _path(digest: str) -> Path | None:
    m = _DIGEST.match(digest)  # the digest comes from a registry: never a path of its choosing
    return _dir() / f"sha256-{m.group(1)}.json" if m else None


def load(digest: str) -> dict | None:
    """The scan cached for layer ``digest`` (``sha256:<hex>``), marked recently used; None when absent, unreadable or not a scan."""
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
    """Keep a layer's scan. Written through a unique temp file and an atomic replace
    (:func:`archfleet.cachefile.write_atomic`): concurrent runs or threads storing the same layer
    never share a temp file, and a reader sees the old file or the new one. Then the least
    recently used scans past ``MAX_ENTRIES`` go, and temp files a killed writer left behind.
    A cache dir that cannot be written costs a download next time, nothing more."""
    path = _path(digest)
    if path is None:
        return
    try:
        cachefile.write_atomic(path, json.dumps(scan, separators=(",", ":")))
    except OSError:
        return
    _prune(path.parent)


def _prune(directory: Path) -> None:
    ages = []
    now = time.time()
    try:
        with os.scandir(directory) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # another run removed it meanwhile
                if entry.name.endswith(".json"):
                    ages.append((st.st_mtime, entry.name))
                elif entry.name.endswith(".tmp") and now - st.st_mtime > STALE_TMP:
                    _unlink(directory / entry.name)
    except OSError:
        return
    ages.sort()
    for _, name in ages[:max(len(ages) - MAX_ENTRIES, 0)]:
        _unlink(directory / name)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
