"""Content digests of a build context's files, remembered by their stat between commands (issue 17).

A context's snapshot (:func:`archfleet.context.snapshot`) hashes every file's contents: the
steps' cache keys, the context digest and the sync to SSH nodes need them. Reading every byte
costs ~0.65 s per GB here, on every ``plan`` and build of a big context. A file whose
``(device, inode, size, mtime, ctime)`` is what it was when it was hashed has the same contents:
the rule git's index relies on, and BuildKit's own context transfer (fsutil compares stat
to choose the files it sends again). ``ctime`` cannot be set from user space (``utime``
changes it), so a file rewritten and given its old mtime back still gets a new key.

A file whose contents changed while its size and mtime stayed (``cp -p``, ``rsync -t``, ``touch
-r`` of an older copy) is one BuildKit's own transfer cannot see: :func:`unseen_change`; the
snapshot names it (``FileDigests.stale``) and keeps the old digest remembered, so the command
after it sees the same, until the file's mtime moves.

A file changed within the file system's timestamp granularity of its hashing could keep its
mtime and ctime ("racily clean", in git's words): only the digests of files whose mtime and
ctime are at least :data:`SETTLED_NS` older than the walk's start stand for their contents
(settled); the others are hashed again next time, their entries kept only to see an unseen
change.

A Dockerfile (or its own ignore file) outside the context is remembered the same way under
its absolute path: BuildKit reads it through a transfer of its own, by stat too.

One JSON file per context directory (its absolute path, hashed) in ``contexts/`` of the cache
directory (:func:`archfleet.cachedir.context_digests`); read by the snapshot, written only by
the learn stage (:func:`store`); a file that cannot be read or written is no memory, never an
error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from . import cachedir, cachefile
from .model import FileDigests

VERSION = 2
SETTLED_NS = 2_000_000_000  # FAT's 2 s mtime granularity is the coarsest in use


def stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What must be unchanged for a file to keep its digest: (device, inode, size, mtime ns, ctime ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(st: os.stat_result, started_ns: int) -> bool:
    """Whether a file's digest may be remembered: its mtime and ctime are at least
    :data:`SETTLED_NS` before ``started_ns`` (the walk's start, ``time.time_ns()``)."""
    return max(st.st_mtime_ns, st.st_ctime_ns) <= started_ns - SETTLED_NS


def unseen_change(remembered: tuple[int, ...], now: tuple[int, ...]) -> bool:
    """Whether a file whose contents changed kept the size and mtime it had when remembered:
    BuildKit's context transfer (fsutil) compares those two (and mode and owner), not contents or
    ctime, so it keeps sending the old copy it holds (plain ``docker build`` too)."""
    return remembered[2:4] == now[2:4]


def load(root: Path) -> dict[str, tuple[tuple[int, ...], str, bool]]:
    """The digests remembered for the context at ``root``: relative path -> (stat key, sha256
    hex, settled); empty when there are none or the file cannot be read. Only a settled entry
    may stand for the file's contents; any entry says what size and mtime the contents had."""
    try:
        doc = json.loads(cachedir.context_digests(root).read_text(encoding="utf-8"))
        if doc.get("version") != VERSION or doc.get("root") != str(root):
            return {}
        return {rel: (tuple(int(x) for x in v[:5]), str(v[5]), bool(v[6])) for rel, v in doc["files"].items()
                if isinstance(v, list) and len(v) == 7}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def store(digests: FileDigests) -> None:
    """Remember ``digests`` for its context: its files replace what was remembered (files gone
    from the context are forgotten); the entries of Dockerfiles outside the context (absolute
    paths: each platform's ``-f`` file has one, from a snapshot of its own) are kept beside
    them. Never raises for a cache that cannot be written."""
    files: Mapping[str, list] = {rel: [*key, digest, int(ok)] for rel, key, digest, ok in digests.files}

    def change(doc: dict) -> None:
        old = doc.get("files") if doc.get("version") == VERSION and doc.get("root") == digests.root else None
        kept = {k: v for k, v in (old or {}).items() if k.startswith("/") and k not in files}
        doc.clear()
        doc.update({"version": VERSION, "root": digests.root, "files": {**kept, **files}})

    try:
        cachefile.update_json(cachedir.context_digests(Path(digests.root)), change)
    except (OSError, ValueError, AttributeError):
        pass
