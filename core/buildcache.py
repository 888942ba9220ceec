"""Registry build caches: ``--cache-from``/``--cache-to`` per platform, and the cross-node warm
cache archfleet adds by itself.

The flags, in buildx's syntax (:func:`parse_cache`): ``type=registry,ref=REF[,mode=min|max]``, a
plain ``REF`` (``type=registry``), and for ``--cache-to`` also ``type=inline``. Other types
(``local``, ``gha``, ``s3``, ...) live on one machine or one CI service, not on a fleet: refused
(exit 2). A cache is per platform: ``--cache-to`` writes, and ``--cache-from`` reads, ``REF``'s tag
with the platform's suffix (``app:cache`` -> ``app:cache-linux-arm64``,
:meth:`~archfleet.model.CacheSpec.ref_for`), so platforms never overwrite each other;
``--cache-from`` also reads ``REF`` as given (an image index whose children carry inline cache,
such as an earlier archfleet build's tag: BuildKit picks the platform's child).

What each engine does with them (:func:`cache_argv`, :func:`notes`):

- **Docker with buildx**: ``--cache-from type=registry,ref=...`` and ``--cache-to
  type=registry,ref=<REF-suffix>,mode=...``: BuildKit exports the cache itself, with the node's
  own registry credentials (as it pulls base images).
- **Docker < 23 without buildx** (Debian's 20.10: ``DOCKER_BUILDKIT=1 docker build``): its CLI has
  ``--cache-from`` but no ``--cache-to``; BuildKit there can only write an **inline** cache, into
  the image's config (``BUILDKIT_INLINE_CACHE=1``; it survives archfleet's push by digest, which
  pushes the config as the engine wrote it). So ``--cache-to type=registry,ref=REF`` is degraded
  there to the inline cache of the pushed child, which archfleet also tags ``<REF-suffix>`` after
  the index is pushed (:func:`export_inline`); ``plan`` says so. ``mode=max`` (every stage's
  layers) cannot be had that way: such a node is not offered the build at all
  (:func:`archfleet.engines.needs`, ``cache_export``), and ``plan`` says why.
- **Podman**: buildah keeps a layer cache of its own format, not BuildKit's: the flags are not
  used there, and ``plan`` says so.

Every child archfleet pushes from a BuildKit node carries its inline cache
(``BUILDKIT_INLINE_CACHE=1`` with ``--push``). That is what makes the **cross-node warm cache**
possible (:func:`warm_sources`): history knows each platform's last pushed child and the node
that built it; when the plan puts the platform on another node, that child is added as a
``--cache-from`` source there, so its ``RUN`` steps come from the registry instead of running
again, and the estimate for that node says it starts warm (:data:`WARM_FACTOR`, or that node's
own warm history).
"""

from __future__ import annotations

from typing import Sequence

from . import flagfields
from .errors import UsageError
from .model import BuildRequest, CacheSpec, NodeFacts, WarmSource
from .platforms import Platform
from .reference import parse_push_target, parse_reference

#: a warm build's share of a cold one, before history knows better (bench/warm_cache measures it)
WARM_FACTOR = 0.5
INLINE_ARG = ("BUILDKIT_INLINE_CACHE", "1")
BUILDKIT_MODES = ("buildx", "buildkit")


def parse_cache(flag: str, text: str) -> CacheSpec:
    """One ``--cache-from``/``--cache-to`` value (``flag`` names which) -> :class:`CacheSpec`.
    Raises :class:`UsageError` (one line) for another type, an unknown key, a bad ``mode``, a
    missing or malformed ``ref``, ``type=inline`` for ``--cache-from``, or a ``ref`` whose
    per-platform tag would be too long."""
    if "=" not in text:
        fields = {"type": "registry", "ref": text}
    else:
        fields = {key: value.strip() for key, value in flagfields.fields(f"{flag} {text!r}", text)}
        fields.setdefault("type", "registry")
    kind = fields["type"].lower()
    if kind in ("registry", "inline"):
        for key in fields:
            if key not in ("type", "ref", "mode"):
                raise UsageError(f"{flag} {text!r}: unknown key {key!r} (type, ref, mode)")
    if kind == "inline":
        if flag != "--cache-to":
            raise UsageError(f"{flag} {text!r}: an inline cache is read from an image: give its ref")
        return CacheSpec("inline")
    if kind != "registry":
        raise UsageError(f"{flag} {text!r}: type {kind!r} is not one archfleet can share across nodes; use "
                         "type=registry,ref=REF" + (" or type=inline" if flag == "--cache-to" else ""))
    ref = fields.get("ref", "")
    if not ref:
        raise UsageError(f"{flag} {text!r}: name the cache image with ref=REF")
    mode = fields.get("mode", "min").lower()
    if mode not in ("min", "max"):
        raise UsageError(f"{flag} {text!r}: mode {mode!r} is not min or max")
    if flag == "--cache-from" and "mode" in fields:
        raise UsageError(f"{flag} {text!r}: mode is for --cache-to")
    parse = parse_push_target if flag == "--cache-to" else parse_reference
    return CacheSpec("registry", str(parse(ref, what=flag)), mode)


def check_refs(flag: str, specs: Sequence[CacheSpec], platforms: Sequence[Platform]) -> None:
    """Every per-platform ref of ``specs`` fits distribution's 128-character tag (a digest ref
    is read as given only). Raises :class:`UsageError` naming the flag."""
    for spec in specs:
        if spec.kind == "registry" and "@" not in spec.ref:
            for p in platforms:
                try:
                    spec.ref_for(p)
                except UsageError as exc:
                    raise UsageError(f"{flag} {spec.ref!r}: {str(exc).split(': ', 1)[-1]}") from None


def cache_from_refs(request: BuildRequest, platform: Platform, warm: str | None = None) -> list[str]:
    """The cache sources of ``platform``'s build, in order: each ``--cache-from`` ref with the
    platform's suffix and as given (a digest ref only as given), then ``warm`` (another node's
    last child of this platform)."""
    refs: list[str] = []
    for spec in request.cache_from:
        if "@" not in spec.ref:
            refs.append(spec.ref_for(platform))
        refs.append(spec.ref)
    if warm:
        refs.append(warm)
    return list(dict.fromkeys(refs))


def cache_argv(mode: str, request: BuildRequest, platform: Platform,
               warm: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """(argv words, extra build args) for the caches of ``platform``'s build with an engine CLI
    of ``mode`` (``buildx``, ``buildkit`` or podman's ``buildah``), as the module doc says. A
    build that pushes always writes its inline cache on BuildKit (the warm cache's source)."""
    if mode not in BUILDKIT_MODES or request.no_cache:
        return [], []
    argv: list[str] = []
    sources = cache_from_refs(request, platform, warm)
    if mode == "buildx":
        for ref in sources:
            argv += ["--cache-from", f"type=registry,ref={ref}"]
        for spec in request.cache_to:
            if spec.kind == "registry":
                argv += ["--cache-to", f"type=registry,ref={spec.ref_for(platform)},mode={spec.mode}"]
    else:
        for ref in sources:
            argv += ["--cache-from", ref]
    inline = request.push or any(s.kind == "inline" for s in request.cache_to)
    return argv, [INLINE_ARG] if inline else []


def notes(request: BuildRequest, facts: NodeFacts) -> list[str]:
    """How the caches of ``request`` are degraded on ``facts``' node (one line each; none when
    the node does what was asked). A node that cannot do what is needed at all is not here: it
    is not offered (:func:`archfleet.engines.needs`)."""
    if not (request.cache_from or request.cache_to) or not facts.can_build:
        return []
    if facts.builder == "buildah":
        return [f"{facts.engine_label} does not read or write BuildKit caches: "
                + ", ".join([*(f"--cache-from {s}" for s in request.cache_from),
                             *(f"--cache-to {s}" for s in request.cache_to)]) + " not used there"]
    if facts.builder == "buildkit":
        return [f"--cache-to {s}: inline cache (mode=min) in the pushed child, tagged {s.ref}-<platform>; "
                f"{facts.engine_label} has no buildx to export a registry cache"
                for s in request.cache_to if s.kind == "registry" and s.mode == "min"]
    return []


def warm_sources(request: BuildRequest, histories) -> tuple[WarmSource, ...]:
    """Each platform's last pushed child and the node that built it (``histories``: platform ->
    its history view, or None), for the cross-node warm cache (module doc; :func:`warm_ref`
    reads none with ``--no-cache``) and for the push, which finds that child's layers in the
    registry by diff_id (:func:`archfleet.publish.known_layers`; ``--no-cache`` too: a layer
    built again the same is the same blob). Blocking (SQLite): call it in a thread."""
    out = []
    for platform in request.platforms:
        view = histories.get(platform) if histories else None
        if view is None:
            continue
        last = view.last_pushed(platform)
        if last is not None:
            node, ref = last
            out.append(WarmSource(platform, node, ref))
    return tuple(out)


def warm_ref(request: BuildRequest, platform: Platform, node: str, builder: str | None) -> WarmSource | None:
    """The warm source a build of ``platform`` on ``node`` reads: the platform's last child when
    another node built it and this node's engine is BuildKit (it reads inline caches); else None."""
    warm = request.warm_for(platform)
    if warm is None or warm.node == node or builder not in BUILDKIT_MODES or request.no_cache:
        return None
    return warm


def inline_targets(request: BuildRequest, platform: Platform) -> list[str]:
    """The tags the child of ``platform`` also gets for ``--cache-to`` on a node that writes
    only an inline cache: each registry ``--cache-to`` ref with the platform's suffix."""
    return [s.ref_for(platform) for s in request.cache_to if s.kind == "registry"]


async def export_inline(client, request: BuildRequest, children: Sequence, builders: dict) -> list[str]:
    """After the index is pushed: tag each child whose build wrote only an inline cache
    (``builders``: platform -> the builder that made it, ``buildkit``, or ``reuse`` for a child
    reused as it was) under :func:`inline_targets`, copying it into that repository first. A
    buildx node exported its registry cache itself; a podman child has no BuildKit cache. Returns
    the refs written."""
    from .index import copy_manifest
    from .reference import parse_reference as parse

    written = []
    for child in children:
        if builders.get(child.platform) not in ("buildkit", "reuse"):
            continue
        source = parse(f"{child.repository}@{child.digest}", what="child")
        for target in inline_targets(request, child.platform):
            ref = parse(target, what="--cache-to")
            await copy_manifest(client, source, ref.with_digest(child.digest))
            manifest = await client.get_manifest(source)
            await client.put_manifest(ref, manifest.body, manifest.media_type)
            written.append(target)
    return written
