"""archfleet-reuse: a strategy plugin that does not rebuild what the registry already holds.

archfleet labels every image it builds with ``org.archfleet.context-digest`` (the context's
contents, Dockerfile, build args and target) and ``org.archfleet.platform``. When a requested
tag's child for a platform (``<tag>-<os>-<arch>[-<variant>]``) carries the same digest and
platform, this plugin offers a ``reuse`` option that costs nothing: the planner picks it, the
platform is not built again, and the index points at the existing child.

It uses only ``archfleet.api``, like any outside plugin, and is found through the ``archfleet``
entry point group (``pip install examples/plugins/archfleet-reuse``).
"""

from __future__ import annotations

import asyncio
import json

from archfleet.api import (
    LABEL_CONTEXT,
    LABEL_PLATFORM,
    Option,
    PlatformResult,
    RegistryClient,
    child_tag,
    context_digest,
    hookimpl,
    parse_reference,
)

STRATEGY = "reuse"
__version__ = "0.1.0"
IMAGE_MANIFESTS = ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")


async def _existing(request, option) -> tuple[str, str] | None:
    """(child ref, digest) of a pushed child built from this very context, or None."""
    tag = child_tag(request, option)
    if tag is None:
        return None
    ref = parse_reference(tag)
    want = await asyncio.to_thread(context_digest, request)
    async with RegistryClient(request.insecure_registries) as client:
        try:
            manifest = await client.get_manifest(ref)
            if manifest.media_type not in IMAGE_MANIFESTS:
                return None
            config = json.loads(await client.get_blob(ref, manifest.json()["config"]["digest"]))
        except Exception:
            return None  # not there, or not readable: nothing to reuse
    labels = (config.get("config") or {}).get("Labels") or {}
    if labels.get(LABEL_CONTEXT) == want and labels.get(LABEL_PLATFORM) == str(option.platform):
        return ref.name, manifest.digest
    return None


@hookimpl
def archfleet_offer(platform, request, facts):
    if not request.push or not request.tags:
        return []
    node = next((f.name for f in facts if f.reachable), None)
    if node is None:
        return []

    async def look():
        option = Option(platform, STRATEGY, node, 0.0)
        found = await _existing(request, option)
        if found is None:
            return []
        name, digest = found
        why = f"{name} already holds {platform} built from this context ({digest[:19]}): nothing to build"
        return [Option(platform, STRATEGY, node, 0.0, why=why)]

    return look()


@hookimpl
def archfleet_estimate(option, request, facts, history):
    if option.strategy == STRATEGY:
        return 0.0, "reusing an image already in the registry costs nothing"
    return None


@hookimpl
def archfleet_run(option, request, job):
    if option.strategy != STRATEGY:
        return None

    async def reuse():
        found = await _existing(request, option)
        if found is None:  # it went away between plan and run: say so, archfleet reports it
            raise RuntimeError(f"the image to reuse for {option.platform} is gone; build again without it")
        name, digest = found
        job.status("reused")
        return PlatformResult(option.platform, option, 0.0, repository=name, digest=digest, ref=f"{name}@{digest}")

    return reuse()
