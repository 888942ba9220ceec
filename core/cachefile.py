"""Writing the user's cache files (scores, link rates, layer scans, in :mod:`archfleet.cachedir`)
so that runs and threads writing at once neither tear a file nor lose each other's entries.
The caches call these when the learn stage (:mod:`archfleet.learn`) keeps what a run measured.

- :func:`write_atomic`: the text goes to a fresh temp file in the same directory
  (``tempfile.mkstemp``: a unique name, ``O_EXCL``, so two writers never share it, unlike a
  ``<name>.<pid>.tmp`` that two threads of one process do share), then ``os.replace`` puts it in
  place (POSIX ``rename``: readers see the old file or the new one, never half of one).
- :func:`update_json`: read-modify-write of a JSON object under an exclusive ``flock`` on
  ``<file>.lock`` (a lock per open file description, so it also serialises threads of one
  process), then :func:`write_atomic`: a measurement written at the same time by another run
  is kept, not overwritten by a copy read before it.

Both create the directory as needed and raise ``OSError`` when it cannot be written (a
read-only or foreign cache dir); the caches calling them treat that as "not cached".
Reading needs no lock: files are only ever replaced whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one step. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` (made as needed). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when it is missing, unreadable, broken or not an object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def update_json(path: Path, change: Callable[[dict], None]) -> dict:
    """Apply ``change`` to the JSON object in ``path`` (``{}`` if none) and write it back, with no
    other :func:`update_json` of that file in between; the new object. Raises OSError."""
    with locked(path):
        doc = read_json(path)
        change(doc)
        write_atomic(path, json.dumps(doc, separators=(",", ":")))
    return doc


def fresh(entry, ttl: float) -> bool:
    """``entry`` (a cache entry with ``"at"``: epoch seconds) was written less than ``ttl``
    seconds ago and not in the future (one dated ahead, by a clock set back or a hand-edited
    file, would be kept as long as the clock lags). False for anything not so shaped."""
    try:
        return bool(entry) and 0 <= time.time() - float(entry["at"]) < ttl
    except (KeyError, TypeError, ValueError):
        return False


def fresh_positive(entry, field: str, ttl: float) -> float | None:
    """``entry[field]`` of a cache entry shaped ``{field: number, "at": epoch seconds}`` when it
    was written less than ``ttl`` seconds ago (not in the future) and is finite and positive,
    else None (missing, too old, dated ahead, or not such an entry: caches are read without
    trusting their shape)."""
    try:
        if fresh(entry, ttl):
            value = float(entry[field])
            if math.isfinite(value) and value > 0:
                return value
    except (KeyError, TypeError, ValueError):
        pass
    return None


def recall_lines(path: Path, key: str, identity, ttl: float) -> tuple[str, ...] | None:
    """The lines a program printed, kept in the JSON file ``path`` under ``key`` with the
    ``identity`` (JSON-able, compared as JSON reads it back) of what the answer depended on,
    when that identity is still ``identity`` and the entry is younger than ``ttl`` seconds;
    else None (never kept, changed, stale, or a file that cannot be read). The local CLIs'
    ``--version`` and ``docker info`` answers (:mod:`archfleet.cliversions`,
    :mod:`archfleet.engineinfos`). Blocking (a small file)."""
    if identity is None:
        return None
    entry = read_json(path).get(key)
    try:
        if entry["identity"] != json.loads(json.dumps(identity)) or not fresh(entry, ttl):
            return None
        lines = entry["tail"]
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return tuple(lines)


def keep_lines(path: Path, answers) -> None:
    """Keep ``answers`` ((key, JSON-able identity, lines) each) in the JSON file ``path``, each
    stamped now (:func:`update_json`: under its lock, replaced whole). Never raises for the file
    system: an answer that cannot be kept is asked for again next time. Blocking."""
    answers = list(answers)
    if not answers:
        return

    def put(doc: dict) -> None:
        now = time.time()
        for key, identity, lines in answers:
            doc[key] = {"identity": identity, "tail": list(lines), "at": now}

    try:
        update_json(path, put)
    except OSError:
        pass

