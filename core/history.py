"""How long options really took: SQLite in the user's cache dir, one row per finished option.

The estimates read it (:class:`HistoryView`); the learn stage (:mod:`archfleet.learn`) writes a
row per platform at the end of a build. Where the database is (``ARCHFLEET_HISTORY``, else
``history.sqlite`` in the cache dir) is :func:`archfleet.cachedir.history`'s answer.

Safe with two archfleet runs at once (WAL, a busy timeout, short transactions) and bounded
(the oldest rows beyond ``MAX_ROWS`` are dropped on insert). Keys: the context key (what the
context holds, see :func:`context_key`) and the project key (where it lives), so a changed
context still learns from its project's past.

History is an optimisation and never fails ``plan`` or ``build`` (review finding 19): every
read and write catches ``sqlite3.Error`` and ``OSError``. When the database cannot be opened
(a read-only cache dir, ``ARCHFLEET_HISTORY`` naming a place that cannot be written) history is
off for the rest of the run, and the first failure prints one warning line on stderr
(``archfleet: warning: build history off: ...``); estimates then come from the priors.
``ARCHFLEET_HISTORY=off`` turns it off without a warning.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import statistics
import sys
import threading
import time
from pathlib import Path

import attrs

from . import cachedir

MAX_ROWS = 5000
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    context_key TEXT NOT NULL,
    project_key TEXT NOT NULL,
    platform TEXT NOT NULL,
    strategy TEXT NOT NULL,
    node TEXT NOT NULL,
    seconds REAL NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL,
    speed REAL,
    ref TEXT,
    warm INTEGER
);
CREATE INDEX IF NOT EXISTS runs_ctx ON runs (context_key, platform, strategy, node);
CREATE INDEX IF NOT EXISTS runs_proj ON runs (project_key, strategy, node);
"""


def context_key(request) -> tuple[str, int]:
    """(key, bytes) of what the context holds, cheaply, in one walk: every file with its size
    and mtime, the Dockerfile's bytes, the build args and the target. Contents are not read
    (fast on big contexts); an mtime change without a content change just counts as a new
    context. The byte count is what a remote node that lacks the context would be sent."""
    h = hashlib.sha256()
    total = 0
    root = Path(request.context)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            total += st.st_size
            # bytes as the file system holds them: a name that is not UTF-8 hashes too
            h.update(os.fsencode(p.relative_to(root)) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    try:
        h.update(Path(request.dockerfile).read_bytes())
    except OSError:
        pass
    h.update(repr((tuple(request.build_args), request.target)).encode())
    return h.hexdigest()[:32], total


def project_key(request) -> str:
    """Where the project lives (the context dir and Dockerfile, resolved), hashed: 32 hex digits. A changed context of the same project still learns from its past."""
    return hashlib.sha256(os.fsencode(Path(request.context).resolve()) + b"\0"
                          + os.fsencode(Path(request.dockerfile).resolve())).hexdigest()[:32]


def _add_speed_column(db: sqlite3.Connection) -> None:
    """Histories written before the ``speed``, ``ref`` and ``warm`` columns get them (two runs may
    race to add one)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    for name, kind in (("speed", "REAL"), ("ref", "TEXT"), ("warm", "INTEGER")):
        if name in columns:
            continue
        try:
            db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise


@attrs.frozen
class Past:
    """What an option took before: the median ``seconds`` of the last ``runs`` ok runs, and ``basis`` (this context or this project)."""
    seconds: float
    runs: int
    basis: str  # "this context" | "this project" | ...


_warned = threading.Event()


def _warn(why: str) -> None:
    """One line on stderr, once per process, the first time history fails."""
    if not _warned.is_set():
        _warned.set()
        sys.stderr.write(f"archfleet: warning: build history off: {why} (estimates use priors; set "
                         "ARCHFLEET_HISTORY to a writable file, or to off)\n")


class _Off(Exception):
    """The database could not be opened: history is off for this History."""


def _never_fails(default):
    """A History method that answers ``default`` instead of raising when the database cannot be
    opened or used (``sqlite3.Error``, ``OSError``); the first such failure is warned about."""
    def wrap(method):
        @functools.wraps(method)
        def safe(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except _Off:
                return default
            except (sqlite3.Error, OSError) as exc:
                _warn(f"{self.path}: {exc}")
                return default
        return safe
    return wrap


class History:
    """The database at ``path`` (:func:`archfleet.cachedir.history` finds the user's), opened on
    first use. No method raises: a database that cannot be opened or used answers "nothing
    known" (see the module)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self.off: str | None = None  # why history is off, once opening the database failed

    def _conn(self) -> sqlite3.Connection:
        if self.off is not None:
            raise _Off(self.off)
        if self._db is None:
            try:
                self._db = self._open()
            except (sqlite3.Error, OSError) as exc:
                self.off = f"cannot use {self.path}: {exc}"
                _warn(self.off)
                raise _Off(self.off) from exc
        return self._db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # used from the event loop and from worker threads, never at the same time
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            # Switching to WAL takes an exclusive lock and does not wait on the busy handler:
            # two runs opening a new history at once would fail here without the retry.
            for attempt in range(100):
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.05)
            db.executescript(SCHEMA)
            _add_speed_column(db)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Close the database connection (opened again on next use)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    @_never_fails(None)
    def record(self, *, context_key: str, project_key: str, platform: str, strategy: str, node: str,
               seconds: float, bytes: int = 0, outcome: str = "ok", speed: float | None = None,
               ref: str | None = None, warm: bool = False) -> None:
        """``speed``: the node's relative speed (:func:`archfleet.planner.node_speed`) when it ran,
        so a slow node's seconds can be turned into reference-speed work for other nodes; ``ref``:
        the child it pushed (``repo@sha256:...``), the next build's warm cache source; ``warm``:
        it read another node's child as a cache source (:mod:`archfleet.buildcache`)."""
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO runs (at, context_key, project_key, platform, strategy, node, seconds, bytes, outcome,"
                " speed, ref, warm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), context_key, project_key, platform, strategy, node, seconds, bytes, outcome, speed,
                 ref, 1 if warm else 0),
            )
            db.execute("DELETE FROM runs WHERE id <= (SELECT MAX(id) FROM runs) - ?", (MAX_ROWS,))

    def _median(self, sql: str, args: tuple, limit: int = 5) -> tuple[float, int] | None:
        rows = [r[0] for r in self._conn().execute(sql + f" ORDER BY id DESC LIMIT {limit}", args)]
        if not rows:
            return None
        return statistics.median(rows), len(rows)

    @_never_fails(None)
    def past(self, *, context_key: str, project_key: str, platform: str, strategy: str, node: str,
             warm: bool = False) -> Past | None:
        """What this option took before: this context first, then this project. ``warm``: only
        builds that started from another node's cache (else only those that did not)."""
        flag = " AND COALESCE(warm, 0) = ?"
        got = self._median("SELECT seconds FROM runs WHERE outcome = 'ok' AND context_key = ? AND platform = ?"
                           " AND strategy = ? AND node = ?" + flag, (context_key, platform, strategy, node, int(warm)),
                           limit=3)
        if got:
            return Past(got[0], got[1], "this context" + (" (warm)" if warm else ""))
        got = self._median("SELECT seconds FROM runs WHERE outcome = 'ok' AND project_key = ? AND platform = ?"
                           " AND strategy = ? AND node = ?" + flag, (project_key, platform, strategy, node, int(warm)))
        if got:
            return Past(got[0], got[1], "this project" + (" (warm)" if warm else ""))
        return None

    @_never_fails(None)
    def last_pushed(self, project_key: str, platform: str) -> tuple[str, str] | None:
        """(node, child ref) of this project's last build of ``platform`` that pushed a child,
        or None."""
        row = self._conn().execute(
            "SELECT node, ref FROM runs WHERE outcome = 'ok' AND project_key = ? AND platform = ? AND ref IS NOT NULL"
            " AND ref != '' ORDER BY id DESC LIMIT 1", (project_key, platform)).fetchone()
        return (row[0], row[1]) if row else None

    @_never_fails(None)
    def qemu_factor(self, node: str) -> float | None:
        """Learned slowdown of emulated over native builds of the same projects on ``node``."""
        rows = self._conn().execute(
            "SELECT e.project_key, AVG(e.seconds), AVG(n.seconds) FROM runs e JOIN runs n"
            " ON e.project_key = n.project_key AND e.node = n.node"
            " WHERE e.node = ? AND e.strategy = 'qemu' AND n.strategy = 'native'"
            " AND e.outcome = 'ok' AND n.outcome = 'ok' GROUP BY e.project_key", (node,)).fetchall()
        ratios = [e / n for _, e, n in rows if n and n > 0.05]
        return statistics.median(ratios) if ratios else None

    @_never_fails(None)
    def project_work(self, project_key: str) -> float | None:
        """Typical work of this project at reference speed (seconds x the node's speed), from its
        native and cross builds on any node: a prior for nodes that have not built it. Raw seconds
        would not do: one build on a slow arm board would make every other node look slow too.
        Rows recorded without a speed (older archfleet) are left out."""
        got = self._median("SELECT seconds * speed FROM runs WHERE outcome = 'ok' AND project_key = ?"
                           " AND strategy IN ('native', 'cross') AND speed > 0", (project_key,), limit=9)
        return got[0] if got else None

    @_never_fails(False)
    def synced_before(self, context_key: str, node: str) -> bool:
        """Whether this context was built on ``node`` before (so the node has it)."""
        row = self._conn().execute("SELECT 1 FROM runs WHERE context_key = ? AND node = ? LIMIT 1",
                                   (context_key, node)).fetchone()
        return row is not None

    @_never_fails(0)
    def count(self) -> int:
        """How many runs the database holds (0 when it cannot be read)."""
        return self._conn().execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@attrs.frozen
class HistoryView:
    """What ``archfleet_estimate`` gets: the database and this request's keys."""

    db: History
    context_key: str
    project_key: str
    context_bytes: int

    def past(self, option, warm: bool = False) -> Past | None:
        """What ``option`` took before for this context, else this project (:meth:`History.past`;
        ``warm``: builds that started from another node's cache), or None."""
        return self.db.past(context_key=self.context_key, project_key=self.project_key,
                            platform=str(option.platform), strategy=option.strategy, node=option.node, warm=warm)

    def last_pushed(self, platform) -> tuple[str, str] | None:
        """(node, child ref) of this project's last pushed build of ``platform`` (:meth:`History.last_pushed`)."""
        return self.db.last_pushed(self.project_key, str(platform))

    def synced_before(self, node: str) -> bool:
        """True when a build of this very context ran on ``node`` before (so the node has it: no transfer to estimate)."""
        return self.db.synced_before(self.context_key, node)

    def record(self, result, outcome: str = "ok", speed: float | None = None) -> None:
        # history is an optimisation: a locked, broken or unwritable cache never fails a build
        """Add one row for ``result`` (``outcome`` ok, ``speed`` the node's :func:`~archfleet.planner.node_speed` then). Never raises."""
        self.db.record(context_key=self.context_key, project_key=self.project_key,
                       platform=str(result.platform), strategy=result.option.strategy, node=result.option.node,
                       seconds=result.seconds, bytes=self.context_bytes, outcome=outcome, speed=speed,
                       ref=result.ref if result.digest else None, warm=bool(getattr(result, "warm_from", None)))


def view_for(request, path: Path | None = None) -> HistoryView | None:
    """The history ``request``'s estimates read and its build is learned into: the database at
    ``path``, else the user's (:func:`archfleet.cachedir.history`); None when history is off
    (``ARCHFLEET_HISTORY=off``, whatever ``path`` says) or the context cannot be read.
    Blocking (it walks the context): call it in a thread."""
    where = cachedir.history()
    if where is None:
        return None
    try:
        key, size = context_key(request)
        return HistoryView(History(path or where), key, project_key(request), size)
    except (OSError, sqlite3.Error):
        return None
