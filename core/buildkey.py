"""What one platform's build consumes, resolved, and the key that names it: the reuse key.

A platform whose inputs are unchanged need not be built again (the ``reuse`` strategy,
``archfleet.plugins.reuse``). Its inputs, and so its key (:func:`reuse_key`):

- the context's contents after BuildKit's ignore rule, the ignore file applied, the Dockerfile,
  the build args and the target (:func:`archfleet.nodebuild.context_digest`);
- the platform (the per-platform toolchain build args follow from it and the Dockerfile);
- the image labels (``--label``: they are in the image config);
- the ``manifest`` annotations that go on this platform's child (they are in its manifest);
- the ids of the build's secrets, never their values (``BuildRequest.secret_ids``);
- the **resolved digest of every base image** the build uses (:func:`resolve_bases`, asked of
  the registry before anything is built): for a stage on the target platform, that platform's
  manifest in the base's index; for a stage pinned to a platform, that one's; for a stage on
  ``$BUILDPLATFORM`` (or a ``--platform`` expression), the digest of the index itself, since
  any node may build it. A base that moves to a new digest changes the key of every platform
  that uses it, so each is built again.

No key (None: the platform is always built) when a base cannot be resolved (not in a registry
archfleet can read, a reference that depends on the platform), with ``--no-pull`` (the engine's
own image store decides what the base is, not the registry) or without ``--push``.

The key is stored with the child as the image label :data:`LABEL_REUSE_KEY` (in its config, so
whoever reads the child, on any machine, sees it). Resolving runs once per command, before the
offers, and lands in ``BuildRequest.bases`` (the pipeline does it); the key itself is then a pure
function of the request, so the offer (looking for a child to reuse) and the build (labelling the
child it makes) compute the same one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from . import mediatypes
from .dockerfile import BUILD, TARGET, analyse
from .errors import ArchfleetError, UsageError
from .model import BaseImage, BuildRequest
from .platforms import Platform, PlatformError, parse
from .reference import parse_reference
from .registry import RegistryClient

LABEL_REUSE_KEY = "org.archfleet.reuse-key"
KEY_VERSION = 1  # bumped when what goes into the key changes: old children are then built again


def external_bases(request: BuildRequest) -> list[tuple[int, str, str]]:
    """(stage index, image reference, stage platform) of every stage the target needs whose
    ``FROM`` names an image, not another stage or ``scratch``. The stage platform is
    ``dockerfile.BUILD``, ``dockerfile.TARGET``, a literal platform, or a ``--platform``
    expression as written."""
    analysis = analyse(request)
    out = []
    for stage in analysis.used:
        if stage.parent is not None or stage.base.lower() == "scratch":
            continue
        out.append((stage.index, stage.base, stage.platform))
    return out


async def resolve_bases(client: RegistryClient, request: BuildRequest) -> tuple[BaseImage, ...] | None:
    """Every external base image of ``request`` as its registry resolves it now (one GET of
    each distinct reference, all at once): its digest and, for an index, each platform's
    manifest digest. None when one cannot be resolved (see the module docstring: then nothing is
    reused, and no key is stored). Never raises for a base: a base the registry refuses is the
    build's business to report."""
    refs = []
    for _, ref, _ in external_bases(request):
        if ref not in refs:
            refs.append(ref)

    async def one(text: str) -> BaseImage | None:
        if "$" in text:
            return None  # depends on the platform ($TARGETARCH ...): not one image
        try:
            ref = parse_reference(text, what="base image")
            manifest = await client.get_manifest(ref)
        except (ArchfleetError, UsageError):
            return None
        platforms: list[tuple[str, str]] = []
        if manifest.media_type in mediatypes.INDEXES:
            for entry in manifest.json().get("manifests") or []:
                p = entry.get("platform") or {}
                try:
                    name = str(parse("/".join(filter(None, [p.get("os"), p.get("architecture"), p.get("variant")]))))
                except (PlatformError, ValueError, TypeError):
                    continue  # attestation manifests (unknown/unknown) and the like
                if name not in dict(platforms):
                    platforms.append((name, str(entry.get("digest"))))
        return BaseImage(text, manifest.digest, tuple(platforms))

    got = await asyncio.gather(*(one(r) for r in refs))
    if any(b is None for b in got):
        return None
    return tuple(got)


def reuse_key(request: BuildRequest, platform: Platform, context_digest: str) -> str | None:
    """The reuse key of ``platform``'s build of ``request`` (``sha256:<hex>``), from the inputs
    the module docstring lists, or None when there is none (no ``--push``, ``--no-pull``, or a
    base not resolved). ``context_digest`` is :func:`archfleet.nodebuild.context_digest` of the
    request (hashing the context is the caller's, in a thread). Pure."""
    if not request.push or not request.pull:
        return None
    stages = external_bases(request)
    resolved = {b.ref: b for b in request.bases}
    bases = []
    for index, ref, where in stages:
        base = resolved.get(ref)
        if base is None:
            return None
        if where == TARGET:
            digest = base.digest_for(platform)
        elif where == BUILD:
            digest = base.digest
        else:
            try:
                digest = base.digest_for(parse(where))
            except PlatformError:  # an expression ("linux/$TARGETARCH"): any of the index
                digest = base.digest
        bases.append([index, ref, digest])
    doc = {
        "version": KEY_VERSION,
        "context": context_digest,
        "platform": str(platform),
        "labels": sorted([k, v] for k, v in request.labels),
        "annotations": sorted([a.key, a.value] for a in request.annotations
                              if a.kind == "manifest" and a.applies_to(platform)),
        "secrets": sorted(request.secret_ids),
        "bases": bases,
    }
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
