"""Build one platform on one node through its engine, then push it: the work shared by the
strategies whose builds run in a node's engine (native, qemu, cross). The node's engine adapter
(:func:`archfleet.engines.adapter_for` of ``NodeSpec.engine``: docker or podman) builds and
pushes; this module does not care which."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time

from . import buildcache, engine, outputs, publish, toolchains
from .buildkey import LABEL_REUSE_KEY, reuse_key
from .steps import StepClock, measured_work
from .context import snapshot_of
from .dockerfile import analyse
from .engines import adapter_for
from .model import BuildRequest, Option, PlatformResult
from .reference import child_ref, parse_reference
from .registry import RegistryClient


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
    """``<first tag>-<os>-<arch>[-<variant>]``: the name the platform's image gets in the node's
    engine (a local name: it is never pushed as a tag; children are pushed by digest, and get
    tags in the registry only with ``--child-tags``). None without ``-t``."""
    if not request.tags:
        return None
    return str(child_ref(parse_reference(request.tags[0]), option.platform.tag_suffix))


async def build_and_push(option: Option, request: BuildRequest, job, registry=None) -> PlatformResult:
    """Build ``option.platform`` on ``job``'s node (an :class:`archfleet.executor.Job`), push it
    by digest after ``job.ready_to_push()``: the work of every strategy whose build runs in a
    node's engine.

    The image is labelled with its context digest, its platform and, when it has one, its reuse
    key (:func:`archfleet.buildkey.reuse_key`). Its secrets and ssh reach the node as
    :mod:`archfleet.secrets` says; when another node built the platform's last child, that child
    is its warm cache source (:func:`archfleet.buildcache.warm_ref`; ``PlatformResult.warm_from``).
    With ``-o``, the image's files are merged from its export into a spool tar before the gate
    (:mod:`archfleet.outputs`; ``PlatformResult.output``: the pipeline writes the outputs when
    every platform is done; one export feeds the push and the files). With ``--push``, before the gate, the engine's
    export (:func:`archfleet.engine.export`) is read and the child prepared
    (:func:`archfleet.publish.prepare`: layers compressed, except those the registry holds
    already, :func:`archfleet.publish.known_layers`);
    after it, the child is pushed into the first tag's repository by digest
    (:func:`archfleet.publish.upload`): no tag is created. The result carries the context sync's
    :class:`~archfleet.model.Transfer` when one was sent (``PlatformResult.transfer``), for the
    learn stage, and the parts its seconds went to (``PlatformResult.parts``: the context sync,
    the steps' own times as the engine reported them (``PlatformResult.steps``, read from its
    output by :class:`archfleet.steps.StepClock`), the export and push, and the rest: fixed;
    the transfer is the context sync and the engine's own receiving of the context, BuildKit's
    ``load build context``).
    ``registry``: the command's registry client (``session.registry``), shared with the
    pipeline (its connections, tokens and what it read); without one, a client of its own."""
    started = time.monotonic()
    facts = job.facts
    adapter = adapter_for(facts.node.engine)
    tag = child_tag(request, option)
    job.status("syncing context")
    ctx_dir, dockerfile, transfer = await job.transport.prepare_context(request, job.reporter)
    synced = time.monotonic() - started
    job.status("building")
    clock = StepClock()

    def on_line(line: str) -> None:
        clock.feed(line)
        job.log(line)

    extra = toolchains.build_args(option.platform, analyse(request).declared_args, request.build_args)
    digest_of_context = await asyncio.to_thread(context_digest, request)
    labels = [(LABEL_CONTEXT, digest_of_context), (LABEL_PLATFORM, str(option.platform))]
    key = reuse_key(request, option.platform, digest_of_context)
    if key:
        labels.append((LABEL_REUSE_KEY, key))
    warm = buildcache.warm_ref(request, option.platform, option.node, facts.builder)
    if warm is not None:
        job.log(f"cache source: {warm.ref} (the last {option.platform} child, built on {warm.node})")
    async with contextlib.AsyncExitStack() as cleanup:
        repository = client = known = None
        if request.push and tag is not None:
            # the registry client made and the layers it holds (bases, last child) asked for
            # while the engine builds, not after it: ~30 ms of a one-second build (issue 17)
            repository = parse_reference(request.tags[0])
            client = registry or await cleanup.enter_async_context(RegistryClient(request.insecure_registries))
            known = asyncio.ensure_future(publish.known_layers(client, request, option.platform, repository))
            cleanup.callback(known.cancel)
        image_id = await adapter.build(
            job.transport, facts, platform=option.platform, request=request, tag=tag or "",
            context=ctx_dir, dockerfile=dockerfile, extra_build_args=extra, extra_labels=labels, on_line=on_line,
            warm=warm.ref if warm else None,
        )
        clock.close()
        built_at = time.monotonic()
        timed = clock.steps()
        work = measured_work(option.steps, timed)

        # the context's transfer: archfleet's sync to the node, then BuildKit receiving it
        transfer_seconds = synced + clock.context_load()

        def parts(total: float, push: float = 0.0) -> tuple:
            return (("fixed", max(total - transfer_seconds - work - push, 0.0)), ("transfer", transfer_seconds),
                    ("work", work), ("push", push))

        warm_from = warm.node if warm else None
        spool = outputs.workdir() if request.outputs else None  # removed when the run ends (outputs.spools)
        prefix = outputs.prefix_for(request, option.platform)
        if repository is None:
            tree = None
            if spool is not None:  # the outputs are written once every platform is done (the pipeline)
                job.status("exporting")
                tree = await outputs.from_export(adapter.export(job.transport, facts, image_id), spool, prefix,
                                                 job.node)
            total = time.monotonic() - started
            return PlatformResult(option.platform, option, total, image_id=image_id, ref=tag,
                                  transfer=transfer, warm_from=warm_from, output=str(tree) if tree else None,
                                  parts=parts(total), steps=timed)
        # a build's only platform may push as it exports: its layers are uploaded while they
        # are compressed, as the export is read (~80 ms of a 30 MB layer's push, issue 17)
        early = job.alone()
        if early:
            await job.ready_to_push()
        job.status("exporting")
        export = adapter.export(job.transport, facts, image_id)
        if spool is not None:
            export = outputs.tee(export, spool / "image.tar")  # one export: the push and the files
        prepared = await publish.prepare(
            export, node=job.node, image_id=image_id,
            platform=option.platform, annotations=publish.manifest_annotations(request.annotations, option.platform),
            known=await known, push=(client, repository) if early else None)
        try:
            tree = await outputs.tree_of(spool / "image.tar", spool, prefix, job.node) if spool else None
            built = time.monotonic() - started
            exported = time.monotonic() - built_at
            if not early:
                await job.ready_to_push()
            job.status("pushing")
            push_started = time.monotonic()
            digest, _, _, counts = await publish.upload(client, prepared, repository)
        finally:
            publish.discard(prepared)
        pushed_bytes = sum(b.size for b in prepared.blobs if b.path is not None)
    as_read = f", {len(prepared.streamed)} sent as the export was read" if prepared.streamed else ""
    job.log(f"pushed {repository.name}@{digest} (blobs: {counts['uploaded']} uploaded, {counts['mounted']} mounted, "
            f"{counts['skipped']} already there; {prepared.compressed} "
            f"layer{'' if prepared.compressed == 1 else 's'} compressed{as_read})")
    # the time waiting at the push gate is other platforms' time, not this option's
    uploaded = time.monotonic() - push_started
    seconds = built + uploaded
    return PlatformResult(option.platform, option, seconds, repository=repository.name,
                          digest=digest, ref=f"{repository.name}@{digest}", image_id=image_id, transfer=transfer,
                          scans=prepared.scans, warm_from=warm_from, output=str(tree) if tree else None,
                          parts=parts(seconds, exported + uploaded), steps=timed, pushed_bytes=pushed_bytes,
                          layer_prints=prepared.layer_prints)
