"""Build one platform on one node through its engine, then push it: the work shared by the
strategies whose builds run in a node's engine (native, qemu, cross). The node's engine adapter
(:func:`archfleet.engines.adapter_for` of ``NodeSpec.engine``: docker or podman) builds and
pushes; this module does not care which."""

from __future__ import annotations

import asyncio
import hashlib
import time

from . import engine, toolchains
from .context import snapshot_of
from .dockerfile import analyse
from .engines import adapter_for
from .model import BuildRequest, Option, PlatformResult
from .reference import child_ref, parse_reference


LABEL_CONTEXT = "org.archfleet.context-digest"
LABEL_PLATFORM = "org.archfleet.platform"


def context_digest(request: BuildRequest) -> str:
    """A digest of what the build consumes: context contents (after BuildKit's ignore rule:
    ``<Dockerfile>.dockerignore``, else ``<context>/.dockerignore``), the ignore file applied,
    the Dockerfile, build args and target. archfleet labels every image it builds with it
    (``org.archfleet.context-digest``), so an unchanged platform can be recognised later.
    Blocking (it hashes the context, once per process): call it in a thread."""
    snap = snapshot_of(request)
    return hashlib.sha256(repr((snap.digest, tuple(request.build_args), request.target)).encode()).hexdigest()


def child_tag(request: BuildRequest, option: Option) -> str | None:
    """``<first tag>-<os>-<arch>[-<variant>]``: where the platform's image is pushed.

    The engine's image store (Docker 20.10) cannot push by digest alone, so each child gets its
    own tag next to the requested one; the requested tags only ever point at the full index.
    """
    if not request.tags:
        return None
    return str(child_ref(parse_reference(request.tags[0]), option.platform.tag_suffix))


async def build_and_push(option: Option, request: BuildRequest, job) -> PlatformResult:
    """Build ``option.platform`` on ``job``'s node (an :class:`archfleet.executor.Job`), push
    after ``job.ready_to_push()``: the work of every strategy whose build runs in a node's engine.
    The result carries the context sync's :class:`~archfleet.model.Transfer` when one was sent
    (``PlatformResult.transfer``), for the learn stage."""
    started = time.monotonic()
    facts = job.facts
    adapter = adapter_for(facts.node.engine)
    tag = child_tag(request, option)
    job.status("syncing context")
    ctx_dir, dockerfile, transfer = await job.transport.prepare_context(request, job.reporter)
    job.status("building")
    extra = toolchains.build_args(option.platform, analyse(request).declared_args, request.build_args)
    digest_of_context = await asyncio.to_thread(context_digest, request)
    labels = [(LABEL_CONTEXT, digest_of_context), (LABEL_PLATFORM, str(option.platform))]
    image_id = await adapter.build(
        job.transport, facts, platform=option.platform, request=request, tag=tag or "",
        context=ctx_dir, dockerfile=dockerfile, extra_build_args=extra, extra_labels=labels, on_line=job.log,
    )
    built = time.monotonic() - started
    if not request.push or tag is None:
        return PlatformResult(option.platform, option, built, image_id=image_id, ref=tag, transfer=transfer)
    await job.ready_to_push()
    job.status("pushing")
    push_started = time.monotonic()
    ref = parse_reference(tag)
    # a credsStore/credHelpers lookup starts a helper program: not on the event loop
    auth = await asyncio.to_thread(engine.auth_config_for, ref.registry)
    digest = await adapter.push(job.transport, facts, ref, auth, on_line=job.log)
    # the time waiting at the push gate is other platforms' time, not this option's
    seconds = built + (time.monotonic() - push_started)
    return PlatformResult(option.platform, option, seconds, repository=ref.name,
                          digest=digest, ref=f"{ref.name}@{digest}", image_id=image_id, transfer=transfer)
