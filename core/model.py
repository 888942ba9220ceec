"""Frozen values that cross module borders (and plugin borders).

Everything a hook receives or returns is one of these, a :class:`~archfleet.platforms.Platform`,
or a plain builtin. They are immutable, so a plugin cannot change what another one sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from .buildargs import mask
from .platforms import Platform

__all__ = [
    "NodeSpec",
    "Capabilities",
    "NodeFacts",
    "BuildRequest",
    "Option",
    "PlatformResult",
    "ChildImage",
    "Transfer",
    "LayerScan",
    "StepPlan",
    "StepTime",
    "Estimate",
    "PARTS",
    "Annotation",
    "BaseImage",
    "Secret",
    "SshAgent",
    "CacheSpec",
    "Output",
    "WarmSource",
]


def _tuple(value: Any) -> tuple:
    return tuple(value)


def _labels(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):
        value = value.items()
    return tuple((str(k), str(v)) for k, v in value)


def _platform_files(value: Any) -> tuple[tuple[Platform, Path], ...]:
    if isinstance(value, dict):
        value = value.items()
    return tuple((k, Path(v)) for k, v in value)


def _parts(value: Any) -> tuple[tuple[str, float], ...]:
    if isinstance(value, dict):
        value = value.items()
    return tuple((str(k), float(v)) for k, v in value)


def _settings(value: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(value, dict):
        value = value.items()
    return tuple(sorted((str(k), v) for k, v in value))


@attrs.frozen
class NodeSpec:
    """A build node as configured (``nodes.toml``) or contributed by a plugin.

    The fields are what every node has; ``settings`` holds the keys of its transport, as the
    transport's plugin declared them (``archfleet_node_keys``) and ``nodes.toml`` gave them
    (for ``ssh``: host, port, user, identity, known_hosts, host_key_policy). Only that plugin
    reads them (:meth:`setting`)."""

    name: str
    transport: str = "local"  # which transport plugin owns it: "local", "ssh", ...
    arch: Platform | None = None  # what the user says it is; the probe must agree
    engine: str = "docker"
    engine_cli: str | None = None  # the engine CLI to build with (path), None = discover
    docker_host: str | None = None
    max_builds: int = 2
    labels: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_labels)
    enabled: bool = True
    source: str = "<builtin>"  # file:line where it was defined, for error messages
    settings: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=_settings)

    def setting(self, key: str, default: Any = None) -> Any:
        """The value of the transport's ``key`` (``default`` when not given)."""
        for k, v in self.settings:
            if k == key:
                return v
        return default

    @property
    def key(self) -> str:
        """A stable name for what this node is (its name, transport and settings), for caches
        keyed by node (CPU scores, link rates): a node re-pointed elsewhere is measured anew."""
        return f"{self.name}|{self.transport}|" + ",".join(f"{k}={v}" for k, v in self.settings)


@attrs.frozen
class Capabilities:
    """What a node's engine can do for a build, as its adapter's probe found it (see
    :mod:`archfleet.engines` for where each answer comes from). Each field is one feature; a
    request that needs a feature the node lacks is not offered there
    (:func:`archfleet.engines.needs`, :func:`archfleet.engines.capable`).

    - ``secrets``: build secrets (``--secret``, ``RUN --mount=type=secret``);
    - ``ssh``: SSH agent forwarding into the build (``--ssh``, ``RUN --mount=type=ssh``);
    - ``cache_export``: exporting the build cache to a registry (``--cache-to``);
    - ``outputs``: exporting the result as files (``--output type=local|tar``);
    - ``heredocs``: here-documents in the Dockerfile (``RUN <<EOF``: BuildKit's Dockerfile 1.4
      frontend, built into Docker >= 23; buildah >= 1.35, podman >= 5.0);
    - ``frontends``: a ``# syntax=`` directive loads that Dockerfile frontend (BuildKit only;
      podman reads every Dockerfile with its own parser);
    - ``link_wildcards``: a COPY or ADD wildcard below a symbolic link of the context
      (``COPY link/* /d/``) is cached by the files it copies. BuildKit before 0.10 (Docker < 23)
      keys it as if it copied nothing, and builds whatever an earlier such COPY copied, from any
      context (moby/buildkit#2300, fixed by #2318; seen here with Docker 20.10); buildah keys a
      COPY by the files it copied."""

    secrets: bool = False
    ssh: bool = False
    cache_export: bool = False
    outputs: bool = False
    heredocs: bool = False
    frontends: bool = False
    link_wildcards: bool = False

    #: how each feature is named to people (``archfleet ls``, messages), in field order
    LABELS = {"secrets": "secrets", "ssh": "ssh", "cache_export": "cache export", "outputs": "outputs",
              "heredocs": "heredocs", "frontends": "syntax frontends",
              "link_wildcards": "a wildcard below a symbolic link"}

    def names(self) -> tuple[str, ...]:
        """The features the engine has, as field names, in field order."""
        return tuple(f.name for f in attrs.fields(Capabilities) if getattr(self, f.name))

    def lacks(self, wanted) -> tuple[str, ...]:
        """Of the feature names ``wanted`` (field names), those the engine does not have, in
        field order. An unknown name is lacked (no engine has it)."""
        return tuple(sorted((w for w in set(wanted) if not getattr(self, w, False)), key=_feature_order))


def _feature_order(name: str) -> tuple[int, str]:
    order = [f.name for f in attrs.fields(Capabilities)]
    return (order.index(name) if name in order else len(order), name)


@attrs.frozen
class CliVersion:
    """What the CLI at ``path`` on this machine printed for ``--version`` (``tail``: its lines),
    and the identity of the file then (:func:`archfleet.cliversions.identity`): the probe asks
    again once the file is another."""

    path: str
    identity: tuple[int, ...] = attrs.field(converter=tuple)
    tail: tuple[str, ...] = attrs.field(converter=tuple)


@attrs.frozen
class EngineInfo:
    """What the CLI at ``path`` on this machine printed for ``docker info`` (``tail``: its
    lines), and everything that answer depended on then, as JSON (``identity``,
    :func:`archfleet.engineinfos.identity`): the probe asks again once any of it changed."""

    path: str
    identity: str
    tail: tuple[str, ...] = attrs.field(converter=tuple)


@attrs.frozen
class NodeFacts:
    """What a probe found out about a node. ``reachable=False`` carries ``error`` instead."""

    node: NodeSpec
    reachable: bool
    error: str | None = None
    native: tuple[Platform, ...] = attrs.field(default=(), converter=_tuple)
    emulated: tuple[Platform, ...] = attrs.field(default=(), converter=_tuple)
    # platforms whose QEMU handler is registered but cannot run in containers, with why (no F flag)
    emulation_problems: tuple[tuple[Platform, str], ...] = attrs.field(default=(), converter=_tuple)
    engine_version: str | None = None
    engine_cli: tuple[str, ...] = attrs.field(default=(), converter=_tuple)  # argv prefix
    # "buildx" | "buildkit" (docker client with built-in BuildKit) | "buildah" (podman build) | None
    builder: str | None = None
    cpus: int = 1
    memory: int = 0  # bytes
    load: float = 0.0
    score: float | None = None  # CPU benchmark: higher is faster; None = not measured
    # seconds until each build slot taken by another archfleet run frees up (its lease), sorted
    busy: tuple[float, ...] = attrs.field(default=(), converter=_tuple)
    link_rate: float | None = None  # bytes/s to the node, measured on earlier context syncs
    fix: str | None = None  # what to do about ``error``, one line, from the plugin that knows
    address: str | None = None  # where the node is, for people (``user@host:port``), from its plugin
    # the probe ran the benchmark just now (the learn stage keeps ``score``); False: the score
    # came from the cache (or there is none)
    score_measured: bool = False
    rootless: bool = False  # the engine runs as an unprivileged user (rootless dockerd, rootless podman)
    # what the engine can do for a build; None: not known (a plugin that does not say), and then
    # nothing is held back from the node
    capabilities: Capabilities | None = None
    # what CLIs on this machine said for --version just now (the learn stage keeps them, and the
    # next probe reads them instead of asking: archfleet.cliversions); none from a cache
    cli_versions: tuple[CliVersion, ...] = attrs.field(default=(), converter=_tuple)
    # what CLIs on this machine said for ``docker info`` just now, with what it depended on
    # (kept by the learn stage, read by the next probe: archfleet.engineinfos); none from a cache
    engine_infos: tuple[EngineInfo, ...] = attrs.field(default=(), converter=_tuple)

    @property
    def engine_label(self) -> str:
        """The engine as people read it: its kind, version and whether it is rootless
        (``podman 4.3.1``, ``docker 20.10.24 rootless``); ``?`` for an unknown version."""
        return f"{self.node.engine} {self.engine_version or '?'}" + (" rootless" if self.rootless else "")

    @property
    def name(self) -> str:
        """The node's name."""
        return self.node.name

    @property
    def can_build(self) -> bool:
        """True when the node answered and has an engine CLI that can build with BuildKit."""
        return self.reachable and self.builder is not None


@attrs.frozen
class BuildRequest:
    """One ``archfleet build``/``plan`` invocation, after the flags were validated.

    ``dockerfile`` is the default Dockerfile; ``platform_dockerfiles`` the per-platform ones
    (``-f linux/arm/v7=Dockerfile.armv7``), each overriding the default for its platform. Every
    stage that reads the Dockerfile (analysis, offers, estimates, history and context keys, the
    context snapshot, the build) reads :meth:`dockerfile_for` its platform, through
    :meth:`for_platform`. The default need not exist when every platform has its own file."""

    context: Path
    dockerfile: Path
    platforms: tuple[Platform, ...] = attrs.field(converter=_tuple)
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    # (NAME, VALUE) in order, one per name; repr hides the values of secret-looking names
    build_args: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_labels, repr=mask)
    labels: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_labels)
    target: str | None = None
    push: bool = False
    no_cache: bool = False
    pull: bool = True  # resolve base images in the registry, not the engine's image store
    progress: str = "auto"
    metadata_file: Path | None = None
    insecure_registries: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    allow_partial: bool = False
    engine_cli: str | None = None
    pins: tuple = ()  # planner.Pin values from --strategy / --node
    # names in build_args whose value came from archfleet's environment (a bare --build-arg NAME,
    # as docker allows): the engine CLI gets them in its environment, never in argv
    env_build_args: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    # (platform, Dockerfile) from -f PLATFORM=PATH, one per platform, in the order given
    platform_dockerfiles: tuple[tuple[Platform, Path], ...] = attrs.field(default=(), converter=_platform_files)

    # --child-tags: None (children are pushed by digest only), or the template of the tag each
    # child also gets in every -t tag's repository ("{tag}-{platform}" is the seed style)
    child_tags: str | None = None
    # --annotation, buildx's syntax, parsed: where each goes (index, manifest, manifest-descriptor)
    annotations: tuple["Annotation", ...] = attrs.field(default=(), converter=_tuple)
    # ids of the build's secrets (never their values): part of the reuse key (--secret sets them)
    secret_ids: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    # --secret id=ID[,src=PATH|,env=VAR]: where each value is read at build time (never the value)
    secrets: tuple["Secret", ...] = attrs.field(default=(), converter=_tuple)
    # --ssh default|ID=PATH[,PATH]: the agent sockets or key files each ssh id forwards
    ssh: tuple["SshAgent", ...] = attrs.field(default=(), converter=_tuple)
    # --cache-from / --cache-to (buildx's syntax, parsed)
    cache_from: tuple["CacheSpec", ...] = attrs.field(default=(), converter=_tuple)
    cache_to: tuple["CacheSpec", ...] = attrs.field(default=(), converter=_tuple)
    # -o type=local,dest=DIR / type=tar,dest=FILE, and --load
    outputs: tuple["Output", ...] = attrs.field(default=(), converter=_tuple)
    load: bool = False
    # cross-node warm caches: each platform's last pushed child (from history), filled in by the
    # pipeline before the offers (archfleet.buildcache.warm_sources); () when none is known
    warm: tuple["WarmSource", ...] = attrs.field(default=(), converter=_tuple)
    # the external base images (FROM) as the registry resolved them for this build, filled in by
    # the pipeline before the offers (archfleet.buildkey.resolve_bases); () when not resolved
    bases: tuple["BaseImage", ...] = attrs.field(default=(), converter=_tuple)

    def warm_for(self, platform: Platform) -> "WarmSource | None":
        """The warm cache source of ``platform`` (its last pushed child, the node that built it),
        or None when there is none."""
        for w in self.warm:
            if w.platform == platform:
                return w
        return None

    def dockerfile_for(self, platform: Platform) -> Path:
        """The Dockerfile ``platform`` is built from: its own (``-f PLATFORM=PATH``), else the default."""
        for p, path in self.platform_dockerfiles:
            if p == platform:
                return path
        return self.dockerfile

    def for_platform(self, platform: Platform) -> "BuildRequest":
        """The request as building ``platform`` sees it: ``dockerfile`` is that platform's own
        file, ``platforms`` the requested platforms built from the same file, and no per-platform
        files left. The request itself when no platform has a file of its own (the usual case),
        so what is cached per request is shared."""
        if not self.platform_dockerfiles:
            return self
        own = self.dockerfile_for(platform)
        return attrs.evolve(self, dockerfile=own, platform_dockerfiles=(),
                            platforms=tuple(p for p in self.platforms if self.dockerfile_for(p) == own) or (platform,))

    def by_dockerfile(self) -> tuple[tuple[Path, tuple[Platform, ...]], ...]:
        """Each Dockerfile the requested platforms use, with those platforms, in platform order."""
        out: dict[Path, list[Platform]] = {}
        for p in self.platforms:
            out.setdefault(self.dockerfile_for(p), []).append(p)
        return tuple((path, tuple(ps)) for path, ps in out.items())


@attrs.frozen
class Option:
    """One way to build one platform, offered by one strategy plugin.

    ``estimate`` is seconds (the planner may refine it through ``archfleet_estimate``);
    ``why`` is one line a person can read in ``archfleet plan``.
    """

    platform: Platform
    strategy: str
    node: str
    estimate: float
    why: str = ""
    emulated: bool = False
    basis: str = "prior"  # where the estimate comes from, one line (set by archfleet_estimate)
    # the estimate in parts (name, seconds), in the order of :data:`PARTS`, summing to
    # ``estimate``; () when the plugin that estimated it gave none (an offer's prior, reuse)
    parts: tuple[tuple[str, float], ...] = attrs.field(default=(), converter=_parts, eq=False)
    # the Dockerfile steps the estimate's ``work`` part counted, each with its own estimate: the
    # learn stage joins them with the steps the build reported (``PlatformResult.steps``)
    steps: tuple["StepPlan", ...] = attrs.field(default=(), converter=_tuple, eq=False, repr=False)

    def __str__(self) -> str:
        return f"{self.strategy}@{self.node}"

    def part(self, name: str) -> float | None:
        """The seconds of part ``name`` (one of :data:`PARTS`), None when the estimate has no parts."""
        for key, seconds in self.parts:
            if key == name:
                return seconds
        return None


@attrs.frozen
class ChildImage:
    """One image manifest as the registry serves it, verified against its platform."""

    platform: Platform
    digest: str
    media_type: str
    size: int
    # the layers verification scanned because no scan of them was cached: the learn stage keeps
    # them (not part of the image's identity: equality and hash leave them out)
    scans: tuple["LayerScan", ...] = attrs.field(default=(), converter=_tuple, eq=False, repr=False)
    # the repository (registry/path) it was read from: where the merge copies it from (not part
    # of the image's identity either)
    repository: str = attrs.field(default="", eq=False)
    # the attestation manifests the engine made for it (BuildKit's ``unknown/unknown`` entries,
    # ``vnd.docker.reference.type: attestation-manifest``), each the exact descriptor JSON as the
    # engine wrote it in its index; the merge keeps them in the index beside the child
    attestations: tuple[str, ...] = attrs.field(default=(), converter=_tuple)


@attrs.frozen
class PlatformResult:
    """What building one platform produced.

    ``digest`` is the manifest digest in ``repository`` (None when not pushed);
    ``ref`` is where it can be pulled from (a per-platform tag or ``repo@digest``);
    ``image_id`` the engine's image id when the image stayed on the node.
    """

    platform: Platform
    option: Option
    seconds: float
    repository: str | None = None
    digest: str | None = None
    ref: str | None = None
    image_id: str | None = None
    # the context sync this build used, when it sent the context (the learn stage learns the
    # node's link rate from it); None when nothing was sent or the transport does not sync
    transfer: "Transfer | None" = None
    # what the layers it pushed hold, scanned from the engine's export on the way (by the pushed
    # blob's digest): verification need not read those layers back from the registry
    scans: tuple["LayerScan", ...] = attrs.field(default=(), converter=_tuple, eq=False, repr=False)
    # where the seconds went, measured (name, seconds) in the order of :data:`PARTS`, summing to
    # ``seconds``; () when the strategy did not measure them (reuse, a plugin's own strategy)
    parts: tuple[tuple[str, float], ...] = attrs.field(default=(), converter=_parts, eq=False)
    # the build's own step timings (BuildKit's progress, buildah's STEP lines), in the order seen
    steps: tuple["StepTime", ...] = attrs.field(default=(), converter=_tuple, eq=False, repr=False)
    # bytes of the layers archfleet compressed and pushed (base layers mounted are not counted)
    pushed_bytes: int = attrs.field(default=0, eq=False)
    # (diff_id, uncompressed bytes, sha256 hex of its first 512 KiB) of each layer the engine's
    # export held, for the learn stage (archfleet.layerprints: how the next push
    # tells a layer the registry holds before it is read whole)
    layer_prints: tuple[tuple[str, int, str], ...] = attrs.field(default=(), converter=_tuple, eq=False,
                                                                  repr=False)
    # the node whose child this build read as its warm cache source (archfleet.buildcache), if any
    warm_from: str | None = None
    # -o: the platform's files, merged from the image's layers into a spool tar (archfleet.outputs),
    # written to the destinations once every platform is done; None without -o
    output: str | None = None

    def part(self, name: str) -> float | None:
        """The measured seconds of part ``name`` (one of :data:`PARTS`), None when not measured."""
        for key, seconds in self.parts:
            if key == name:
                return seconds
        return None


#: The parts of an estimate and of a measured build, in this order (seconds each; they sum to
#: the whole): ``fixed`` (per build on a node: the engine CLI and BuildKit starting, resolving
#: the base, the steps that do no work (FROM, WORKDIR, ...), writing the image, reading the
#: export), ``transfer`` (the context sent to a remote node that lacks it: bytes / link rate),
#: ``work`` (the Dockerfile's RUN, COPY and ADD steps, the longest chain of stages; a step the
#: node's BuildKit has cached costs nothing) and ``push`` (compressing and uploading the new
#: layers: their bytes / the rate to the registry, plus the manifest).
PARTS = ("fixed", "transfer", "work", "push")


@attrs.frozen
class FileDigests:
    """A context's file digests as a snapshot found them, for the learn stage to remember
    (:mod:`archfleet.filedigests`): ``root`` the context's absolute path; ``files`` each
    file's ``(path, stat key, sha256 hex, settled)`` (stat key: device, inode, size, mtime ns,
    ctime ns; settled: the digest may stand for the contents next time); ``changed`` whether that differs from what was remembered (else nothing to write);
    ``stale`` the files BuildKit could not see change."""

    root: str
    files: tuple[tuple[str, tuple[int, ...], str, bool], ...] = attrs.field(converter=tuple,
                                                                            repr=lambda f: f"<{len(f)} files>")
    changed: bool = True
    #: files whose contents changed under the size and mtime remembered (BuildKit would send its
    #: old copy: :func:`archfleet.filedigests.unseen_change`), context-relative
    stale: tuple[str, ...] = ()
    #: bytes of the context's files that are new or have another stat than remembered: what an
    #: engine that received the context when the digests were remembered receives again
    #: (BuildKit's transfer compares by stat), for the transfer estimate
    unseen_bytes: int = 0


@attrs.frozen(eq=False)
class ContextFiles:
    """The context's files as a COPY or ADD from the context sees them: each ``(path, content,
    mode)`` that BuildKit's ignore rule lets through (:func:`archfleet.context.ignore_file`),
    less the Dockerfile, in path order: ``path`` relative and ``/``-separated (a directory's
    ending in ``/``), ``content`` a file's sha256 (``-> TARGET`` for a link, "" for a directory)
    and ``mode`` a file's permission bits (0 for the others); and ``key``, a digest of them all
    (32 hex digits). From the context's snapshot (:func:`archfleet.history.context_files`), so
    a file touched but not changed changes nothing, as in BuildKit's cache key (contents and
    modes). Equal and hashed by ``key`` (and ``dockerfile``), so the per-platform step plans
    made from it are cached by it. A step's chain covers only the files its sources can copy
    (:func:`archfleet.steps.files_key_for`): editing a file one COPY does not copy leaves that
    COPY, and the steps after it, cached."""

    entries: tuple[tuple[str, str, int], ...] = attrs.field(converter=tuple, repr=lambda e: f"<{len(e)} files>")
    key: str
    #: the Dockerfile's path in the context as BuildKit sends it (``/``-separated), "" when it
    #: lies outside the context or the ignore rule keeps it out (no COPY can copy it then)
    dockerfile: str = ""
    #: the digests the snapshot computed or reused, for the learn stage to remember (not part of
    #: the value: equal files are equal however they were hashed)
    digests: FileDigests | None = attrs.field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContextFiles) and (other.key, other.dockerfile) == (self.key, self.dockerfile)

    def __hash__(self) -> int:
        return hash((self.key, self.dockerfile))


@attrs.frozen
class StepPlan:
    """One Dockerfile step a build will run, as the estimate saw it.

    ``stage`` is the stage's name as BuildKit prints it (its ``AS`` name, ``stage-N`` for an
    unnamed one in a multi-stage file, ``""`` in a one-stage file) and ``index`` its position
    in the stage as BuildKit counts it (``[stage index/total]``: FROM is 1, then every RUN,
    COPY, ADD and WORKDIR). ``key`` names what the step *is* (its instruction text and its
    stage's base image, not the build's arguments): a step whose text changes gets a new key and
    only it is estimated anew. ``chain`` approximates BuildKit's cache key (the key, the steps
    before it in the stage, the base's digest, the ARG values in scope (for a RUN), the context's files
    its sources can copy (COPY/ADD from the context, a RUN that bind-mounts it: :class:`ContextFiles`),
    the stages it copies from): a node that ran that chain before has it cached.
    ``platform`` is where the step runs (its stage's platform), ``emulated`` whether under QEMU
    on the node. ``seconds`` is this step's estimate and ``basis`` where it came from
    (``prior``, ``learned``, ``cached``, ``warm``: cached in the warm source's child)."""

    stage: str
    index: int
    keyword: str
    text: str
    key: str
    chain: str
    platform: Platform
    emulated: bool = False
    seconds: float = 0.0
    basis: str = "prior"
    stage_index: int = 0  # the stage's index in the file (0-based), for the critical path
    after: tuple[int, ...] = attrs.field(default=(), converter=_tuple)  # stages it waits for


@attrs.frozen
class StepTime:
    """One step as the build reported it: BuildKit's ``#N [stage index/total] TEXT`` then ``#N
    DONE 1.2s`` or ``#N CACHED`` (buildah: ``STEP index/total: TEXT``, timed between lines).
    ``stage`` and ``index`` as in :class:`StepPlan`; ``seconds`` the time the engine gave it (0
    when cached); ``text`` as the engine printed it."""

    stage: str
    index: int
    keyword: str
    text: str
    seconds: float
    cached: bool = False


@attrs.frozen
class Estimate:
    """What ``archfleet_estimate`` may answer instead of ``(seconds, basis)``: the seconds, one
    line saying where they come from, the parts (:data:`PARTS`, summing to ``seconds``) and the
    steps the ``work`` part counted (:class:`StepPlan`).

    It unpacks as ``(seconds, basis)``, the answer the hook had before it: a
    ``wrapper=True`` plugin written for that (``seconds, basis = yield``) keeps working."""

    seconds: float
    basis: str
    parts: tuple[tuple[str, float], ...] = attrs.field(default=(), converter=_parts)
    steps: tuple[StepPlan, ...] = attrs.field(default=(), converter=_tuple)

    def __iter__(self):
        return iter((self.seconds, self.basis))


@attrs.frozen
class Transfer:
    """One context sync to a node, as measured: ``bytes`` sent in ``seconds`` over the link
    ``link`` names (the transport's ``link_key``, see :func:`archfleet.scores.score_key`).

    ``sync`` tells syncs apart: every platform built from one sync carries the same Transfer,
    and the learn stage folds each sync into the link rate once."""

    link: str
    bytes: int
    seconds: float
    sync: str = ""


@attrs.frozen
class LayerScan:
    """What verification found in one image layer (:func:`archfleet.elfcheck.scan_layer`: a
    JSON-able dict, ``{"entries": {...}, "whiteouts": [...]}``), by the layer's digest. A layer
    never changes under its digest, so two scans are equal when their digests are; ``scan`` is
    read, never changed."""

    digest: str
    scan: dict = attrs.field(eq=False, repr=False)


@attrs.frozen
class Annotation:
    """One ``--annotation`` (buildx's syntax, ``[TYPE[PLATFORM],...:]KEY=VALUE``) for one place:
    ``kind`` is ``index`` (the index's own annotations), ``manifest`` (each child manifest's; a
    bare ``KEY=VALUE`` is this) or ``manifest-descriptor`` (the child's entry in the index);
    ``platform`` limits it to one child (None: every child). Annotations need OCI media types:
    an index or manifest that carries one is an OCI index or OCI manifest."""

    kind: str
    key: str
    value: str
    platform: Platform | None = None

    def applies_to(self, platform: Platform) -> bool:
        """Whether this annotation goes on ``platform``'s child (or its descriptor)."""
        return self.platform is None or self.platform == platform


@attrs.frozen
class BaseImage:
    """A ``FROM`` image as the registry resolved it: ``ref`` (normalised, as in the Dockerfile
    after ARG expansion), ``digest`` (of what the reference points at: an index or a manifest)
    and, for an index, the manifest digest of each platform in it (``platforms``: (platform text,
    digest) pairs). Values, not clients: the reuse key is computed from them (archfleet.buildkey)."""

    ref: str
    digest: str
    platforms: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_tuple)

    def digest_for(self, platform: Platform | None) -> str:
        """The manifest digest of ``platform`` in it (for an index), else the reference's own
        digest (a single-platform image, or ``platform`` None: any platform)."""
        if platform is not None:
            for text, digest in self.platforms:
                if text == str(platform):
                    return digest
        return self.digest


@attrs.frozen
class Secret:
    """One ``--secret`` (buildx's syntax, ``id=ID[,src=PATH|,env=VAR]``): the secret's ``id``
    and where its value is read when a build starts: the file ``src`` or the environment variable
    ``env`` (exactly one of them is set). Never the value itself: a request is printed in traces
    and crosses plugin borders; the value is read by :func:`archfleet.secrets.value` only where a
    build hands it to its node."""

    id: str
    src: str | None = None
    env: str | None = None

    def __str__(self) -> str:
        return f"id={self.id}," + (f"src={self.src}" if self.src is not None else f"env={self.env}")


@attrs.frozen
class SshAgent:
    """One ``--ssh`` (buildx's syntax, ``default|ID=PATH[,PATH...]``): the ssh ``id`` a
    ``RUN --mount=type=ssh,id=ID`` asks for, and ``paths``: one agent socket (``default`` alone
    is the user's ``$SSH_AUTH_SOCK``, resolved when the flag is read; ``agent`` True), or private
    key files, as BuildKit reads them (one path that is a socket is an agent; else every path is
    a key)."""

    id: str
    paths: tuple[str, ...] = attrs.field(converter=_tuple)
    agent: bool = False  # paths is one agent socket (else key files); decided when the flag is read

    def __str__(self) -> str:
        return f"{self.id}={','.join(self.paths)}"


@attrs.frozen
class CacheSpec:
    """One ``--cache-from`` or ``--cache-to`` (buildx's syntax: ``type=registry,ref=REF[,mode=max]``,
    a plain ``REF``, or ``type=inline`` for ``--cache-to``): ``kind`` is ``registry`` or
    ``inline``; ``ref`` the cache image (``registry`` only); ``mode`` ``min`` (the layers of the
    result, BuildKit's default) or ``max`` (every stage's layers too). archfleet reads and writes
    a registry cache per platform, under ``ref``'s tag with the platform's suffix
    (:meth:`ref_for`), so platforms do not overwrite each other."""

    kind: str
    ref: str = ""
    mode: str = "min"

    def ref_for(self, platform: Platform) -> str:
        """``ref`` with ``platform``'s suffix on its tag: ``reg/app:cache`` ->
        ``reg/app:cache-linux-arm64`` (a ref without a tag: ``latest-linux-arm64``)."""
        from .reference import child_ref, parse_reference

        return str(child_ref(parse_reference(self.ref, what="cache ref"), platform.tag_suffix, what="cache ref"))

    def __str__(self) -> str:
        if self.kind == "inline":
            return "type=inline"
        return f"type=registry,ref={self.ref}" + (",mode=max" if self.mode == "max" else "")


@attrs.frozen
class Output:
    """One ``-o``/``--output`` (buildx's syntax): ``kind`` ``local`` (the result's files under the
    directory ``dest``) or ``tar`` (one tar file ``dest``). With several platforms each goes under
    ``<os>_<arch>[_<variant>]/``, as buildx writes them (:mod:`archfleet.outputs`)."""

    kind: str
    dest: Path = attrs.field(converter=Path)

    def __str__(self) -> str:
        return f"type={self.kind},dest={self.dest}"


@attrs.frozen
class WarmSource:
    """A platform's last child archfleet pushed (``ref``, ``repo@sha256:...``) and the node that
    built it (``node``), from history: a build of that platform on another node reads it as a
    cache source (its inline cache), so it starts warm (:mod:`archfleet.buildcache`)."""

    platform: Platform
    node: str
    ref: str
