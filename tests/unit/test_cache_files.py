"""The user's cache files (history, link rates, benchmark scores, layer scans) are optimisations:
a cache dir that cannot be written never fails plan or build (review finding 19), and runs or
threads writing at once neither tear a file nor lose each other's entries (finding 29: a
``<name>.<pid>.tmp`` shared by concurrent writers)."""

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest

from archfleet import cachedir, cachefile, history, layercache, layerprints, linkrate, probe, scores
from archfleet.model import BuildRequest, NodeFacts, NodeSpec, Option, PlatformResult
from archfleet.platforms import parse
from archfleet.plugins import estimates

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "arch-test"
AMD = parse("linux/amd64")
DIGEST = "sha256:" + "ab" * 32


def unwritable(tmp_path: Path, kind: str) -> Path:
    """A cache dir nothing can be written to: below a regular file (ENOTDIR, even for root), or
    a read-only directory (EACCES; root ignores modes, so that case runs unprivileged only)."""
    if kind == "below-a-file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "cache"
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d / "cache"


# Root ignores directory modes, so the read-only case exists only for other users; it is left
# out rather than skipped (under CI=true a skip fails the run), and "below-a-file" checks the
# same rule for everyone.
KINDS = ["below-a-file"] + (["read-only-dir"] if os.geteuid() != 0 else [])


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(history, "_warned", threading.Event())


@pytest.mark.parametrize("kind", KINDS)
def test_an_unwritable_history_turns_history_off_with_one_warning(tmp_path, monkeypatch, capsys, fresh_warning, kind):
    """Rule: ARCHFLEET_HISTORY (or the cache dir) that cannot be written: every history read and
    write answers "nothing known" (no exception reaches the estimates plugin, so plan/build go
    on with priors), and stderr gets exactly one warning line, however many calls fail."""
    monkeypatch.setenv("ARCHFLEET_HISTORY", str(unwritable(tmp_path, kind) / "history.sqlite"))
    request = BuildRequest(EXAMPLE, EXAMPLE / "Dockerfile", [AMD])
    view = history.view_for(request)
    assert view is not None
    option = Option(AMD, "native", "n1", 12.0)
    facts = NodeFacts(NodeSpec("n1", transport="ssh", settings={"host": "h"}), True, native=[AMD], score=1.0)
    for _ in range(3):
        assert view.past(option) is None
        assert view.synced_before("n1") is False
        view.record(PlatformResult(AMD, option, 3.0), speed=1.0)
        assert view.db.qemu_factors() == {} and view.db.part_rows(node="n1") == ()
        assert view.db.count() == 0
        got = estimates.archfleet_estimate(option=option, request=request, facts=facts, history=view)
        assert got.seconds > 0 and "prior" in got.basis and "learned" not in got.basis
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("archfleet: warning: build history off: cannot use ")
    assert "ARCHFLEET_HISTORY" in err[0]


def test_history_off_is_silent(monkeypatch, capsys):
    monkeypatch.setenv("ARCHFLEET_HISTORY", "off")
    assert history.view_for(BuildRequest(EXAMPLE, EXAMPLE / "Dockerfile", [AMD])) is None
    assert capsys.readouterr().err == ""


def test_a_broken_history_file_is_no_history(tmp_path, capsys, fresh_warning):
    """Rule: not a database at all (sqlite3.DatabaseError) is the same as unwritable: off, one line."""
    (tmp_path / "h.sqlite").write_bytes(b"this is not sqlite" * 100)
    h = history.History(tmp_path / "h.sqlite")
    assert h.past(context_key="c", project_key="p", platform="linux/amd64", strategy="native", node="n") is None
    h.record(context_key="c", project_key="p", platform="linux/amd64", strategy="native", node="n", seconds=1.0)
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_a_context_with_a_non_utf8_file_name_has_a_history_key(tmp_path):
    """Rule: file names are bytes on Linux; the context key hashes them as such (surrogateescape)
    instead of failing on the first name that is not UTF-8."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    with open(os.path.join(os.fsencode(ctx), b"caf\xe9.txt"), "w") as f:
        f.write("x")
    request = BuildRequest(ctx, ctx / "Dockerfile", [AMD])
    key, size = history.context_key(request)
    assert len(key) == 32 and size == len("FROM scratch\n") + 1
    assert len(history.project_key(request)) == 32


@pytest.mark.parametrize("kind", KINDS)
def test_an_unwritable_cache_dir_never_fails_link_rates(tmp_path, monkeypatch, kind):
    """Rule: the measurement is still returned (and used by this run's caller); it is just not kept."""
    cache = unwritable(tmp_path, kind)
    monkeypatch.setattr(linkrate, "_file", lambda: cache / "links.json")
    assert linkrate.record("n1", 8 << 20, 1.0) == 8 << 20
    assert linkrate.measured("n1") is None


@pytest.mark.parametrize("kind", KINDS)
def test_an_unwritable_cache_dir_never_fails_the_benchmark_score(tmp_path, monkeypatch, kind):
    cache = unwritable(tmp_path, kind)
    monkeypatch.setattr(cachedir, "scores", lambda: cache / "scores.json")
    scores.store("n1|ssh|h|", 1.5)
    assert scores.cached("n1|ssh|h|") is None

    class Bench:
        async def run(self, argv, **kwargs):
            from archfleet.transport import Completed

            return Completed(tuple(argv), 0, ("bench_us=67000",))

    assert asyncio.run(probe.benchmark(Bench(), NodeSpec("n1", transport="ssh", settings={"host": "h"}))) == probe.Score(1.0, True)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unwritable_cache_dir_never_fails_layer_scans(tmp_path, monkeypatch, kind):
    cache = unwritable(tmp_path, kind)
    monkeypatch.setattr(layercache, "_dir", lambda: cache / "layers-v1")
    layercache.store(DIGEST, {"entries": {}, "whiteouts": []})
    assert layercache.load(DIGEST) is None


@pytest.mark.parametrize("kind", KINDS)
def test_an_unwritable_cache_dir_never_fails_layer_prints(tmp_path, monkeypatch, kind):
    cache = unwritable(tmp_path, kind)
    monkeypatch.setattr(cachedir, "layer_prints", lambda: cache / "layer-prints.json")
    layerprints.store([(DIGEST, 10, "a" * 64)])
    assert layerprints.recall_all() == {}


@pytest.mark.parametrize("entry", [None, 3, "x", {}, {"size": 10}, {"head": "a" * 64}, {"size": -1, "head": "a" * 64},
                                   {"size": True, "head": "a" * 64}, {"size": 1.5, "head": "a" * 64},
                                   {"size": 10, "head": "A" * 64}, {"size": 10, "head": "a" * 63},
                                   {"size": 10, "head": 7}])
def test_a_layer_print_that_is_not_a_size_and_a_sha256_is_no_print(tmp_path, monkeypatch, entry):
    """Rule: a cache file is input too: only a non-negative integer size and 64 lowercase hex digits make a print."""
    path = tmp_path / "layer-prints.json"
    monkeypatch.setattr(cachedir, "layer_prints", lambda: path)
    path.write_text(json.dumps({DIGEST: entry}))
    assert layerprints.recall_all() == {}
    path.write_text(json.dumps({DIGEST: {"size": 10, "head": "a" * 64}}))
    assert layerprints.recall_all() == {DIGEST: (10, "a" * 64)}


def test_layer_prints_keep_the_ones_seen_last(tmp_path, monkeypatch):
    """Bounded: past MAX_ENTRIES, the prints seen longest ago go; one seen again counts as new."""
    monkeypatch.setattr(cachedir, "layer_prints", lambda: tmp_path / "layer-prints.json")
    monkeypatch.setattr(layerprints, "MAX_ENTRIES", 3)
    digest = [f"sha256:{n:064x}" for n in range(5)]
    layerprints.store([(digest[0], 1, "a" * 64), (digest[1], 1, "a" * 64), (digest[2], 1, "a" * 64)])
    layerprints.store([(digest[0], 1, "a" * 64), (digest[3], 1, "a" * 64)])
    assert set(layerprints.recall_all()) == {digest[0], digest[2], digest[3]}
    layerprints.store([("not-a-digest", 1, "a" * 64), (digest[4], -1, "a" * 64), (digest[4], 1, "nothex")])
    assert set(layerprints.recall_all()) == {digest[0], digest[2], digest[3]}


def test_cached_numbers_must_be_finite_and_positive(tmp_path, monkeypatch):
    """Rule: a cache file is input too: an inf, nan, zero or negative score or rate is no value."""
    monkeypatch.setattr(cachedir, "scores", lambda: tmp_path / "scores.json")
    monkeypatch.setattr(linkrate, "_file", lambda: tmp_path / "links.json")
    import time

    now = time.time()
    bad = {"inf": float("inf"), "nan": float("nan"), "zero": 0, "neg": -1, "text": "fast"}
    (tmp_path / "scores.json").write_text(json.dumps({k: {"score": v, "at": now} for k, v in bad.items()}))
    (tmp_path / "links.json").write_text(json.dumps({k: {"rate": v, "at": now} for k, v in bad.items()}))
    for key in bad:
        assert scores.cached(key) is None and linkrate.measured(key) is None


WRITERS, ROUNDS = 8, 25


def hammer(write) -> None:
    errors = []

    def worker(i):
        try:
            for r in range(ROUNDS):
                write(i, r)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_concurrent_link_rate_writers_lose_nothing(tmp_path, monkeypatch):
    """Rule: writers at once (two SSH syncs finishing together are two threads of one process)
    each use their own temp file and fold their entry in under the file's lock: every node's
    rate is there afterwards, the file is whole JSON, and no temp file is left behind."""
    monkeypatch.setattr(linkrate, "_file", lambda: tmp_path / "links.json")
    hammer(lambda i, r: linkrate.record(f"n{i}", 4 << 20, 1.0))
    doc = json.loads((tmp_path / "links.json").read_text())
    assert sorted(doc) == sorted(f"n{i}" for i in range(WRITERS))
    assert all(linkrate.measured(f"n{i}") == 4 << 20 for i in range(WRITERS))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_score_writers_lose_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cachedir, "scores", lambda: tmp_path / "scores.json")
    hammer(lambda i, r: scores.store(f"n{i}", 1.0 + r))
    assert all(scores.cached(f"n{i}") == float(ROUNDS) for i in range(WRITERS))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_layer_scan_writers_never_tear_a_scan(tmp_path, monkeypatch):
    """Rule: every store of one layer goes through its own temp file (mkstemp) and an atomic
    replace: a reader between the writers always sees the whole scan, never a half-written or
    missing one."""
    monkeypatch.setattr(layercache, "_dir", lambda: tmp_path)
    scan = {"entries": {f"bin/p{i}": ["file", 0, "x" * 40] for i in range(2000)}, "whiteouts": []}
    layercache.store(DIGEST, scan)
    done, torn = threading.Event(), []

    def reader():
        while not done.is_set():
            if layercache.load(DIGEST) != scan:
                torn.append(1)

    r = threading.Thread(target=reader)
    r.start()
    try:
        hammer(lambda i, n: layercache.store(DIGEST, scan))
    finally:
        done.set()
        r.join(60)
    assert torn == [] and layercache.load(DIGEST) == scan
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_write_atomic_uses_a_fresh_temp_name_each_time(tmp_path, monkeypatch):
    """Rule: the temp file's name is unique per write (not per process), in the target's directory."""
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append(Path(src))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    for _ in range(3):
        cachefile.write_atomic(tmp_path / "x.json", "{}")
    assert len(set(seen)) == 3 and all(p.parent == tmp_path for p in seen)


@pytest.mark.parametrize("at,fresh", [(-60, True), (-3600 * 23, True), (-3600 * 25, False), (+3600, False),
                                      (float("inf"), False), (float("nan"), False)])
def test_a_cache_entry_is_fresh_only_when_written_within_its_ttl_and_not_ahead(at, fresh):
    """Scores and link rates (cachefile.fresh_positive): written less than the TTL ago. One
    dated ahead of now (a clock set back, a hand-edited file: found by the fresh-user helper for
    the CLI versions, the same rule) is not fresh: it would be kept for as long as the clock
    lags."""
    import time

    from archfleet import cachefile

    entry = {"score": 1.5, "at": time.time() + at}
    assert cachefile.fresh_positive(entry, "score", 24 * 3600) == (1.5 if fresh else None)
