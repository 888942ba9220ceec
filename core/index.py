"""Verify pushed children against their platforms and assemble and push the index."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import tarfile
import zlib
from typing import Sequence

from . import elfcheck, layercache, mediatypes
from .elfcheck import LayerIndex, scan_layer
from .errors import ArchfleetError, RegistryError, VerificationFailed
from .model import ChildImage, LayerScan
from .platforms import Platform, PlatformError, parse
from .reference import Reference
from .registry import RegistryClient, sha256_digest


def _platform_of(config_or_desc: dict) -> Platform | None:
    os_ = config_or_desc.get("os")
    arch = config_or_desc.get("architecture")
    if not os_ or not arch or os_ == "unknown":
        return None
    text = f"{os_}/{arch}" + (f"/{config_or_desc['variant']}" if config_or_desc.get("variant") else "")
    try:
        return parse(text)
    except PlatformError:
        return None


async def verify_child(client: RegistryClient, ref: Reference, platform: Platform) -> ChildImage:
    """Read the manifest ``ref`` points at and its config; they must be ``platform``.

    A child that is itself an index (BuildKit adds one for provenance attestations) is
    flattened: its manifest for ``platform`` is used, attestation manifests are left out.
    The child carries the layer scans made on the way that were not cached
    (``ChildImage.scans``): the learn stage keeps them. Raises :class:`VerificationFailed`
    when it is not ``platform``, a registry error when it cannot be read.
    """
    manifest = await client.get_manifest(ref)
    if manifest.media_type in mediatypes.INDEXES:
        entries = manifest.json().get("manifests", [])
        found = [e for e in entries if _platform_of(e.get("platform") or {}) == platform]
        if not found:
            actual = ", ".join(
                str(_platform_of(e.get("platform") or {})) for e in entries if _platform_of(e.get("platform") or {})
            ) or "none"
            raise VerificationFailed(f"{ref} is an index without {platform} (it has: {actual})")
        return await verify_child(client, ref.with_digest(found[0]["digest"]), platform)
    if manifest.media_type not in mediatypes.MANIFESTS:
        raise VerificationFailed(f"{ref} has media type {manifest.media_type!r}, not an image manifest")
    config_desc = manifest.json().get("config") or {}
    config = json.loads(await client.get_blob(ref, config_desc["digest"]))
    actual = _platform_of(config)
    if actual != platform:
        raise VerificationFailed(
            f"requested {platform} but the image pushed for it is "
            f"{actual or config.get('os', '?') + '/' + config.get('architecture', '?')} ({ref.name}@{manifest.digest})"
        )
    program, arch, scans = await program_architecture(client, ref, manifest.json(), config)
    if arch and not elfcheck.matches(arch, platform):
        raise VerificationFailed(
            f"requested {platform} but the image pushed for it runs {program} built for linux/{arch} "
            f"(its config claims {actual}; is the final stage pinned with FROM --platform?) ({ref.name}@{manifest.digest})"
        )
    return ChildImage(platform, manifest.digest, manifest.media_type, len(manifest.body), scans=scans)


CONTENT_BUDGET = 64 * 1024 * 1024  # bytes of layers read to find the program's ELF header


def _scan(data: bytes) -> dict:
    return scan_layer(io.BytesIO(data))


async def program_architecture(client: RegistryClient, ref: Reference, manifest: dict, config: dict,
                               budget: int = CONTENT_BUDGET) -> tuple[str, str | None, tuple[LayerScan, ...]]:
    """(program, architecture, new scans): what the image runs and the ELF architecture of it,
    from ELF headers in its layers, and the layers scanned here that no cached scan had.

    Layers are read top first and reading stops as soon as the program is found; layers past
    ``budget`` bytes are not read (then the most common ELF architecture seen so far is used).
    A layer scanned before (by digest, :mod:`archfleet.layercache`) is not fetched again; a
    layer scanned now is not written here: it is returned, for the learn stage.
    """
    cfg = config.get("config") or {}
    argv = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    program = argv[0] if argv else ""
    env = cfg.get("Env") or []
    layers = LayerIndex()
    spent = 0
    new: list[LayerScan] = []
    for desc in reversed(manifest.get("layers") or []):
        digest = str(desc.get("digest") or "")
        scan = await asyncio.to_thread(layercache.load, digest)
        if scan is None:
            size = int(desc.get("size") or 0)
            if spent + size > budget:
                break
            spent += size
            data = await client.get_blob(ref, digest)
            try:
                scan = await asyncio.to_thread(_scan, data)
            except (tarfile.TarError, EOFError, OSError, zlib.error):
                continue  # a layer format we cannot read (zstd, ...): no evidence either way
            new.append(LayerScan(digest, scan))
        layers.add_scan(scan)
        if program:
            arch = layers.program_arch(program, env)
            if arch:
                return program, arch, tuple(new)
    return (program or "its programs"), layers.majority_arch(), tuple(new)


def assemble(children: Sequence[ChildImage]) -> tuple[bytes, str]:
    """The index over ``children`` as (exact bytes, media type).

    A Docker manifest list when every child is a Docker manifest, else an OCI index (mixing
    Docker children into an OCI index is allowed; the other way round is not).
    """
    if not children:
        raise ValueError("an index needs at least one child")
    seen = set()
    for child in children:
        if child.platform in seen:
            raise ValueError(f"two children for {child.platform}")
        seen.add(child.platform)
    docker = all(c.media_type == mediatypes.DOCKER_MANIFEST for c in children)
    media_type = mediatypes.DOCKER_LIST if docker else mediatypes.OCI_INDEX
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {"mediaType": c.media_type, "digest": c.digest, "size": c.size, "platform": c.platform.to_oci()}
            for c in children
        ],
    }
    return json.dumps(doc, indent=3).encode() + b"\n", media_type


async def push_index(client: RegistryClient, source: Reference, children: Sequence[ChildImage],
                     tags: Sequence[Reference]) -> tuple[str, bytes, str]:
    """Push the index to every tag; children live in ``source`` and are copied to other repos.
    Returns (digest, the exact bytes pushed, media type).

    :func:`stage_index` then :func:`move_tags`, so that no tag moves until every repository
    holds everything; a caller that must not be interrupted half-way through moving the tags
    (Ctrl-C) can call the two itself and protect only the second.
    """
    digest, body, media_type = await stage_index(client, source, children, tags)
    await move_tags(client, tags, body, media_type)
    return digest, body, media_type


async def stage_index(client: RegistryClient, source: Reference, children: Sequence[ChildImage],
                      tags: Sequence[Reference]) -> tuple[str, bytes, str]:
    """Put everything the tags will need in place without moving any tag: every child
    (config, layers, manifest) into every tag's repository, then the index by its digest into
    each of them. Returns (digest, the exact bytes, media type). A failure here leaves every
    tag as it was."""
    body, media_type = assemble(children)
    digest = sha256_digest(body)
    repos: list[Reference] = []
    for tag in tags:
        if tag.name not in {r.name for r in repos}:
            repos.append(tag)
    for repo in repos:
        if repo.name != source.name:
            for child in children:
                await copy_manifest(client, source.with_digest(child.digest), repo.with_digest(child.digest))
    for repo in repos:
        await client.put_manifest(repo.with_digest(digest), body, media_type)
    return digest, body, media_type


async def move_tags(client: RegistryClient, tags: Sequence[Reference], body: bytes, media_type: str) -> None:
    """Point every tag at the index :func:`stage_index` put in place (one small PUT each, of a
    manifest the registry already has). A failure after some tags moved keeps its type (it
    decides the exit code) and says which tags moved."""
    digest = sha256_digest(body)
    moved: list[str] = []
    for tag in tags:
        try:
            await client.put_manifest(tag, body, media_type)
        except ArchfleetError as exc:
            if not moved:
                raise
            told = copy.copy(exc)  # the same type, saying what moved
            told.args = (f"{exc}; the index {digest} is already under {', '.join(moved)}, "
                         f"not under {tag} or the tags after it",)
            raise told from None
        moved.append(str(tag))


async def copy_manifest(client: RegistryClient, src: Reference, dst: Reference) -> None:
    """Copy one image manifest (config and layers first, each streamed or mounted) from ``src``
    to ``dst`` by digest; nothing is done when ``dst`` already has it."""
    if await client.head_manifest(dst) is not None:
        return
    manifest = await client.get_manifest(src)
    doc = manifest.json()
    if manifest.media_type in mediatypes.INDEXES:
        raise RegistryError(f"{src}: cannot copy a nested index")
    for desc in [doc["config"], *doc.get("layers", [])]:
        await client.copy_blob(src, dst, desc["digest"])
    await client.put_manifest(dst, manifest.body, manifest.media_type)
