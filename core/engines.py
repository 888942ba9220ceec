"""Engine adapters: one per engine kind, behind one small interface the strategies use.

A node's ``engine`` (``nodes.toml``, :attr:`archfleet.model.NodeSpec.engine`) picks its adapter
(:func:`adapter_for`): ``docker`` (:mod:`archfleet.engine`: dockerd, rootful or rootless,
through a CLI with BuildKit and the Engine API) or ``podman`` (:mod:`archfleet.podman`: the
podman CLI, rootful or rootless, no daemon). A rootless Docker node is a ``docker`` node whose
``docker_host`` is the rootless daemon's socket (``unix:///run/user/UID/docker.sock``); the
probe reads that it is rootless from the daemon (``docker info``'s security options).

What every adapter does (:class:`Engine`), always through the node's transport (argv and an
environment, never a command line), so it works on this machine and on SSH nodes alike:

- ``probe``: the engine CLI that can build, the engine's version, whether it is rootless, and
  what it can do (:class:`~archfleet.model.Capabilities`) -> :class:`Probed`;
- ``build``: build one platform into the node's image store under a tag -> the image id, with
  the request's secrets and ssh (:mod:`archfleet.secrets`) and caches (:mod:`archfleet.buildcache`);
  a failure is typed here (:class:`~archfleet.errors.InfrastructureError`: the node failed,
  the platform is re-planned elsewhere; :class:`~archfleet.errors.BuildFailed`: the build
  failed, reported). Each adapter decides from how its CLI ended and whether its engine still
  answers (:meth:`Engine.alive`), never from what the build printed;
- ``push``: push the tagged image to its registry -> the manifest digest, credentials never on
  a command line or the node's disk;
- ``export``: the image as a ``docker save`` tar stream (the seam for pushing children with
  archfleet's own registry client);
- ``inspect``: the image's id and platform (:class:`ImageInfo`); ``remove``: cleanup.

What a request needs of an engine (:func:`needs`) is read from its Dockerfile; a strategy
offers a node only when its engine has all of it (:func:`capable`), and the plan says why a
node that lacks something was left out (:func:`lacking`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import posixpath
import re
from typing import AsyncIterator, Iterable, Protocol, Sequence

import attrs

from .buildargs import env_passable
from .dockerfile import mount_fields
from .shellword import has_wildcard
from .model import BuildRequest, Capabilities, CliVersion, EngineInfo, NodeFacts, NodeSpec
from .platforms import Platform
from .reference import Reference
from .transport import Completed, LineCallback, Transport

#: the engine kinds ``nodes.toml`` accepts, each with its adapter module (:func:`adapter_for`)
KINDS = ("docker", "podman")
ENV_CLI = "ARCHFLEET_ENGINE_CLI"  # the local node's engine CLI, as --engine-cli names it

# Go wraps errors as "op path: errno text": a node resource failure ends the CLI's own line with
# the errno's text (ENOSPC, EDQUOT, ENOMEM, EROFS, EIO, EMFILE)
NODE_ERRNO = ("no space left on device", "disk quota exceeded", "cannot allocate memory",
              "read-only file system", "input/output error", "too many open files")


@attrs.frozen
class EngineCLI:
    """An engine CLI that can build: ``argv`` prefix and how it builds (``mode``: ``buildx``,
    ``buildkit`` (a docker client with BuildKit built in) or ``buildah`` (``podman build``)),
    and its version as it said it."""

    argv: tuple[str, ...]
    mode: str
    version: str = ""


@attrs.frozen
class ImageInfo:
    """An image in a node's store: its id (``sha256:...``) and platform, as the engine records it."""

    id: str
    os: str
    architecture: str
    variant: str = ""


@attrs.frozen
class Probed:
    """What an adapter's probe found on a node. ``answered``: the engine answered (False: its
    ``error`` says why, and ``fix`` what to do); ``cli`` is None when no CLI can build there
    (``error`` says why). ``versions``: what CLIs on this machine printed for ``--version``
    just now (:mod:`archfleet.cliversions`; none from the cache), for the node's facts; ``infos``:
    the same for ``docker info`` (:mod:`archfleet.engineinfos`)."""

    answered: bool
    cli: EngineCLI | None = None
    version: str | None = None
    rootless: bool = False
    capabilities: Capabilities | None = None
    error: str | None = None
    fix: str | None = None
    versions: tuple[CliVersion, ...] = ()
    infos: tuple[EngineInfo, ...] = ()


class Engine(Protocol):
    """One engine kind's adapter (module doc). Every method takes the node's transport (and,
    after the probe, its facts, which carry the CLI the probe chose: ``engine_cli``,
    ``builder``); blocking work runs in threads."""

    kind: str
    #: the adapter talks to a daemon's Engine API (the SSH transport forwards its socket)
    uses_engine_api: bool

    def candidates(self, engine_cli: str | None, local: bool) -> list[str]:
        """The CLIs to try on the node: ``engine_cli`` alone when given, else the adapter's
        defaults (on this machine, ``local``: what ``PATH`` has)."""
        ...

    async def probe(self, transport: Transport, node: NodeSpec, candidates: Sequence[str]) -> Probed:
        """The engine's facts on the node (:class:`Probed`)."""
        ...

    def probe_argvs(self, candidates: Sequence[str]) -> list[list[str]]:
        """Optional: the commands (argv lists, no environment or stdin of their own) :meth:`probe`
        runs on a node, which :func:`archfleet.probe.probe_node` runs ahead in the same session
        as its facts (each session pays the node's login shell); the probe reads their answers as
        if it ran them. An adapter without it runs its commands itself."""
        ...

    async def build(self, transport: Transport, facts: NodeFacts, *, platform: Platform, request: BuildRequest,
                    tag: str, context: str | None = None, dockerfile: str | None = None,
                    extra_build_args: Sequence[tuple[str, str]] = (), extra_labels: Sequence[tuple[str, str]] = (),
                    on_line: LineCallback | None = None, warm: str | None = None) -> str:
        """Build ``platform`` into the node's store as ``tag``; the image id. The request's
        secrets and ssh reach the CLI through :func:`archfleet.secrets.mounted`, its caches as
        :func:`archfleet.buildcache.cache_argv` says (``warm``: another node's child of this
        platform as a cache source; an engine that reads no BuildKit cache ignores it). Raises
        :class:`~archfleet.errors.InfrastructureError` (the node failed) or
        :class:`~archfleet.errors.BuildFailed` (the build did)."""
        ...

    async def push(self, transport: Transport, facts: NodeFacts, ref: Reference, auth_config: dict | None = None,
                   on_line: LineCallback | None = None) -> str:
        """Push the image tagged ``ref`` to its registry; the manifest digest. ``auth_config``
        (``username``/``password`` or ``identitytoken``, ``serveraddress``) never reaches a
        command line or the node's disk beyond the push. A refusal is typed as
        :func:`archfleet.registry.refusal` says; a node that failed is an InfrastructureError."""
        ...

    def export(self, transport: Transport, facts: NodeFacts, image: str) -> AsyncIterator[bytes]:
        """``image`` as a ``docker save`` tar (``manifest.json``, the config, one tar per
        layer), in chunks as they come."""
        ...

    async def inspect(self, transport: Transport, facts: NodeFacts, image: str) -> ImageInfo:
        """``image``'s id and platform in the node's store."""
        ...

    async def remove(self, transport: Transport, facts: NodeFacts, image: str) -> bool:
        """Remove ``image`` (a tag or id) from the node's store; False when it was not there."""
        ...

    async def alive(self, transport: Transport, facts: NodeFacts | None = None) -> bool:
        """Whether the node's engine still answers (never raises)."""
        ...


def adapter_for(kind: str) -> Engine:
    """The adapter for engine ``kind`` (one of :data:`KINDS`). Raises ``KeyError`` for another
    kind (``nodes.toml`` is validated against :data:`KINDS`, so only a plugin's own NodeSpec
    can carry one)."""
    # imported here: the adapters import this module's shared pieces
    if kind == "docker":
        from .engine import DOCKER
        return DOCKER
    if kind == "podman":
        from .podman import PODMAN
        return PODMAN
    raise KeyError(f"no engine adapter for {kind!r} (known: {', '.join(KINDS)})")


def local_candidates(preferred: str | None = None, name: str = "docker") -> list[str]:
    """CLIs to try on this machine: the named one only (``preferred``, else ``$ARCHFLEET_ENGINE_CLI``),
    else every ``name`` on PATH, then ``/usr/bin/NAME`` (for docker: Debian's 20.10 client,
    which has BuildKit built in)."""
    preferred = preferred or os.environ.get(ENV_CLI)
    if preferred:
        return [preferred]
    seen: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in [os.path.realpath(s) for s in seen]:
                seen.append(path)
    fallback = f"/usr/bin/{name}"
    if os.path.exists(fallback) and fallback not in seen:
        seen.append(fallback)
    return seen


# -- how a failed CLI run is read (shared by the adapters) ------------------------------------

def last_own_line(done: Completed, noise: re.Pattern) -> str | None:
    """The CLI's own last line: the last non-empty line of its output that ``noise`` does not
    match (BuildKit's ``#N`` progress, a log line), or None when there is none."""
    for line in reversed(done.tail):
        line = line.strip()
        if line and not noise.match(line):
            return line
    return None


# how the SSH transport reports a remote command killed by a signal (its own last line, after
# the command's output; :class:`archfleet.plugins.ssh.transport.SSHTransport`)
_SSH_SIGNAL = re.compile(r"^killed by signal (\w+)$")


def exit_path_failure(done: Completed) -> str | None:
    """Why a CLI run that ended like ``done`` is the node's failure, from its exit path alone:
    the CLI could not be started (126/127: not found, not executable), the secrets wrapper
    before it could not hand the values over (:func:`archfleet.secrets.script_failure`: no tmpfs
    on the node) or it was killed by a signal (the OOM killer, a reboot, a killed engine: a
    negative status here; over SSH, status 137 with the transport's own ``killed by signal
    NAME`` line last); else None."""
    from .secrets import script_failure

    if done.returncode in (126, 127):
        return f"engine CLI unusable: {done.last_line()}"
    why = script_failure(done)
    if why is not None:
        return f"the node could not take the build's secrets: {why}"
    if done.returncode < 0:
        return f"engine CLI killed by signal {-done.returncode}"
    m = _SSH_SIGNAL.match(done.tail[-1]) if done.returncode == 137 and done.tail else None
    if m:
        return f"engine CLI killed by signal {m.group(1)}"
    return None


def resource_failure(line: str | None) -> str | None:
    """``line`` (a CLI's own error line) says a resource of the node itself failed when its
    *last* component is an errno text of :data:`NODE_ERRNO` (a file name or command quoted
    earlier in it cannot trigger this); else None."""
    if not line:
        return None
    low = line.lower().rstrip(" .")
    if any(low.endswith(errno) for errno in NODE_ERRNO):
        return f"node out of resources: {line}"
    return None


async def run_build(transport: Transport, argv: Sequence[str], env: dict[str, str],
                    on_line: LineCallback | None, watch: LineCallback | None = None,
                    stdin: bytes | None = None) -> Completed:
    """Run a build CLI through ``transport``, each line to ``watch`` (the adapter's own reading)
    and then ``on_line``; ``stdin``: what the build's secrets wrapper reads
    (:func:`archfleet.secrets.mounted`), else nothing. An exception ``on_line`` raises stops the
    build (the CLI is killed through the transport's cancellation) and is raised here."""
    callback_failed: list[BaseException] = []

    def each(line: str) -> None:
        if watch is not None:
            watch(line)
        if on_line and not callback_failed:
            try:
                on_line(line)
            except Exception as exc:
                # not raised into the transport's reader: cancel the run, which kills the CLI
                callback_failed.append(exc)
                running.cancel()

    running = asyncio.ensure_future(transport.run(argv, env=env, stdin=stdin, on_line=each))
    try:
        return await running
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if callback_failed and (me is None or not me.cancelling()):
            raise callback_failed[0] from None
        raise


async def collect(transport: Transport, argv: Sequence[str], *, timeout: float = 60,
                  env: dict[str, str] | None = None, stdin: bytes | None = None) -> tuple[Completed, list[str]]:
    """Run ``argv`` and keep every line it prints (the transport's ``tail`` keeps only the last
    ones): for commands whose whole answer is read (JSON)."""
    lines: list[str] = []
    done = await transport.run(argv, env=env, stdin=stdin, on_line=lines.append, timeout=timeout)
    return done, lines


# -- what a request needs of an engine --------------------------------------------------------

@attrs.frozen
class Need:
    """One feature a request needs (a :class:`~archfleet.model.Capabilities` field name) and
    where its Dockerfile asks for it (``file:line: instruction``), for people."""

    feature: str
    where: str


_SYNTAX = re.compile(r"^\s*#\s*syntax\s*=\s*\S", re.I)


@attrs.frozen
class Mount:
    """One ``RUN --mount=type=secret|ssh`` of a Dockerfile as BuildKit reads it: ``kind``
    (``secret`` or ``ssh``), ``id`` (BuildKit's defaults applied: a secret's ``id``, else its
    ``source``, else the base name of its ``target``; ssh's ``default``), whether the step fails
    without it (``required``: BuildKit's default is False, the mount is then skipped) and
    ``where`` (``file:line: instruction``)."""

    kind: str
    id: str
    required: bool
    where: str


def needs(request: BuildRequest) -> tuple[Need, ...]:
    """What building ``request`` needs of an engine, from its Dockerfile read with BuildKit's
    own parser (the whole file: BuildKit and buildah both parse every stage): here-documents
    (``heredocs``, or ``frontends`` when a ``# syntax=`` directive names a frontend that brings
    them), ``RUN --mount=type=secret`` (``secrets``), ``RUN --mount=type=ssh`` (``ssh``); and from
    its flags: ``--cache-to`` with ``mode=max`` (``cache_export``: only a registry cache export
    holds every stage; an engine with inline cache only cannot); and from the context, a COPY
    wildcard below a symbolic link (``link_wildcards``, :func:`_wildcard_below_link`). One :class:`Need` per feature, at
    its first use. A Dockerfile that cannot be read or parsed needs nothing here (the analysis
    reports it, exit 2)."""
    found = {n.feature: n for n in _dockerfile_needs(request)}
    link = _wildcard_below_link(request)
    if link is not None:
        found.setdefault("link_wildcards", link)
    for spec in request.cache_to:
        if spec.kind == "registry" and spec.mode == "max":
            found.setdefault("cache_export", Need("cache_export", f"--cache-to {spec}"))
    order = [f.name for f in attrs.fields(Capabilities)]
    return tuple(found[k] for k in sorted(found, key=order.index))


def _wildcard_below_link(request: BuildRequest) -> Need | None:
    """``link_wildcards`` at the first COPY or ADD from the context whose source has a wildcard
    below a component that is a symbolic link in the context (``COPY link/* /d/``, ``link ->
    dir``); None when there is none. Read from the context each time (links come and go)."""
    root = str(request.context)
    for where, sources in _parsed(request)[2]:
        for src in sources:
            if "$" in src or "://" in src:
                continue  # a variable (BuildKit expands it) or an ADD URL
            parts = [p for p in posixpath.normpath("/" + src).split("/") if p]
            if not any(has_wildcard(p) for p in parts):
                continue
            prefix = root
            for part in parts:
                if has_wildcard(part):
                    break
                prefix = os.path.join(prefix, part)
                if os.path.islink(prefix):
                    return Need("link_wildcards", where)
    return None


def mounts(request: BuildRequest) -> tuple[Mount, ...]:
    """Every ``RUN --mount=type=secret|ssh`` of ``request``'s Dockerfile (:class:`Mount`), in
    order; none when the file cannot be read or parsed."""
    return _parsed(request)[1]


def _dockerfile_needs(request: BuildRequest) -> tuple[Need, ...]:
    return _parsed(request)[0]


def _parsed(request: BuildRequest) -> tuple[tuple[Need, ...], tuple[Mount, ...], tuple]:
    path = str(request.dockerfile)
    try:
        st = os.stat(path)
    except OSError:
        return (), (), ()
    return _read(path, (st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=64)
def _read(path: str, stamp: tuple) -> tuple[tuple[Need, ...], tuple[Mount, ...], tuple]:
    from .dockerfile import decode, parse_string

    try:
        with open(path, "rb") as f:
            text = decode(f.read(), path)
        commands = parse_string(text)
    except Exception:
        return (), (), ()
    directive = False
    for line in text.splitlines():  # parser directives: comments before the first instruction
        if not line.strip():
            continue
        if not line.lstrip().startswith("#"):
            break
        directive = directive or bool(_SYNTAX.match(line))
    found: dict[str, Need] = {}
    mounted: list[Mount] = []
    copies: list[tuple[str, tuple[str, ...]]] = []
    name = os.path.basename(path)
    for cmd in commands:
        where = f"{name}:{cmd.start_line}: {cmd.original.splitlines()[0][:60]}"
        if cmd.cmd.upper() in ("COPY", "ADD") and not any(f.lower().startswith("--from=") for f in cmd.flags):
            copies.append((where, tuple(cmd.value[:-1])))
        if getattr(cmd, "heredocs", ()):
            found.setdefault("frontends" if directive else "heredocs", Need("frontends" if directive else "heredocs",
                                                                             where))
        if cmd.cmd.upper() == "RUN":
            for flag in cmd.flags:
                if not flag.lower().startswith("--mount="):
                    continue
                mount = _mount(flag.split("=", 1)[1], where)
                if mount is not None:
                    feature = "secrets" if mount.kind == "secret" else "ssh"
                    found.setdefault(feature, Need(feature, where))
                    mounted.append(mount)
    return tuple(found.values()), tuple(mounted), tuple(copies)


def _mount_type(spec: str) -> str:
    """The ``type=`` of a ``RUN --mount`` value (BuildKit's default is ``bind``)."""
    for key, value in mount_fields(spec):
        if key == "type" and value is not None:
            return value.strip("\"'").lower()
    return "bind"


def _mount(spec: str, where: str) -> Mount | None:
    """A secret or ssh ``--mount`` value as :class:`Mount` (BuildKit's ``runmount.go`` defaults),
    None for any other type."""
    kind = _mount_type(spec)
    if kind not in ("secret", "ssh"):
        return None
    ident = source = target = ""
    required = False
    for key, value in mount_fields(spec):
        if key == "id":
            ident = value or ""
        elif key in ("source", "src"):
            source = value or ""
        elif key in ("target", "dst", "destination"):
            target = value or ""
        elif key == "required":
            required = value is None or value in ("1", "t", "T", "true", "TRUE", "True")
    if kind == "ssh":
        return Mount("ssh", ident or "default", required, where)
    ident = ident or source or (target.rstrip("/").rsplit("/", 1)[-1] if target else "")
    return Mount("secret", ident, required, where)


def lacking(facts: NodeFacts, wanted: Iterable[Need]) -> tuple[Need, ...]:
    """The needs of ``wanted`` that ``facts``' engine does not meet; none when its capabilities
    are not known (a plugin's node that does not report them)."""
    caps = facts.capabilities
    if caps is None:
        return ()
    wanted = tuple(wanted)
    missing = set(caps.lacks(n.feature for n in wanted))
    return tuple(n for n in wanted if n.feature in missing)


def capable(request: BuildRequest, facts: Iterable[NodeFacts]) -> list[NodeFacts]:
    """The nodes of ``facts`` that can build (:attr:`~archfleet.model.NodeFacts.can_build`) and
    whose engine has everything ``request`` needs: the nodes a strategy may offer."""
    wanted = needs(request)
    return [f for f in facts if f.can_build and not lacking(f, wanted)]


#: what gives a node each feature, one line each (the fix ``plan`` and ``build`` print)
FEATURE_FIX = {
    "heredocs": "build on Docker >= 23 or podman >= 5.0, or start the Dockerfile with "
                "`# syntax=docker/dockerfile:1` (a BuildKit node then loads a frontend that has them)",
    "frontends": "build on a Docker node (BuildKit loads the `# syntax=` frontend; podman ignores the directive)",
    "secrets": "build on Docker with BuildKit or podman >= 3.0",
    "ssh": "build on Docker with BuildKit or podman >= 3.4",
    "cache_export": "build on a node whose docker CLI has the buildx plugin (podman exports no BuildKit cache), "
                    "or drop mode=max (Docker without buildx then writes the inline cache)",
    "outputs": "build on Docker with BuildKit or podman",
    "link_wildcards": "name the directory the link points to in that COPY (dir/* rather than link/*), or build on "
                      "Docker >= 23 or podman (BuildKit >= 0.10 follows the link: moby/buildkit#2300)",
}


def why_lacking(facts: NodeFacts, missing: Sequence[Need]) -> str:
    """One phrase for people: what ``facts``' engine cannot do of ``missing`` and where the
    Dockerfile asks for it."""
    labels = Capabilities.LABELS
    return (f"{facts.engine_label} cannot build " + "; ".join(
        f"{labels.get(n.feature, n.feature)} ({n.where})" for n in missing))


def build_flags(*, tag: str, build_args: Sequence[tuple[str, str]], labels: Sequence[tuple[str, str]],
                target: str | None, env_build_args: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The ``docker build`` flags every engine CLI takes alike (docker, buildx, podman/buildah):
    ``-t TAG`` (when given), ``--build-arg`` each arg, ``--label`` each label, ``--target``; and
    the environment to add to the CLI's. A build arg named in ``env_build_args`` (its value came
    from archfleet's environment: a bare ``--build-arg NAME``) is passed bare with its value in
    the returned environment, where both CLIs read a bare name from (docker/cli
    ``opts.ValidateEnv``; buildah the same), so the value is in no process's argv; names the CLI
    itself reads (:func:`archfleet.buildargs.env_passable`) and explicit ``NAME=VALUE`` args go
    in argv."""
    argv: list[str] = ["-t", tag] if tag else []
    env: dict[str, str] = {}
    from_env = set(env_build_args)
    for key, value in build_args:
        if key in from_env and env_passable(key):
            argv += ["--build-arg", key]
            env[key] = value
        else:
            argv += ["--build-arg", f"{key}={value}"]
    for key, value in labels:
        argv += ["--label", f"{key}={value}"]
    if target:
        argv += ["--target", target]
    return argv, env
