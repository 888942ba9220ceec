"""Verify pushed children against their platforms and assemble and push the index.

The index lists each verified child under its platform and, after them, the attestation
manifests an engine made for them (BuildKit's ``unknown/unknown`` entries, annotated
``vnd.docker.reference.type: attestation-manifest`` and ``vnd.docker.reference.digest: <child>``),
as the engine wrote their descriptors. It is a Docker manifest list when every child is a Docker
manifest and nothing needs an annotation; otherwise an OCI index (``--annotation`` with
``index:`` or ``manifest-descriptor:``, attestations, OCI children). Children are copied into
every tag's repository first (mounted on one registry), then the index is put there by digest;
only then do tags move: the ``--child-tags`` of each child, then the ``-t`` tags."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import tarfile
import zlib
from typing import Mapping, Sequence

import attrs

from . import elfcheck, layercache, mediatypes
from .elfcheck import LayerIndex, scan_layer
from .errors import ArchfleetError, RegistryError, VerificationFailed
from .model import Annotation, ChildImage, LayerScan
from .platforms import Platform, PlatformError, parse
from .reference import Reference, child_tag_name, parse_reference
from .registry import Manifest, RegistryClient, sha256_digest


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


async def verify_child(client: RegistryClient, ref: Reference, platform: Platform,
                       scans: Mapping[str, dict] | None = None) -> ChildImage:
    """Read the manifest ``ref`` points at and its config; they must be ``platform``.

    A child that is itself an index (BuildKit's, with provenance attestations; or an earlier
    index whose child is reused) is flattened: its manifest for ``platform`` is the child, and
    the attestation manifests that refer to that manifest (``vnd.docker.reference.digest``)
    are kept with it (``ChildImage.attestations``, their descriptors as written). The child
    carries the layer scans made on the way that were not cached (``ChildImage.scans``): the
    learn stage keeps them. ``scans``: layer digest -> a scan already made of that layer (the
    push scanned the layers it sent, from the engine's export): such a layer is not read back.
    Raises :class:`VerificationFailed` when it is not ``platform``, a registry error when it
    cannot be read.
    """
    manifest = await client.get_manifest(ref)
    if manifest.media_type in mediatypes.INDEXES:
        entries = [e for e in manifest.json().get("manifests", []) if isinstance(e, dict)]
        found = [e for e in entries if _platform_of(e.get("platform") or {}) == platform
                 and not is_attestation(e)]
        if not found:
            actual = ", ".join(
                str(_platform_of(e.get("platform") or {})) for e in entries if _platform_of(e.get("platform") or {})
            ) or "none"
            raise VerificationFailed(f"{ref} is an index without {platform} (it has: {actual})")
        child = await verify_child(client, ref.with_digest(found[0]["digest"]), platform, scans)
        attestations = tuple(json.dumps(e, sort_keys=True) for e in entries if is_attestation(e)
                             and (e.get("annotations") or {}).get(REFERENCE_DIGEST) == child.digest)
        return attrs.evolve(child, attestations=attestations)
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
    program, arch, new = await program_architecture(client, ref, manifest.json(), config, known=scans)
    if arch and not elfcheck.matches(arch, platform):
        raise VerificationFailed(
            f"requested {platform} but the image pushed for it runs {program} built for linux/{arch} "
            f"(its config claims {actual}; is the final stage pinned with FROM --platform?) ({ref.name}@{manifest.digest})"
        )
    return ChildImage(platform, manifest.digest, manifest.media_type, len(manifest.body), scans=new,
                      repository=ref.name)


REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"


def is_attestation(descriptor: dict) -> bool:
    """Whether an index entry is an attestation manifest (BuildKit's ``vnd.docker.reference.type:
    attestation-manifest``, under the platform ``unknown/unknown``)."""
    return (descriptor.get("annotations") or {}).get(REFERENCE_TYPE) == "attestation-manifest"


CONTENT_BUDGET = 64 * 1024 * 1024  # bytes of layers read to find the program's ELF header


def _scan(data: bytes) -> dict:
    return scan_layer(io.BytesIO(data))


async def program_architecture(client: RegistryClient, ref: Reference, manifest: dict, config: dict,
                               budget: int = CONTENT_BUDGET, known: Mapping[str, dict] | None = None,
                               ) -> tuple[str, str | None, tuple[LayerScan, ...]]:
    """(program, architecture, new scans): what the image runs and the ELF architecture of it,
    from ELF headers in its layers, and the layers scanned here that no cached scan had.

    Layers are read top first and reading stops as soon as the program is found; layers past
    ``budget`` bytes are not read (then the most common ELF architecture seen so far is used).
    A layer scanned before (by digest, :mod:`archfleet.layercache`) is not fetched again, nor
    one in ``known`` (digest -> scan, made by the push from the same bytes); a layer scanned now,
    or known but not cached, is not written here: it is returned, for the learn stage.
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
        if scan is None and known and digest in known:
            scan = known[digest]
            new.append(LayerScan(digest, scan))
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


def assemble(children: Sequence[ChildImage], annotations: Sequence[Annotation] = ()) -> tuple[bytes, str]:
    """The index over ``children`` as (exact bytes, media type).

    Each child under its platform, with its ``manifest-descriptor`` annotations; then every
    child's attestation descriptors, as written; the ``index`` annotations on the index. A Docker
    manifest list when every child is a Docker manifest and nothing carries an annotation, else
    an OCI index (mixing Docker children into an OCI index is allowed; the other way round is
    not).
    """
    if not children:
        raise ValueError("an index needs at least one child")
    seen = set()
    for child in children:
        if child.platform in seen:
            raise ValueError(f"two children for {child.platform}")
        seen.add(child.platform)
    entries = []
    for c in children:
        entry = {"mediaType": c.media_type, "digest": c.digest, "size": c.size, "platform": c.platform.to_oci()}
        notes = {a.key: a.value for a in annotations if a.kind == "manifest-descriptor" and a.applies_to(c.platform)}
        if notes:
            entry["annotations"] = notes
        entries.append(entry)
    attested = [json.loads(a) for c in children for a in c.attestations]
    index_notes = {a.key: a.value for a in annotations if a.kind == "index"}
    docker = (all(c.media_type == mediatypes.DOCKER_MANIFEST for c in children) and not attested and not index_notes
              and not any("annotations" in e for e in entries))
    media_type = mediatypes.DOCKER_LIST if docker else mediatypes.OCI_INDEX
    doc: dict = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries + attested}
    if index_notes:
        doc["annotations"] = index_notes
    return json.dumps(doc, indent=3).encode() + b"\n", media_type


@attrs.frozen
class Staged:
    """What :func:`stage_index` put in place, no tag moved: the index (``digest``, exact ``body``,
    ``media_type``) in every tag's repository, and ``child_tags``: each (tag, manifest body, media
    type) that ``--child-tags`` asks for, to move before the ``-t`` tags."""

    digest: str
    body: bytes
    media_type: str
    child_tags: tuple[tuple[Reference, bytes, str], ...] = ()


async def push_index(client: RegistryClient, source: Reference, children: Sequence[ChildImage],
                     tags: Sequence[Reference], *, annotations: Sequence[Annotation] = (),
                     child_tags: str | None = None) -> tuple[str, bytes, str]:
    """Push the index to every tag; children live in ``source`` (or their ``repository``) and are
    copied to other repos. Returns (digest, the exact bytes pushed, media type).

    :func:`stage_index` then :func:`move_tags`, so that no tag moves until every repository
    holds everything; a caller that must not be interrupted half-way through moving the tags
    (Ctrl-C) can call the two itself and protect only the second.
    """
    staged = await stage_index(client, source, children, tags, annotations=annotations, child_tags=child_tags)
    await move_tags(client, tags, staged.body, staged.media_type, first=staged.child_tags)
    return staged.digest, staged.body, staged.media_type


async def stage_index(client: RegistryClient, source: Reference, children: Sequence[ChildImage],
                      tags: Sequence[Reference], *, annotations: Sequence[Annotation] = (),
                      child_tags: str | None = None) -> Staged:
    """Put everything the tags will need in place without moving any tag: every child (config,
    layers, manifest) and its attestation manifests into every tag's repository (from the
    child's ``repository``, else ``source``), then the index by its digest into each of them.
    With ``child_tags`` (a ``--child-tags`` template) the tags each child is to get in each
    repository are worked out (their manifests read once). A failure here leaves every tag as
    it was."""
    body, media_type = assemble(children, annotations)
    digest = sha256_digest(body)
    repos: list[Reference] = []
    for tag in tags:
        if tag.name not in {r.name for r in repos}:
            repos.append(tag)
    for repo in repos:
        for child in children:
            origin = parse_reference(child.repository, what="child repository") if child.repository else source
            if repo.name == origin.name:
                continue
            for d in [child.digest, *(json.loads(a)["digest"] for a in child.attestations)]:
                await copy_manifest(client, origin.with_digest(d), repo.with_digest(d))
    for repo in repos:
        await client.put_manifest(repo.with_digest(digest), body, media_type)
    moves: list[tuple[Reference, bytes, str]] = []
    if child_tags:
        bodies: dict[str, Manifest] = {}
        for tag in tags:
            for child in children:
                if child.digest not in bodies:
                    bodies[child.digest] = await client.get_manifest(tag.with_digest(child.digest))
                m = bodies[child.digest]
                moves.append((tag.with_tag(child_tag_name(child_tags, tag, child.platform)), m.body, m.media_type))
    return Staged(digest, body, media_type, tuple(moves))


async def move_tags(client: RegistryClient, tags: Sequence[Reference], body: bytes, media_type: str, *,
                    first: Sequence[tuple[Reference, bytes, str]] = ()) -> None:
    """Point every tag at the index :func:`stage_index` put in place (one small PUT each, of a
    manifest the registry already has), after the ``first`` ones (``--child-tags``: each child's
    tag, PUT of its manifest). A failure after some tags moved keeps its type (it decides the exit
    code) and says which tags moved."""
    digest = sha256_digest(body)
    moved: list[str] = []
    moved_children: list[str] = []
    moves = [*((t, b, m, False) for t, b, m in first), *((t, body, media_type, True) for t in tags)]
    for tag, what, kind, mine in moves:
        try:
            await client.put_manifest(tag, what, kind)
        except ArchfleetError as exc:
            if not moved and not moved_children:
                raise
            said = ([f"the child tags {', '.join(moved_children)} already moved"] if moved_children else []) + (
                [f"the index {digest} is already under {', '.join(moved)}"] if moved else [])
            told = copy.copy(exc)  # the same type, saying what moved
            told.args = (f"{exc}; {'; '.join(said)}, not under {tag} or the tags after it",)
            raise told from None
        (moved if mine else moved_children).append(str(tag))


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
