from pathlib import Path

from archfleet.history import MAX_ROWS, History


def rec(h, seconds, **kw):
    args = dict(context_key="c1", project_key="p1", platform="linux/arm64", strategy="qemu", node="local")
    args.update(kw)
    h.record(seconds=seconds, **args)


def test_past_prefers_this_context_then_project(tmp_path):
    h = History(tmp_path / "h.sqlite")
    assert h.past(context_key="c1", project_key="p1", platform="linux/arm64", strategy="qemu", node="local") is None
    rec(h, 10.0, context_key="c0")
    got = h.past(context_key="c1", project_key="p1", platform="linux/arm64", strategy="qemu", node="local")
    assert (got.seconds, got.basis) == (10.0, "this project")
    rec(h, 4.0)
    rec(h, 5.0)
    got = h.past(context_key="c1", project_key="p1", platform="linux/arm64", strategy="qemu", node="local")
    assert (got.seconds, got.runs, got.basis) == (4.5, 2, "this context")


def past(h):
    return h.past(context_key="c1", project_key="p1", platform="linux/arm64", strategy="qemu", node="local")


def test_the_estimate_is_the_median_not_the_mean_first_or_last(tmp_path):
    """concepts.md: "from history ... (median of the last runs)". 10, 30, 100 s: the median is
    30; the mean (46.7), the first (10) and the last (100) are all different."""
    h = History(tmp_path / "h.sqlite")
    for took in (10.0, 30.0, 100.0):
        rec(h, took)
    got = past(h)
    assert (got.seconds, got.runs, got.basis) == (30.0, 3, "this context")


def test_only_the_last_three_runs_of_this_context_count(tmp_path):
    """An old 1000 s run, then 10, 30, 100: the last three give 30 (all four would give 20)."""
    h = History(tmp_path / "h.sqlite")
    for took in (1000.0, 10.0, 30.0, 100.0):
        rec(h, took)
    assert (past(h).seconds, past(h).runs) == (30.0, 3)


def test_only_the_last_five_runs_of_this_project_count(tmp_path):
    """Without a run of this context, the project's last five (each another context) count:
    1000, 1000, then 10, 20, 30, 90, 100 give 30 (their mean is 50; all seven would give 90)."""
    h = History(tmp_path / "h.sqlite")
    for i, took in enumerate((1000.0, 1000.0, 10.0, 20.0, 30.0, 90.0, 100.0)):
        rec(h, took, context_key=f"old-{i}")
    got = past(h)
    assert (got.seconds, got.runs, got.basis) == (30.0, 5, "this project")


def test_failures_do_not_count(tmp_path):
    h = History(tmp_path / "h.sqlite")
    rec(h, 1.0, outcome="infra")
    assert h.past(context_key="c1", project_key="p1", platform="linux/arm64", strategy="qemu", node="local") is None


def test_an_older_history_gets_the_speed_column(tmp_path):
    import sqlite3

    path = tmp_path / "h.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
        context_key TEXT NOT NULL, project_key TEXT NOT NULL, platform TEXT NOT NULL, strategy TEXT NOT NULL,
        node TEXT NOT NULL, seconds REAL NOT NULL, bytes INTEGER NOT NULL DEFAULT 0, outcome TEXT NOT NULL);
        INSERT INTO runs (at, context_key, project_key, platform, strategy, node, seconds, outcome)
        VALUES (0, 'c1', 'p1', 'linux/arm64', 'native', 'pi', 20.0, 'ok');""")
    db.commit()
    db.close()
    h = History(path)
    rec(h, 4.0, strategy="native", speed=0.5)
    assert h._conn().execute("SELECT speed FROM runs ORDER BY id").fetchall() == [(None,), (0.5,)]
    assert h.past(context_key="c1", project_key="p1", platform="linux/arm64", strategy="native",
                  node="pi").seconds == 20.0


def test_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr("archfleet.history.MAX_ROWS", 10)
    h = History(tmp_path / "h.sqlite")
    for i in range(25):
        rec(h, float(i))
    assert h.count() == 10


WRITER = """
import sys
from pathlib import Path
from archfleet.history import History
h = History(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    h.record(context_key="c1", project_key="p1", platform="linux/arm64", strategy="qemu",
             node="w" + sys.argv[2], seconds=float(i))
h.close()
"""


def test_two_runs_at_once(tmp_path):
    """Two archfleet processes writing the same history at once (separate processes, not forks:
    an SQLite connection must not cross a fork)."""
    import subprocess
    import sys

    path = str(tmp_path / "h.sqlite")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(n)]) for n in (40, 41)]
    for p in procs:
        assert p.wait(120) == 0
    h = History(Path(path))
    assert h.count() == 81
    assert MAX_ROWS >= 81
    h.close()
