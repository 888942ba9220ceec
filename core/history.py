"""How long options really took: SQLite in the user's cache dir, one row per finished option.

The estimates read it (:class:`HistoryView`); the learn stage (:mod:`archfleet.learn`) writes a
row per platform at the end of a build. Where the database is (``ARCHFLEET_HISTORY``, else
``history.sqlite`` in the cache dir) is :func:`archfleet.cachedir.history`'s answer.

Safe with two archfleet runs at once (WAL, a busy timeout, short transactions) and bounded
(the oldest rows beyond ``MAX_ROWS`` are dropped on insert). Keys: the context key (what the
context holds, see :func:`context_key`) and the project key (where it lives), so a changed
context still learns from its project's past.

Two tables: ``runs``, one row per finished platform (its seconds and, since issue 17, the
measured parts: ``fixed``, ``transfer``, ``work``, ``push`` and the bytes pushed), and
``steps``, one row per Dockerfile step a build reported (:mod:`archfleet.steps`): its ``key``
(what the step is), its ``chain`` (whether a node has it cached), the platform, node and
emulation it ran with, its seconds (0 when cached) and the node's speed then. The estimates
read them through :class:`HistoryView` (per node: the fixed cost and the push rate; per step:
its past times; per node and chain: what is cached).

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
from .model import ContextFiles

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
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    key TEXT NOT NULL,
    chain TEXT NOT NULL,
    platform TEXT NOT NULL,
    node TEXT NOT NULL,
    emulated INTEGER NOT NULL,
    seconds REAL NOT NULL,
    cached INTEGER NOT NULL,
    speed REAL
);
CREATE INDEX IF NOT EXISTS steps_key ON steps (key);
CREATE INDEX IF NOT EXISTS steps_chain ON steps (node, chain);
"""
MAX_STEP_ROWS = 20000
#: the measured parts a ``runs`` row keeps (:data:`archfleet.model.PARTS`), and the bytes pushed
PART_COLUMNS = ("fixed", "transfer", "work", "push")


def context_key(request) -> tuple[str, int]:
    """(key, bytes) of what the context holds, cheaply, in one walk: every file with its size,
    mtime and mode, every directory's name, the Dockerfile's bytes, the build args and the
    target. Contents are not read (fast on big contexts); an mtime change without a content
    change just counts as a new context. The byte count is what a remote node that lacks the
    context would be sent. Also the stamp a context's snapshot is cached by
    (:func:`archfleet.context.snapshot_of`): whatever the snapshot holds must change it."""
    h = hashlib.sha256()
    total = 0
    root = Path(request.context)
    dockerfile = os.path.abspath(request.dockerfile)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames:  # an empty directory made is in the snapshot: the stamp must move
            h.update(os.fsencode((Path(dirpath) / name).relative_to(root)) + b"/\n")
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            total += st.st_size
            if os.path.abspath(p) == dockerfile:
                continue  # its bytes are hashed below
            # bytes as the file system holds them: a name that is not UTF-8 hashes too
            h.update(os.fsencode(p.relative_to(root)) + f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode:o}\n".encode())
    try:
        h.update(Path(request.dockerfile).read_bytes())
    except OSError:
        pass
    h.update(repr((tuple(request.build_args), request.target)).encode())
    return h.hexdigest()[:32], total


def context_files(request) -> ContextFiles:
    """The context's files as a COPY from it sees them (:class:`~archfleet.model.ContextFiles`),
    from its snapshot (:func:`archfleet.context.snapshot_of`: BuildKit's ignore rule applied,
    every file's contents hashed once per process and shared with the sync and the context
    digest): each file's contents and mode, each link's target, each directory's name (not its
    mode or mtime: BuildKit keeps a COPY cached after either changes), not the Dockerfile.
    Blocking. Raises :class:`~archfleet.errors.UsageError` naming a file that cannot be read."""
    from .context import ignore_patterns, included_file, path_in_context, snapshot_of

    snap = snapshot_of(request)
    in_context = path_in_context(request.dockerfile, request.context)
    entries: list[tuple[str, str, int]] = []
    for e in snap.entries:
        if e.path == in_context:
            continue  # the Dockerfile: its bytes chain the steps that can copy it (steps.planned)
        if e.kind == "file":
            entries.append((e.path, e.digest, e.mode))
        elif e.kind == "link":
            entries.append((e.path, "-> " + e.target, 0))
        else:
            entries.append((e.path + "/", "", 0))
    if in_context and snap.ignore_path is not None:
        # docker-py's walk keeps the Dockerfile (as the classic builder sent it); BuildKit
        # applies the rule to it like any file and sends it apart: an ignored one is not there
        try:
            if not included_file(in_context, ignore_patterns(Path(snap.ignore_path).read_bytes())):
                in_context = ""
        except OSError:
            pass
    entries.sort()
    h = hashlib.sha256()
    for path, content, mode in entries:
        h.update(os.fsencode(path) + f"\0{content}\0{mode:o}\n".encode())
    return ContextFiles(tuple(entries), h.hexdigest()[:32], in_context, snap.digests)


def project_key(request) -> str:
    """Where the project lives (the context dir and Dockerfile, resolved), hashed: 32 hex digits. A changed context of the same project still learns from its past."""
    return hashlib.sha256(os.fsencode(Path(request.context).resolve()) + b"\0"
                          + os.fsencode(Path(request.dockerfile).resolve())).hexdigest()[:32]


def _add_speed_column(db: sqlite3.Connection) -> None:
    """Histories written before the ``speed`` column (or the ``ref``, ``warm`` and parts
    columns) get them (two runs may race to add one)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    for name, kind in (("speed", "REAL"), ("ref", "TEXT"), ("warm", "INTEGER"),
                       *((c, "REAL") for c in PART_COLUMNS), ("push_bytes", "INTEGER"), ("files_key", "TEXT")):
        if name not in columns:
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
               ref: str | None = None, warm: bool = False,
               parts: "dict[str, float] | None" = None, push_bytes: int | None = None,
               steps: "list[tuple] | tuple" = (), files_key: str | None = None) -> None:
        """One finished platform. ``speed``: the node's relative speed
        (:func:`archfleet.planner.node_speed`) when it ran, so a slow node's seconds can be
        turned into reference-speed work for other nodes; ``ref``: the child it pushed
        (``repo@sha256:...``), the next build's warm cache source; ``warm``: it read another
        node's child as a cache source (:mod:`archfleet.buildcache`); ``parts``: the measured
        seconds of each of :data:`PART_COLUMNS`; ``push_bytes``: the bytes of the layers it
        pushed; ``steps``: (key, chain, platform, emulated, seconds, cached) for each step it
        reported; ``files_key``: the context's files alone (:func:`context_files`: a node that
        has them needs no transfer)."""
        parts = parts or {}
        db = self._conn()
        now = time.time()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO runs (at, context_key, project_key, platform, strategy, node, seconds, bytes, outcome, speed,"
                " ref, warm, fixed, transfer, work, push, push_bytes, files_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, context_key, project_key, platform, strategy, node, seconds, bytes, outcome, speed,
                 ref, 1 if warm else 0, *(parts.get(c) for c in PART_COLUMNS), push_bytes, files_key or None),
            )
            db.execute("DELETE FROM runs WHERE id <= (SELECT MAX(id) FROM runs) - ?", (MAX_ROWS,))
            if steps:
                db.executemany(
                    "INSERT INTO steps (at, key, chain, platform, node, emulated, seconds, cached, speed)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(now, key, chain, step_platform, node, int(bool(emulated)), float(step_seconds), int(bool(cached)),
                      speed) for key, chain, step_platform, emulated, step_seconds, cached in steps])
                db.execute("DELETE FROM steps WHERE id <= (SELECT MAX(id) FROM steps) - ?", (MAX_STEP_ROWS,))

    @_never_fails({})
    def step_times(self, keys, per_key: int = 12) -> dict[str, list[tuple]]:
        """key -> (seconds, speed, platform, emulated, node) of the last ``per_key`` times each
        step of ``keys`` ran (not cached), newest first."""
        out: dict[str, list[tuple]] = {}
        db = self._conn()
        for key in dict.fromkeys(keys):
            rows = db.execute("SELECT seconds, speed, platform, emulated, node FROM steps WHERE key = ? AND cached = 0"
                              " ORDER BY id DESC LIMIT ?", (key, per_key)).fetchall()
            if rows:
                out[key] = rows
        return out

    @_never_fails(frozenset())
    def cached_chains(self, node: str, chains) -> frozenset[str]:
        """Of ``chains``, those a build on ``node`` ran or found cached within the last week:
        its BuildKit most likely still holds them."""
        wanted = list(dict.fromkeys(chains))
        if not wanted:
            return frozenset()
        db = self._conn()
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in db.execute(
                f"SELECT DISTINCT chain FROM steps WHERE node = ? AND at > ? AND chain IN ({marks})",
                (node, time.time() - 7 * 86400, *part)))
        return frozenset(found)

    @_never_fails(())
    def part_rows(self, *, node: str | None = None, project_key: str | None = None, platform: str | None = None,
                  limit: int = 9, pushed: bool = False) -> tuple[tuple, ...]:
        """(node, platform, fixed, transfer, work, push, push_bytes, project_key) of the last
        ``limit`` ok runs with measured parts, on ``node`` and/or of ``project_key`` and/or for
        ``platform`` (None: any), newest first; ``pushed``: only runs that pushed a child (a
        build without ``--push`` measures a push of 0 s, which says nothing of a push)."""
        where = ["outcome = 'ok'", "fixed IS NOT NULL"]
        if pushed:
            where.append("ref IS NOT NULL AND ref != ''")
        args: list = []
        for column, value in (("node", node), ("project_key", project_key), ("platform", platform)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self._conn().execute(
            "SELECT node, platform, fixed, transfer, work, push, push_bytes, project_key FROM runs WHERE "
            + " AND ".join(where) + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return tuple(rows)

    @_never_fails({})
    def qemu_factors(self, min_native: float = 0.3) -> dict[str, float]:
        """platform -> how many times slower its CPU-bound steps ran under QEMU than natively, at
        the same speed: the median, over the steps that ran both ways, of emulated / native time
        (each at reference speed), counting only steps whose native time is at least
        ``min_native`` seconds and whose ratio is above 2 (steps that wait rather than compute
        say nothing of QEMU)."""
        rows = self._conn().execute(
            "SELECT e.platform, e.key, AVG(e.seconds * COALESCE(e.speed, 1)), AVG(n.seconds * COALESCE(n.speed, 1))"
            " FROM steps e JOIN steps n ON e.key = n.key"
            " WHERE e.emulated = 1 AND n.emulated = 0 AND e.cached = 0 AND n.cached = 0"
            " GROUP BY e.platform, e.key").fetchall()
        ratios: dict[str, list[float]] = {}
        for platform, _, emulated, native in rows:
            if native and native >= min_native and emulated / native > 2:
                ratios.setdefault(platform, []).append(emulated / native)
        return {p: statistics.median(r) for p, r in ratios.items()}

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
    def child_chains(self, ref: str) -> frozenset[str] | None:
        """The cache chains of the steps recorded with the build that pushed the child ``ref``
        (what its inline cache holds), or None when that build recorded no steps (or none is
        known): a warm start from it can then only be guessed."""
        db = self._conn()
        run = db.execute("SELECT at, node, platform FROM runs WHERE ref = ? ORDER BY id DESC LIMIT 1",
                         (ref,)).fetchone()
        if run is None:
            return None
        rows = db.execute("SELECT chain FROM steps WHERE at = ? AND node = ? AND platform = ?", run).fetchall()
        return frozenset(r[0] for r in rows) if rows else None

    @_never_fails(False)
    def synced_before(self, context_key: str, node: str, files_key: str = "") -> bool:
        """Whether this context (or, with ``files_key``, the same files with another Dockerfile,
        build args or target) was built on ``node`` before (so the node has its files)."""
        row = self._conn().execute("SELECT 1 FROM runs WHERE node = ? AND (context_key = ? OR files_key = ?) LIMIT 1",
                                   (node, context_key, files_key or "\0none")).fetchone()
        return row is not None

    @_never_fails(0)
    def count(self) -> int:
        """How many runs the database holds (0 when it cannot be read)."""
        return self._conn().execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@attrs.frozen
class HistoryView:
    """What ``archfleet_estimate`` gets: the database and this request's keys (``files``: the
    context's files alone, :class:`~archfleet.model.ContextFiles` from :func:`context_files`). Reads are kept for the view's life
    (one command): the estimates ask the same question for many options."""

    db: History
    context_key: str
    project_key: str
    context_bytes: int
    files: ContextFiles | None = None
    _memo: dict = attrs.field(factory=dict, eq=False, repr=False, init=False)

    @property
    def files_key(self) -> str:
        """The key of the context's files (:attr:`ContextFiles.key`), "" when unknown."""
        return self.files.key if self.files is not None else ""

    def _once(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def past(self, option, warm: bool = False) -> Past | None:
        """What ``option`` took before for this context, else this project (:meth:`History.past`;
        ``warm``: builds that started from another node's cache), or None."""
        return self.db.past(context_key=self.context_key, project_key=self.project_key,
                            platform=str(option.platform), strategy=option.strategy, node=option.node, warm=warm)

    def last_pushed(self, platform) -> tuple[str, str] | None:
        """(node, child ref) of this project's last pushed build of ``platform`` (:meth:`History.last_pushed`)."""
        return self.db.last_pushed(self.project_key, str(platform))

    def synced_before(self, node: str) -> bool:
        """True when a build of this context's files ran on ``node`` before (so the node has them: no transfer to estimate)."""
        return self._once(("synced", node), lambda: self.db.synced_before(self.context_key, node, self.files_key))

    def step_times(self, keys) -> dict[str, list[tuple]]:
        """:meth:`History.step_times` of ``keys`` (asked once per set of keys)."""
        keys = tuple(dict.fromkeys(keys))
        return self._once(("steps", keys), lambda: self.db.step_times(keys))

    def child_chains(self, ref: str) -> frozenset[str] | None:
        """:meth:`History.child_chains` (asked once per child)."""
        return self._once(("child", ref), lambda: self.db.child_chains(ref))

    def cached_chains(self, node: str, chains) -> frozenset[str]:
        """:meth:`History.cached_chains` (asked once per node and set of chains)."""
        chains = tuple(dict.fromkeys(chains))
        return self._once(("chains", node, chains), lambda: self.db.cached_chains(node, chains))

    def part_rows(self, **where) -> tuple[tuple, ...]:
        """:meth:`History.part_rows` (asked once per question)."""
        return self._once(("parts", tuple(sorted(where.items()))), lambda: self.db.part_rows(**where))

    def qemu_factors(self) -> dict[str, float]:
        """:meth:`History.qemu_factors` (asked once)."""
        return self._once(("qemu",), self.db.qemu_factors)

    def record(self, result, outcome: str = "ok", speed: float | None = None, steps=()) -> None:
        """Add one row for ``result`` (``outcome`` ok, ``speed`` the node's
        :func:`~archfleet.planner.node_speed` then), with its measured parts and pushed bytes,
        and its ``steps`` (key, chain, platform, emulated, seconds, cached). Never raises
        (history is an optimisation: a locked, broken or unwritable cache never fails a build)."""
        parts = dict(result.parts) if getattr(result, "parts", ()) else None
        self.db.record(context_key=self.context_key, project_key=self.project_key,
                       platform=str(result.platform), strategy=result.option.strategy, node=result.option.node,
                       seconds=result.seconds, bytes=self.context_bytes, outcome=outcome, speed=speed,
                       ref=result.ref if result.digest else None, warm=bool(getattr(result, "warm_from", None)),
                       parts=parts, push_bytes=getattr(result, "pushed_bytes", None) if parts else None,
                       steps=steps, files_key=self.files_key)


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
        return HistoryView(History(path or where), key, project_key(request), size, context_files(request))
    except (OSError, sqlite3.Error):
        return None
