"""The learn stage: the stages that measure return what they measured (a probe's fresh score, a
context sync's transfer, verification's new layer scans, a build's seconds) and only the
pipeline's learn stage writes them (scores, link rates, layer scans, history rows). A cache that
cannot be written never fails the command."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from archfleet import cachedir, history, index as index_mod, layercache, layerprints, linkrate, pipeline, scores
from archfleet.api import hookimpl
from archfleet.history import History
from archfleet.inventory import Config
from archfleet.learn import Lessons, keep
from archfleet.model import BuildRequest, ChildImage, LayerScan, NodeFacts, NodeSpec, Option, PlatformResult, Transfer
from archfleet.nodebuild import build_and_push
from archfleet.platforms import parse
from archfleet.registry import RegistryClient
from archfleet.session import Session

from stubs import AMD, ARM, Recorder, StubTransport, ok, request

NODE = NodeSpec("n1", transport="stub", settings={"host": "h1"}, max_builds=4)
LINK = scores.score_key(NODE)
BIG = 8 << 20  # enough bytes for a link-rate measurement (linkrate.MIN_BYTES)
DIGEST = "sha256:" + "cd" * 32
SCAN = {"entries": {"bin/uname": ["file", 0, "elf"]}, "whiteouts": []}


def layer(n: int) -> str:
    return f"sha256:{n:064x}"


def rows() -> int:
    return History(cachedir.history()).count()


def result(platform, transfer=None, seconds=3.0) -> PlatformResult:
    return PlatformResult(platform, Option(platform, "stub", "n1", 5.0), seconds, ref=f"reg.example/app@{DIGEST}",
                          digest=DIGEST, repository="reg.example/app", transfer=transfer)


# --- keep: lessons in, caches written ------------------------------------------------------------

def test_keep_writes_scores_rates_scans_and_rows():
    view = history.view_for(request(AMD, ARM))
    sync = Transfer(LINK, BIG, 0.5, "s1")
    keep(Lessons(probed=[NodeFacts(NODE, True, score=2.5, score_measured=True)],
                 results=[result(AMD, sync), result(ARM, sync, seconds=4.0)], speeds={"n1": 1.5},
                 scans=[LayerScan(layer(1), SCAN)], history=view))
    assert scores.cached(LINK) == 2.5
    assert linkrate.measured(LINK) == BIG / 0.5
    assert layercache.load(layer(1)) == SCAN
    assert rows() == 2
    got = view.db._conn().execute("SELECT platform, seconds, speed FROM runs ORDER BY id").fetchall()
    assert got == [("linux/amd64", 3.0, 1.5), ("linux/arm64", 4.0, 1.5)]


def test_a_score_read_from_the_cache_is_not_written_again(monkeypatch):
    stored = []
    monkeypatch.setattr(scores, "store", lambda key, score: stored.append((key, score)))
    keep(Lessons(probed=[NodeFacts(NODE, True, score=2.5), NodeFacts(NODE, False, score_measured=True)]))
    assert stored == []


@pytest.mark.parametrize("load,cpus,kept", [(7.3, 2, False), (2.5, 2, False), (2.0, 2, True), (0.4, 2, True),
                                              (3.0, 4, True)])
def test_a_score_measured_while_the_node_was_busy_is_kept_for_minutes_not_a_day(load, cpus, kept, monkeypatch):
    """Rule: above one runnable task per CPU (1-min load average > CPUs), the one-core benchmark
    measured a share of a core, and the planner divides by the load itself; kept for a day, it
    made later estimates 2-4x slow (issue 17). Such a score serves the commands of the next
    BUSY_SCORE_TTL seconds (10 min); at or below the CPU count, the score is the node's, for a day."""
    keep(Lessons(probed=[NodeFacts(NODE, True, score=0.3, score_measured=True, load=load, cpus=cpus)]))
    assert scores.cached(LINK) == 0.3
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + scores.BUSY_SCORE_TTL + 1)
    assert scores.cached(LINK) == (0.3 if kept else None)
    monkeypatch.setattr(time, "time", lambda: now + scores.SCORE_TTL + 1)
    assert scores.cached(LINK) is None


def test_one_sync_is_folded_into_the_rate_once_however_many_platforms_used_it(monkeypatch):
    folded = []
    monkeypatch.setattr(linkrate, "record", lambda *args: folded.append(args))
    one, other = Transfer(LINK, BIG, 1.0, "s1"), Transfer(LINK, BIG, 2.0, "s2")
    keep(Lessons(results=[result(AMD, one), result(ARM, one), result(parse("linux/s390x"), other),
                          result(parse("linux/386"))]))
    assert folded == [(LINK, BIG, 1.0), (LINK, BIG, 2.0)]


def test_a_layer_two_children_scanned_is_stored_once(monkeypatch):
    stored = []
    monkeypatch.setattr(layercache, "store", lambda digest, scan: stored.append(digest))
    keep(Lessons(scans=[LayerScan(layer(1), SCAN), LayerScan(layer(2), SCAN), LayerScan(layer(1), dict(SCAN))]))
    assert stored == [layer(1), layer(2)]


def test_keep_writes_the_prints_of_the_layers_the_pushes_read():
    """Rule: every layer a push read leaves its print (archfleet.layerprints), for the next push."""
    one = (layer(1), 5 << 20, "a" * 64)
    two = (layer(2), 1 << 10, "b" * 64)
    keep(Lessons(results=[attrs_evolve(result(AMD), layer_prints=[one, two]),
                          attrs_evolve(result(ARM), layer_prints=[one])]))
    assert layerprints.recall_all() == {layer(1): (5 << 20, "a" * 64), layer(2): (1 << 10, "b" * 64)}


def attrs_evolve(value, **changes):
    import attrs

    return attrs.evolve(value, **changes)


def test_no_history_no_rows_but_the_rest_is_learned():
    keep(Lessons(results=[result(AMD, Transfer(LINK, BIG, 1.0, "s1"))], history=None))
    assert rows() == 0 and linkrate.measured(LINK) == BIG


# --- a cache that cannot be written never fails the command --------------------------------------

@pytest.fixture
def unwritable_caches(tmp_path, monkeypatch):
    """The cache dir and the history below a regular file: every write fails (ENOTDIR, even for root)."""
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file" / "cache"))
    monkeypatch.setenv("ARCHFLEET_HISTORY", str(tmp_path / "file" / "history.sqlite"))
    monkeypatch.setattr(history, "_warned", threading.Event())


def test_keep_never_raises_for_caches_it_cannot_write(unwritable_caches, capsys):
    keep(Lessons(probed=[NodeFacts(NODE, True, score=2.5, score_measured=True)],
                 results=[result(AMD, Transfer(LINK, BIG, 1.0, "s1"))], speeds={"n1": 1.0},
                 scans=[LayerScan(layer(1), SCAN)], history=history.view_for(request(AMD))))
    assert scores.cached(LINK) is None and linkrate.measured(LINK) is None and layercache.load(layer(1)) is None
    keep(Lessons(results=[attrs_evolve(result(AMD), layer_prints=[(layer(1), 10, "a" * 64)])]))
    assert layerprints.recall_all() == {}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("archfleet: warning: build history off")


# --- the stages that measure return the measurement and write nothing -----------------------------

def test_the_benchmark_says_whether_it_measured_and_writes_nothing():
    from archfleet import probe
    from archfleet.transport import Completed

    class Bench:
        runs = 0

        async def run(self, argv, **kwargs):
            Bench.runs += 1
            return Completed(tuple(argv), 0, ("bench_us=33500",))

    assert asyncio.run(probe.benchmark(Bench(), NODE)) == probe.Score(2.0, measured=True)
    assert not cachedir.scores().exists()
    keep(Lessons(probed=[NodeFacts(NODE, True, score=2.0, score_measured=True)]))
    assert asyncio.run(probe.benchmark(Bench(), NODE)) == probe.Score(2.0, measured=False)  # read, not measured
    assert Bench.runs == 1


def test_a_context_sync_returns_its_transfer_and_writes_no_rate(tmp_path, monkeypatch):
    from archfleet.context import sync_context
    from archfleet.transport import LocalTransport

    class Linked(LocalTransport):
        link_key = LINK

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (ctx / "blob").write_bytes(os.urandom(2 << 20))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)  # the "node" is this machine; its cache is relative to the working dir
    req = BuildRequest(ctx, ctx / "Dockerfile", [AMD])
    _, _, sent = asyncio.run(sync_context(Linked(), req))
    assert sent.link == LINK and sent.bytes > 2 << 20 and sent.seconds > 0 and sent.sync
    assert not cachedir.links().exists()
    _, _, again = asyncio.run(sync_context(Linked(), req))
    assert again is None  # the node has it: nothing sent, nothing to learn
    _, _, unnamed = asyncio.run(sync_context(LocalTransport(), BuildRequest(ctx, ctx / "Dockerfile", [ARM])))
    assert unnamed is None


@pytest.mark.parametrize("prepared, expected", [
    (("ctx", "ctx/Dockerfile", None), None),  # a transport that sends nothing (the local one)
    (("ctx", "ctx/Dockerfile", Transfer(LINK, BIG, 1.0, "s1")), Transfer(LINK, BIG, 1.0, "s1")),
])
def test_a_build_carries_the_sync_measurement_in_its_result(prepared, expected):
    from archfleet.executor import Job, PushGate

    class Syncing(StubTransport):
        async def prepare_context(self, request, reporter=None):
            return prepared

    facts = NodeFacts(NODE, True, native=[AMD], builder="buildkit", engine_cli=["docker"])
    option = Option(AMD, "stub", "n1", 5.0)

    async def go():
        job = Job(option, facts, Syncing("n1", ok()), Recorder(), PushGate([AMD]))
        return await build_and_push(option, request(AMD), job)

    assert asyncio.run(go()).transfer == expected


def test_verification_returns_new_scans_and_writes_none(monkeypatch):
    """A child's layers scanned during verification ride on the ChildImage (not its identity)."""
    async def architecture(client, ref, manifest, config, known=None):
        return "uname", "amd64", (LayerScan(layer(1), SCAN),)

    class Manifest:
        media_type = "application/vnd.docker.distribution.manifest.v2+json"
        digest = DIGEST
        body = b"{}"

        def json(self):
            return {"config": {"digest": "sha256:" + "ee" * 32}, "layers": []}

    class Registry:
        async def get_manifest(self, ref):
            return Manifest()

        async def get_blob(self, ref, digest):
            return b'{"os": "linux", "architecture": "amd64"}'

    monkeypatch.setattr(index_mod, "program_architecture", architecture)
    from archfleet.reference import parse_reference

    child = asyncio.run(index_mod.verify_child(Registry(), parse_reference(f"reg.example/app@{DIGEST}"), AMD))
    assert child.scans == (LayerScan(layer(1), SCAN),)
    assert child == ChildImage(AMD, DIGEST, Manifest.media_type, 2)
    assert not cachedir.layers().exists()


# --- the pipeline: learned after the probe and at the end of a build -----------------------------

class Fleet:
    """One stub node ("n1"): probed with a fresh score; builds that all used one context sync."""

    def __init__(self, transport, transfer, *, measured=True):
        self.transport, self.transfer, self.measured = transport, transfer, measured

    @hookimpl
    def archfleet_add_nodes(self, config):
        return [NODE]

    @hookimpl
    def archfleet_probe(self, node):
        return NodeFacts(node, True, native=[AMD, ARM], builder="buildkit", engine_cli=["docker"], cpus=2,
                         score=2.0, score_measured=self.measured)

    @hookimpl
    def archfleet_offer(self, platform):
        return [Option(platform, "stub", "n1", 5.0)]

    @hookimpl
    def archfleet_connect(self, node):
        async def connect():
            return self.transport
        return connect()

    @hookimpl
    def archfleet_run(self, option, request, job):
        async def run():
            await job.ready_to_push()
            return result(option.platform, self.transfer)
        return run()


def hooks_with(plugin):
    from archfleet.manager import make_hooks

    hooks = make_hooks({}, load_entrypoints=False, builtins=())
    hooks.register(plugin, name="stub")
    return hooks


def test_the_probe_stage_learns_the_scores_it_measured():
    facts = asyncio.run(pipeline.probe(hooks_with(Fleet(None, None)), Config(local=False), Session()))
    assert facts["n1"].score_measured and scores.cached(LINK) == 2.0


def test_a_score_the_probe_read_from_the_cache_is_not_learned_again():
    asyncio.run(pipeline.probe(hooks_with(Fleet(None, None, measured=False)), Config(local=False), Session()))
    assert not cachedir.scores().exists()


@pytest.fixture
def fake_publish(monkeypatch):
    """Registry steps of a pushed build without a registry: verification returns a child with one
    new layer scan; staging and moving the tags do nothing."""
    async def check_access(self, ref, push=False):
        return None

    async def verify_child(client, ref, platform, scans=None):
        return ChildImage(platform, DIGEST, "application/vnd.docker.distribution.manifest.v2+json", 100,
                          scans=[LayerScan(layer(1), SCAN), LayerScan(layer(2 if platform == AMD else 3), SCAN)])

    async def stage_index(client, source, children, tags, **kw):
        return index_mod.Staged("sha256:" + "ff" * 32, b"{}", "application/vnd.oci.image.index.v1+json")

    async def move_tags(client, tags, body, media_type, **kw):
        return None

    monkeypatch.setattr(RegistryClient, "check_access", check_access)
    monkeypatch.setattr(index_mod, "verify_child", verify_child)
    monkeypatch.setattr(index_mod, "stage_index", stage_index)
    monkeypatch.setattr(index_mod, "move_tags", move_tags)


def build(hooks, **kw):
    req = request(AMD, ARM, tags=["reg.example/app:1"], push=True, **kw)
    return asyncio.run(pipeline.build(hooks, req, Config(local=False), Recorder(), Session()))


def test_a_build_learns_rows_rates_scores_and_scans(fake_publish, monkeypatch):
    folded = []
    real = linkrate.record
    monkeypatch.setattr(linkrate, "record", lambda *a: folded.append(a) or real(*a))
    sync = Transfer(LINK, BIG, 0.25, "s1")
    summary = build(hooks_with(Fleet(StubTransport("n1", ok()), sync)))
    assert summary.index_digest and [r.transfer for r in summary.results] == [sync, sync]
    assert rows() == 2
    assert folded == [(LINK, BIG, 0.25)] and linkrate.measured(LINK) == BIG / 0.25
    assert scores.cached(LINK) == 2.0
    assert len(summary.children) == 2  # the shared base layer(1) and one layer of each platform's
    assert all(layercache.load(layer(n)) == SCAN for n in (1, 2, 3))


def test_a_build_whose_caches_cannot_be_written_still_succeeds(fake_publish, unwritable_caches, capsys):
    summary = build(hooks_with(Fleet(StubTransport("n1", ok()), Transfer(LINK, BIG, 0.25, "s1"))))
    assert summary.index_digest and len(summary.results) == 2
    assert scores.cached(LINK) is None and linkrate.measured(LINK) is None and layercache.load(layer(1)) is None
    assert capsys.readouterr().err.count("archfleet: warning: build history off") == 1


def test_only_the_learn_module_writes_the_caches():
    """Writing what was measured is the learn stage's alone: no other module of archfleet or its
    built-in plugins calls a cache's writer."""
    import re
    from pathlib import Path

    core = Path(cachedir.__file__).resolve().parent
    writers = re.compile(r"\b(?:scores\.store|linkrate\.record|layercache\.store|history\.record)\(")
    found = [f"{p.name}: {m.group(0)}" for p in sorted(core.glob("*.py")) + sorted((core.parent / "plugins").glob("*.py"))
             if p.name != "learn.py" for m in writers.finditer(p.read_text())]
    assert found == []
