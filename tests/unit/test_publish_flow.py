"""pipeline.build from the plan to the tags, without the lab: a strategy that pushes real image
manifests into the in-process registry, the real executor, verification and index push.

Rules: the hooks after the run are called in the documented order with their arguments
(hookspecs.py, docs/hooks.md: ``archfleet_index_pushed`` once per tag, ``archfleet_build_finished``
once per platform that succeeded, ``archfleet_session_end`` once, last, awaited, also when the
build failed) and ``ARCHFLEET_TRACE_PLUGINS=1`` prints each call; the index lists the children in
``--platform`` order whichever finished first, so the same build gives the same index digest
(audit L1); a child that fails verification leaves every tag as it was (README: "A tag never
points at a partial result")."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from archfleet import mediatypes, pipeline
from archfleet.api import hookimpl
from archfleet.errors import PlatformsFailed
from archfleet.inventory import Config
from archfleet.manager import make_hooks
from archfleet.model import BuildRequest, PlatformResult
from archfleet.pipeline import Planned
from archfleet.registry import RegistryClient

from fakeregistry import FakeRegistry
from images import AMD64, ARM64, layer_bytes
from stubs import AMD, ARM, CTX, ConnectsStubs, Recorder, facts, plan, scripted_option as option

HOST = "registry.test"
CONFIG = {"auths": {HOST: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}
TAGS = (f"{HOST}/app:1", f"{HOST}/mirror/app:1")
# made once: gzip stamps the time, and the same build must push the same bytes
PROGRAM = {AMD: layer_bytes({"bin/app": AMD64}), ARM: layer_bytes({"bin/app": ARM64})}


class Pushing(ConnectsStubs):
    """Strategy "scripted": builds, waits at the gate, pushes the platform's image into the fake
    registry (by digest, and as ``<tag>-<os>-<arch>``). ``after``: platform -> the platform whose
    build it waits for (to order the builds); ``finished`` lists the platforms in the order they
    were built. ``wrong``: platforms whose image runs another CPU's program (the config still says
    the platform, as Docker 20.10's BuildKit writes it)."""

    def __init__(self, fake, wrong=(), after=None):
        self.fake, self.wrong, self.after = fake, set(wrong), after or {}
        self.finished: list = []
        self._built: dict = {}

    def built(self, platform) -> asyncio.Event:
        return self._built.setdefault(platform, asyncio.Event())

    @hookimpl
    def archfleet_run(self, option, request, job):
        async def run():
            p = option.platform
            if p in self.after:
                await self.built(self.after[p]).wait()
            self.finished.append(p)
            self.built(p).set()
            await job.ready_to_push()
            program = PROGRAM[AMD if p in self.wrong else p]
            digest = self.fake.add_image("app", [program], platform=("linux", p.architecture),
                                         config={"Cmd": ["/bin/app"]})
            self.fake.manifests[("app", f"1{p.tag_suffix}")] = self.fake.manifests[("app", digest)]
            return PlatformResult(p, option, 1.0, repository=f"{HOST}/app", digest=digest,
                                  ref=f"{HOST}/app@{digest}")
        return run()


class Hooks:
    """Records the after-run hooks, in order, with their arguments."""

    def __init__(self):
        self.calls: list[tuple] = []

    @hookimpl
    def archfleet_build_finished(self, result):
        self.calls.append(("build_finished", result.platform, result.digest))

    @hookimpl
    def archfleet_index_pushed(self, ref, digest):
        self.calls.append(("index_pushed", ref, digest))

    @hookimpl
    def archfleet_session_end(self, session):
        async def end():
            await asyncio.sleep(0)
            self.calls.append(("session_end",))
        return end()


def build(monkeypatch, fake, strategy, platforms=(AMD, ARM), **req):
    """pipeline.build as the CLI runs it (inside run_command), planned with one option per
    platform on its own stub node; returns (summary or the error raised, the hooks seen)."""
    hooks = Hooks()
    pm = make_hooks(load_entrypoints=False, builtins=())  # ARCHFLEET_TRACE_PLUGINS from the environment
    pm.register(strategy, name="pushing")
    pm.register(hooks, name="hooks")
    chosen = [option(p, f"n{i}") for i, p in enumerate(platforms)]
    request = BuildRequest(CTX, CTX / "Dockerfile", platforms, tags=TAGS, push=True, **req)

    async def make_plan(pm, request, config, session, client=None):
        return Planned(facts(*[o.node for o in chosen]), tuple(chosen), plan(*chosen), None, (), request)

    monkeypatch.setattr(pipeline, "make_plan", make_plan)
    monkeypatch.setattr(pipeline, "RegistryClient", lambda insecure: RegistryClient(
        insecure, transport=httpx.MockTransport(fake), docker_config=CONFIG))

    async def go():
        return await pipeline.run_command(
            pm, lambda session: pipeline.build(pm, request, Config(local=False), Recorder(), session))

    try:
        return asyncio.run(go()), hooks.calls
    except PlatformsFailed as exc:
        return exc, hooks.calls


def test_the_hooks_after_a_run_are_called_in_order_with_their_arguments(monkeypatch):
    fake = FakeRegistry(HOST)
    summary, calls = build(monkeypatch, fake, Pushing(fake))
    digest = summary.index_digest
    by_platform = {r.platform: r.digest for r in summary.results}
    assert calls == [("index_pushed", TAGS[0], digest), ("index_pushed", TAGS[1], digest),
                     ("build_finished", AMD, by_platform[AMD]), ("build_finished", ARM, by_platform[ARM]),
                     ("session_end",)]


def test_a_failed_build_still_ends_the_session_and_reports_nothing_else(monkeypatch):
    fake = FakeRegistry(HOST)
    error, calls = build(monkeypatch, fake, Pushing(fake, wrong={ARM}))
    assert isinstance(error, PlatformsFailed)
    assert calls == [("session_end",)]


def test_the_trace_prints_every_hook_call_and_its_arguments(monkeypatch, capsys):
    """ARCHFLEET_TRACE_PLUGINS=1 is pluggy's own tracing: each call as ``<hook> [hook]`` with its
    arguments below it, then ``finish <hook> --> <answers>``."""
    monkeypatch.setenv("ARCHFLEET_TRACE_PLUGINS", "1")
    fake = FakeRegistry(HOST)
    summary, _ = build(monkeypatch, fake, Pushing(fake))
    err = capsys.readouterr().err
    calls = [l.strip().split()[0] for l in err.splitlines() if l.strip().endswith("[hook]")
             and not l.strip().startswith("finish")]
    after_run = [c for c in calls if c in ("archfleet_index_pushed", "archfleet_build_finished", "archfleet_session_end")]
    assert after_run == ["archfleet_index_pushed"] * 2 + ["archfleet_build_finished"] * 2 + ["archfleet_session_end"]
    assert "archfleet_connect [hook]" in err and "archfleet_run [hook]" in err
    assert f"ref: {TAGS[0]}" in err and f"digest: {summary.index_digest}" in err


def test_the_trace_is_silent_by_default(monkeypatch, capsys):
    monkeypatch.delenv("ARCHFLEET_TRACE_PLUGINS", raising=False)
    fake = FakeRegistry(HOST)
    build(monkeypatch, fake, Pushing(fake))
    assert "[hook]" not in capsys.readouterr().err


def test_the_index_lists_children_in_platform_order_whichever_finished_first(monkeypatch):
    """Same inputs, same index digest: arm64 built before amd64 must not reorder the index."""
    digests = {}
    for first, then in ((AMD, ARM), (ARM, AMD)):
        fake = FakeRegistry(HOST)
        strategy = Pushing(fake, after={then: first})
        summary, _ = build(monkeypatch, fake, strategy)
        assert strategy.finished == [first, then]
        body, media_type = fake.manifests[("app", "1")]
        assert [m["platform"]["architecture"] for m in json.loads(body)["manifests"]] == ["amd64", "arm64"]
        assert media_type == mediatypes.OCI_INDEX
        digests[first] = summary.index_digest
    assert digests[AMD] == digests[ARM]


def test_a_child_failing_verification_moves_no_tag(monkeypatch):
    fake = FakeRegistry(HOST)
    old = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}).encode()
    fake.manifests[("app", "1")] = (old, mediatypes.OCI_INDEX)
    error, _ = build(monkeypatch, fake, Pushing(fake, wrong={ARM}))
    assert isinstance(error, PlatformsFailed) and error.exit_code == 1
    assert str(error).startswith("linux/arm64 failed on scripted@n1: requested linux/arm64 but the image pushed for "
                                 "it runs /bin/app built for linux/amd64")
    assert fake.manifests[("app", "1")][0] == old
    assert ("mirror/app", "1") not in fake.manifests
    assert not [e for e in fake.events if e[0] == "manifest" and not e[2].startswith("sha256:")]
