"""The ``reuse`` strategy: a platform whose inputs are unchanged is not built again.

Every image archfleet builds for a push carries its **reuse key** as the label
``org.archfleet.reuse-key`` (:mod:`archfleet.buildkey`: the context's contents, Dockerfile, build
args, target, labels, manifest annotations, secrets' ids and the resolved digest of every base
image, for that platform). When a push is asked for, this plugin looks at what each ``-t`` tag
points at now (one GET of its index, then, all at once, each child's manifest and config: a
child is found by its label, without any tag of its own) and, for a platform whose key is
there, offers a ``reuse`` option that costs nothing: the planner picks it, nothing is built or
pushed for that platform, and the new index names the very same child (with the attestation
manifests the old index kept for it). The plan shows ``reuse``.

Rules: only with ``--push`` and ``-t`` (there is nowhere to look otherwise); never with
``--no-cache`` (build everything); never without a key (``--no-pull``, or a base image the
registry cannot resolve). The lookup runs once per command, for every platform, and its registry
client lives in the command's session. Disable it with ``ARCHFLEET_DISABLE_PLUGINS=reuse``.
"""

from __future__ import annotations

import asyncio
import json

from archfleet.api import (
    LABEL_REUSE_KEY,
    Option,
    PlatformResult,
    RegistryClient,
    context_digest,
    hookimpl,
    parse_reference,
    reuse_key,
)

STRATEGY = "reuse"
NAME = "reuse"
IMAGE_MANIFESTS = ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")
INDEXES = ("application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json")


def _client(session, request) -> RegistryClient:
    """The command's registry client (``session.registry``: what it reads, verification need not
    read again), else one of this plugin's own for the command (``archfleet plan``)."""
    if session.registry is not None:
        return session.registry
    state = session.state(NAME)
    if "client" not in state:
        state["client"] = RegistryClient(request.insecure_registries)
    return state["client"]


async def _children(client: RegistryClient, request) -> dict[str, tuple[str, str, str]]:
    """reuse key -> (repository, digest of the index holding it, the child's digest) for every
    child the ``-t`` tags point at now and that carries a key. A tag that is missing or
    unreadable holds nothing."""
    found: dict[str, tuple[str, str, str]] = {}
    seen: set[str] = set()

    async def child(ref, digest: str, index: str) -> None:
        try:
            manifest = await client.get_manifest(ref.with_digest(digest))
            if manifest.media_type not in IMAGE_MANIFESTS:
                return
            config = json.loads(await client.get_blob(ref, manifest.json()["config"]["digest"]))
        except Exception:
            return  # not there, or not readable: nothing to reuse
        key = ((config.get("config") or {}).get("Labels") or {}).get(LABEL_REUSE_KEY)
        if key:
            found.setdefault(key, (ref.name, index, manifest.digest))

    async def tag(text: str) -> None:
        ref = parse_reference(text)
        try:
            top = await client.get_manifest(ref)
        except Exception:
            return
        if top.media_type in INDEXES:
            entries = [e for e in top.json().get("manifests") or [] if isinstance(e, dict)
                       and (e.get("platform") or {}).get("os") != "unknown"]
            await asyncio.gather(*(child(ref, str(e.get("digest")), top.digest) for e in entries))
        elif top.media_type in IMAGE_MANIFESTS:
            await child(ref, top.digest, top.digest)

    for text in request.tags:
        if text not in seen:
            seen.add(text)
    await asyncio.gather(*(tag(t) for t in seen))
    return found


def _wanted(request) -> bool:
    return bool(request.push and request.tags and not request.no_cache)


def _start(session, request) -> None:
    """Start the look-up of the children under the tags, and the hash of the context, once."""
    state = session.state(NAME)
    if "lookup" not in state:
        state["lookup"] = asyncio.ensure_future(_children(_client(session, request), request))
    if "context" not in state:
        state["context"] = asyncio.ensure_future(asyncio.to_thread(context_digest, request))


async def _found(session, request, platform) -> tuple[str, str, str] | None:
    """(repository, index digest, child digest) of ``platform``'s child built from these very
    inputs, or None."""
    _start(session, request)
    state = session.state(NAME)
    children = await asyncio.shield(state["lookup"])
    key = reuse_key(request, platform, await asyncio.shield(state["context"]))
    return children.get(key) if key else None


def _node(facts) -> str | None:
    reachable = [f.name for f in facts if f.reachable]
    return "local" if "local" in reachable else (reachable[0] if reachable else None)


@hookimpl
def archfleet_prepare(request, session):
    # while the nodes are probed: the look-up needs no node (the key, which needs the resolved
    # base images, is matched at the offer)
    if _wanted(request):
        _start(session, request)


@hookimpl
def archfleet_offer(platform, request, facts, session):
    if not _wanted(request) or session is None:
        return []
    node = _node(facts)
    if node is None:
        return []

    async def look():
        found = await _found(session, request, platform)
        if found is None:
            return []
        name, _, child = found
        why = f"{name}@{child[:19]} is {platform} built from these very inputs: nothing to build"
        return [Option(platform, STRATEGY, node, 0.0, why=why)]

    return look()


@hookimpl(tryfirst=True)
def archfleet_estimate(option):
    if option.strategy == STRATEGY:
        return 0.0, "reusing a child the registry holds costs nothing"
    return None


@hookimpl
def archfleet_run(option, request, job, session):
    if option.strategy != STRATEGY:
        return None

    async def reuse():
        found = await _found(session, request, option.platform)
        if found is None:  # cannot happen within one command: the lookup is kept in the session
            raise RuntimeError(f"nothing to reuse for {option.platform}")
        name, index, child = found
        job.status("reused")
        # ref: the index that holds it; verification takes this platform's child from it, and
        # the attestation manifests that refer to that child
        return PlatformResult(option.platform, option, 0.0, repository=name, digest=child, ref=f"{name}@{index}")

    return reuse()


@hookimpl
def archfleet_session_end(session):
    state = session.state(NAME)
    for name in ("lookup", "context"):
        task = state.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
    client = state.pop("client", None)
    return client.aclose() if client is not None else None
