"""The reuse key (archfleet.buildkey) and the built-in ``reuse`` strategy (plugins/reuse.py).

Rules (issue 15, buildkey's docstring): a platform whose inputs are unchanged is not built
again. Its key covers the context, Dockerfile, build args, target, labels, manifest annotations,
secrets' ids (not their values) and the resolved digest of every base image *for that
platform*; no key (never reused) without --push, with --no-pull, or with a base not resolved.
The strategy finds the child through the label carrying the key, under the -t tags, offers
``reuse`` at 0 s, not with --no-cache, looks the registry up once per command (while the nodes
are probed), and hands verification the index holding the child.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json

import attrs
import httpx
import pytest

from archfleet import buildkey, mediatypes
from archfleet.api import hookimpl
from archfleet.model import Annotation, BaseImage, BuildRequest, NodeFacts, NodeSpec, Option
from archfleet.platforms import parse
from archfleet.registry import RegistryClient
from archfleet.session import Session
from archfleet.plugins import reuse

from fakeregistry import FakeRegistry, digest_of
from images import AMD64, ARM64, layer_bytes

HOST = "registry.test"
CONFIG = {"auths": {HOST: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}
AMD, ARM = parse("linux/amd64"), parse("linux/arm64")
BASE_REF = f"{HOST}/base:1"


def context(tmp_path, dockerfile: str):
    (tmp_path / "Dockerfile").write_text(dockerfile)
    return tmp_path


def request(ctx, **kw) -> BuildRequest:
    kw.setdefault("push", True)
    kw.setdefault("tags", (f"{HOST}/app:1",))
    return BuildRequest(ctx, ctx / "Dockerfile", kw.pop("platforms", (AMD, ARM)), **kw)


def bases(amd="a1", arm="b1", index="i1") -> tuple[BaseImage, ...]:
    return (BaseImage(BASE_REF, "sha256:" + index * 32, (("linux/amd64", "sha256:" + amd * 32),
                                                         ("linux/arm64", "sha256:" + arm * 32))),)


@pytest.fixture
def ctx(tmp_path):
    return context(tmp_path, f"FROM {BASE_REF}\nRUN true\n")


def key(req, platform=AMD, context_digest="c0"):
    return buildkey.reuse_key(req, platform, context_digest)


def test_the_key_changes_with_this_platforms_base_digest_only(ctx):
    req = request(ctx, bases=bases())
    assert key(req) == key(attrs.evolve(req, bases=bases(arm="b2")))  # arm64's base moved: not amd64's business
    assert key(req) != key(attrs.evolve(req, bases=bases(amd="a2")))
    assert key(req, ARM) != key(attrs.evolve(req, bases=bases(arm="b2")), ARM)
    assert key(req) != key(req, ARM)


def test_a_stage_on_the_build_platform_keys_on_the_whole_index(tmp_path):
    req = request(context(tmp_path, f"FROM --platform=$BUILDPLATFORM {BASE_REF} AS tools\nRUN true\n"
                                    "FROM scratch\nCOPY --from=tools /etc/hostname /\n"), bases=bases())
    assert key(req) != key(attrs.evolve(req, bases=bases(index="i2")))  # any node may build it
    assert key(req) == key(attrs.evolve(req, bases=bases(amd="a2")))


@pytest.mark.parametrize("change", [
    {"labels": (("a", "b"),)},
    {"annotations": (Annotation("manifest", "k", "v"),)},
    {"annotations": (Annotation("manifest", "k", "v", AMD),)},
    {"secret_ids": ("npmrc",)},
])
def test_the_key_covers_labels_manifest_annotations_and_secret_ids(ctx, change):
    req = request(ctx, bases=bases())
    assert key(req) != key(attrs.evolve(req, **change))


def test_index_annotations_another_platforms_annotations_and_the_context_digest(ctx):
    req = request(ctx, bases=bases())
    assert key(req) == key(attrs.evolve(req, annotations=(Annotation("index", "k", "v"),
                                                          Annotation("manifest-descriptor", "k", "v"),
                                                          Annotation("manifest", "k", "v", ARM))))
    assert key(req, context_digest="c0") != key(req, context_digest="c1")  # context, Dockerfile, args, target


@pytest.mark.parametrize("change", [{"push": False}, {"pull": False}, {"bases": ()}])
def test_no_key_without_push_with_no_pull_or_unresolved_bases(ctx, change):
    assert key(request(ctx, **{"bases": bases(), **change})) is None


def test_scratch_and_stage_bases_need_no_resolving(tmp_path):
    req = request(context(tmp_path, "FROM scratch AS a\nCOPY Dockerfile /\nFROM a\n"))
    assert buildkey.external_bases(req) == [] and key(req) is not None


def registry_with_base() -> FakeRegistry:
    fake = FakeRegistry(HOST)
    amd = fake.add_image("base", [layer_bytes({"bin/app": AMD64})])
    arm = fake.add_image("base", [layer_bytes({"bin/app": ARM64})], platform=("linux", "arm64"))
    att = fake.add_image("base", [b"{}"])
    index = fake.add_index("base", [{"digest": amd, "platform": ("linux", "amd64")},
                                    {"digest": arm, "platform": ("linux", "arm64")},
                                    {"digest": att, "platform": ("unknown", "unknown"),
                                     "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}])
    fake.manifests[("base", "1")] = fake.manifests[("base", index)]
    return fake


def test_resolve_reads_each_base_once_and_names_each_platforms_manifest(ctx, tmp_path_factory):
    fake = registry_with_base()

    async def go(req):
        async with RegistryClient(transport=httpx.MockTransport(fake), docker_config=CONFIG) as c:
            return await buildkey.resolve_bases(c, req)

    (base,) = asyncio.run(go(request(ctx)))
    body = fake.manifests[("base", "1")][0]
    index = json.loads(body)
    assert base.ref == BASE_REF and base.digest == digest_of(body)
    assert dict(base.platforms) == {"linux/amd64": index["manifests"][0]["digest"],  # no unknown/unknown
                                    "linux/arm64": index["manifests"][1]["digest"]}
    assert [r.url.path for r in fake.requests if "/manifests/" in r.url.path and "authorization" in r.headers] \
        == ["/v2/base/manifests/1"]  # (the first try, without a token, is answered with the challenge)
    missing = context(tmp_path_factory.mktemp("missing"), f"FROM {HOST}/nothing:here\n")
    assert asyncio.run(go(request(missing))) is None  # not resolved: nothing is reused


# -- the strategy ---------------------------------------------------------------------------------


def published(fake: FakeRegistry, req: BuildRequest, keys: dict) -> str:
    """An index under app:1 whose children carry the reuse-key labels ``keys`` (platform -> key)."""
    entries = []
    for platform, value in keys.items():
        labels = {buildkey.LABEL_REUSE_KEY: value} if value else {}
        digest = fake.add_image("app", [layer_bytes({"bin/app": AMD64})], media_type=mediatypes.DOCKER_MANIFEST,
                                platform=("linux", platform.architecture), config={"Labels": labels})
        entries.append({"digest": digest, "platform": ("linux", platform.architecture)})
    index = fake.add_index("app", entries, media_type=mediatypes.DOCKER_LIST)
    fake.manifests[("app", "1")] = fake.manifests[("app", index)]
    return index


FACTS = (NodeFacts(NodeSpec("n1", transport="ssh"), True), NodeFacts(NodeSpec("local"), True))


def offers(fake, req, session=None):
    session = session or Session()

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(fake), docker_config=CONFIG) as c:
            session.registry = c
            reuse.archfleet_prepare(req, session)
            got = [await answer if inspect.isawaitable(answer) else answer
                   for answer in [reuse.archfleet_offer(p, req, FACTS, session) for p in req.platforms]]
            result = await reuse.archfleet_run(got[0][0], req, type("Job", (), {"status": lambda self, s: None})(),
                                               session) if got[0] else None
            return got, result

    return asyncio.run(go())


def test_an_unchanged_platform_is_offered_as_reuse_at_no_cost_and_runs_into_the_old_index(ctx, monkeypatch):
    monkeypatch.setattr(reuse, "context_digest", lambda request: "c0")
    req = request(ctx, bases=bases())
    fake = FakeRegistry(HOST)
    index = published(fake, req, {AMD: key(req, AMD), ARM: "sha256:" + "f" * 64})  # arm64's inputs changed
    (amd, arm), result = offers(fake, req)
    assert arm == []
    (option,) = amd
    assert (option.strategy, option.node, option.estimate) == ("reuse", "local", 0.0)
    assert reuse.archfleet_estimate(option) == (0.0, "reusing a child the registry holds costs nothing")
    assert result.ref == f"{HOST}/app@{index}" and result.seconds == 0.0
    child = json.loads(fake.manifests[("app", index)][0])["manifests"][0]["digest"]
    assert result.digest == child
    manifest_gets = [r for r in fake.requests if "/manifests/" in r.url.path and "authorization" in r.headers]
    assert len(manifest_gets) == 3  # the tag once, each child once: for both platforms together


@pytest.mark.parametrize("change", [{"no_cache": True}, {"push": False}])
def test_no_reuse_with_no_cache_or_without_push(ctx, monkeypatch, change):
    monkeypatch.setattr(reuse, "context_digest", lambda request: "c0")
    req = request(ctx, bases=bases())
    fake = FakeRegistry(HOST)
    published(fake, req, {AMD: key(req, AMD), ARM: key(req, ARM)})
    got, _ = offers(fake, attrs.evolve(req, **change))
    assert got == [[], []] and fake.requests == []


def test_a_child_without_a_key_or_a_tag_that_is_missing_offers_nothing(ctx, monkeypatch):
    monkeypatch.setattr(reuse, "context_digest", lambda request: "c0")
    req = request(ctx, bases=bases())
    fake = FakeRegistry(HOST)
    got, _ = offers(fake, req)  # nothing under the tag yet
    assert got == [[], []]
    published(fake, req, {AMD: None, ARM: None})  # built by an archfleet without keys
    got, _ = offers(fake, req)
    assert got == [[], []]


# -- the pipeline: bases resolved and plugins prepared while the nodes are probed ---------------------


class Recording:
    """One node, probed slowly; a strategy that records what it was handed."""

    def __init__(self):
        self.events: list[str] = []
        self.bases = None

    @hookimpl
    def archfleet_add_nodes(self, config):
        return [NodeSpec("n1", transport="test")]

    @hookimpl
    def archfleet_probe(self, node):
        async def probe():
            self.events.append("probe started")
            await asyncio.sleep(0.05)
            self.events.append("probe done")
            return NodeFacts(node, True, native=[AMD, ARM], builder="buildkit", engine_cli=["docker"], score=1.0)
        return probe()

    @hookimpl
    def archfleet_prepare(self, request, session):
        async def prepare():
            self.events.append("prepared")
        return prepare()

    @hookimpl
    def archfleet_offer(self, platform, request, facts):
        self.events.append("offer")
        self.bases = request.bases
        return [Option(platform, "test", "n1", 1.0)]

    @hookimpl
    def archfleet_run(self, option):
        return None


def test_make_plan_resolves_the_bases_and_prepares_the_plugins_while_probing(ctx):
    from archfleet import pipeline
    from archfleet.inventory import Config
    from archfleet.manager import make_hooks

    fake = registry_with_base()
    plugin = Recording()
    hooks = make_hooks(load_entrypoints=False, builtins=())
    hooks.register(plugin, name="recording")

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(fake), docker_config=CONFIG) as c:
            return await pipeline.make_plan(hooks, request(ctx), Config(local=False), Session(), c)

    planned = asyncio.run(go())
    assert plugin.events.index("prepared") < plugin.events.index("probe done") < plugin.events.index("offer")
    assert plugin.bases == planned.request.bases and [b.ref for b in plugin.bases] == [BASE_REF]
    assert {str(s.option) for s in planned.plan.chosen} == {"test@n1"}


def test_make_plan_starts_the_probe_before_it_asks_the_registry(ctx):
    """Ordering (issue 17): the nodes' probes take their first steps, where a probe starts its
    engine CLIs, before the bases are resolved; the CLIs then run in their own processes while
    this thread talks to the registry. Before, the registry's first requests came first and the
    build started ~20 ms later."""
    from archfleet import pipeline
    from archfleet.inventory import Config
    from archfleet.manager import make_hooks

    class Spawning(Recording):
        @hookimpl
        def archfleet_probe(self, node):
            async def spawn():  # as the local probe's engine CLIs: tasks gathered by the probe
                self.events.append("probe started")

            async def probe():
                await asyncio.gather(spawn(), spawn())
                return NodeFacts(node, True, native=[AMD, ARM], builder="buildkit", engine_cli=["docker"], score=1.0)
            return probe()

    fake = registry_with_base()
    plugin = Spawning()
    hooks = make_hooks(load_entrypoints=False, builtins=())
    hooks.register(plugin, name="recording")

    def answer(req):
        plugin.events.append("registry asked")
        return fake(req)

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(answer), docker_config=CONFIG) as c:
            return await pipeline.make_plan(hooks, request(ctx), Config(local=False), Session(), c)

    asyncio.run(go())
    assert plugin.events.index("probe started") < plugin.events.index("registry asked")


def test_plan_without_a_build_client_uses_the_strategys_own_and_closes_it_at_session_end(ctx, monkeypatch):
    """`archfleet plan` has no registry client of the build's: the strategy opens one for the
    command, in its session state, and closes it in archfleet_session_end. A tag that points at
    a single image (not an index) is looked at too."""
    monkeypatch.setattr(reuse, "context_digest", lambda request: "c0")
    req = request(ctx, platforms=(AMD,), bases=bases())
    fake = FakeRegistry(HOST)
    digest = fake.add_image("app", [layer_bytes({"bin/app": AMD64})], media_type=mediatypes.DOCKER_MANIFEST,
                            config={"Labels": {buildkey.LABEL_REUSE_KEY: key(req, AMD)}})
    fake.manifests[("app", "1")] = fake.manifests[("app", digest)]
    monkeypatch.setattr(reuse, "RegistryClient", lambda insecure: RegistryClient(
        insecure, transport=httpx.MockTransport(fake), docker_config=CONFIG))
    session = Session()

    async def go():
        (option,) = await reuse.archfleet_offer(AMD, req, FACTS, session)
        own = session.state("reuse")["client"]
        await reuse.archfleet_session_end(session)
        return option, own

    option, own = asyncio.run(go())
    assert option.strategy == "reuse" and "client" not in session.state("reuse")
    assert own._http.is_closed
