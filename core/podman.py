"""The Podman engine adapter (``engine = "podman"``; the interface is :mod:`archfleet.engines`).

Podman has no daemon and, by default, no API socket: everything goes through the podman CLI on
the node, rootful or rootless (its own storage: ``--root``/``storage.conf``, the user's
``~/.local/share/containers`` when rootless), through the node's transport as argv and an
environment (never a command line).

- **Probe**: the first candidate whose ``--version`` says ``podman version X.Y.Z``; then, at
  once, ``podman info`` (the engine answers: its storage opens; its version; rootless or not) and
  ``podman build --help`` (what it can do: ``--secret``, ``--ssh``, ``--cache-to``, ``--output``
  are capabilities when the CLI lists them). Here-documents need podman >= 5.0 (buildah 1.35;
  4.3's buildah reads ``RUN <<EOF`` as an instruction named after the heredoc's first word, seen
  here); podman has no ``# syntax=`` frontends (it parses every Dockerfile itself).
- **Build**: ``podman build --format docker --platform P`` with the request's build args (a
  bare ``--build-arg NAME`` takes its value from the CLI's environment, as docker's does: the
  value is in no argv), labels, target, ``--no-cache`` and ``--pull=always`` (``--no-pull``:
  ``--pull=missing``). ``--format docker`` keeps what OCI image configs cannot hold
  (``HEALTHCHECK``, ``SHELL``, ``ONBUILD``), as docker builds do; under QEMU through the node's
  binfmt handlers like any build. The image id is podman's last line (the full id).
- **A failed build** is classified as docker's are (:mod:`archfleet.engine`): never from the
  build's output. In order: the CLI could not start or was killed by a signal -> the node
  failed; ``podman info`` no longer answers -> the node failed (its storage or the node is
  gone); else podman's own last line (the last non-empty line that is not a log line
  ``time="..." level=...`` / ``WARN[0000]``): a process of the build exited non-zero
  (``Error: building at STEP "...": while running runtime: exit status N``, seen here) -> the
  build failed, whatever the step printed; an errno of a node resource ending that line (no
  space left on device, ...), or ending it but for the ``exit status N`` containers/storage's
  helper appends (``... write /bin/busybox: no space left on device exit status 1``, seen here
  on a full store) -> the node failed; anything else (an unknown instruction, a
  COPY source missing, a base image that cannot be pulled) -> the build failed.
- **Push**: ``podman push --format v2s2 --digestfile`` (Docker schema 2 manifests, as docker
  nodes push, so a fleet mixing engines still gets one manifest list). Credentials: podman reads
  them from an auth file, so they are written, from this process's stdin, to a file in a fresh
  0700 directory on a tmpfs of the node (``$XDG_RUNTIME_DIR``, else ``/dev/shm``), opened as
  file descriptor 3 and *deleted at once*; podman reads ``--authfile /dev/fd/3``. They are in no
  argv, in no environment, and on no disk once podman has started; the directory (holding only
  the digest file podman writes) is removed when the push ends. Without credentials the auth
  file is empty (``{"auths": {}}``), so podman never sends the node user's own. A refusal is
  typed from podman's own error line by the registry's error code or HTTP status
  (:func:`archfleet.registry.refusal`): ``unauthorized``/``denied`` and rate limits are
  :class:`~archfleet.errors.RegistryRefused` (exit 3), other answers
  :class:`~archfleet.errors.RegistryError` (exit 1); neither is retried elsewhere. A CLI that
  could not start, was killed, or whose ``podman info`` stopped answering is the node's failure.
- **Export**: ``podman save --format docker-archive`` (the ``docker save`` layout), its output
  streamed back as bytes (``Transport.stream``); through a transport of text lines only,
  base64-encoded, in chunks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from typing import AsyncIterator, Sequence

from .engines import (build_flags, EngineCLI, ImageInfo, Probed, collect, exit_path_failure, last_own_line, local_candidates,
                      resource_failure, run_build)
from .errors import BuildFailed, InfrastructureError, RegistryError
from .model import BuildRequest, Capabilities, NodeFacts, NodeSpec
from .platforms import Platform
from .reference import Reference
from .registry import credential_name, refusal, registry_answer
from .transport import Completed, LineCallback, OutputFailed, Transport, stream_output

MODE = "buildah"  # NodeFacts.builder of a podman node: podman build is buildah
_VERSION = re.compile(r"^podman(?:\.exe)? version (\d+)\.(\d+)(?:\.(\d+))?\S*\s*$", re.I)
# logrus's own lines (text format without a terminal, and with one): podman's log, not its answer
_LOG_LINE = re.compile(r'^(time="[^"]*" level=\w+ |(DEBU|INFO|WARN|ERRO)\[\d+\] )')
# a process of the build exited non-zero (buildah: "while running runtime: exit status N")
_PROCESS_EXIT = re.compile(r"while running runtime: exit status \d+\s*$")
# containers/storage's helper process appends its own exit to the stderr it relays ("... write
# /bin/busybox: no space left on device exit status 1", seen here on a full store)
_HELPER_EXIT = re.compile(r"\s+exit status \d+\s*$")
_IMAGE_ID = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
_DIGEST = re.compile(r"^archfleet-digest=(sha256:[0-9a-f]{64})$")
_BASE64_LINE = re.compile(r"^[A-Za-z0-9+/]+=*$")
INFO_FORMAT = "version={{.Version.Version}} rootless={{.Host.Security.Rootless}} driver={{.Store.GraphDriverName}}"
HEREDOCS_SINCE = (5, 0)  # buildah 1.35 (containers/buildah#5474: 1.33 and 1.34 still refuse them)

# The push, as a fixed script: credentials arrive on stdin (never argv or environment), land in
# a fresh 0700 directory on a tmpfs, are opened as fd 3 and unlinked before podman starts.
# $1: the image in the node's store, $2: where it goes (docker://REF), then the CLI's argv.
PUSH_SCRIPT = r"""
umask 077
base=${XDG_RUNTIME_DIR:-}
{ [ -n "$base" ] && [ -d "$base" ] && [ -w "$base" ]; } || base=/dev/shm
{ [ -d "$base" ] && [ -w "$base" ]; } || base=${TMPDIR:-/tmp}
d=$(mktemp -d "$base/archfleet-push.XXXXXXXX") || {
  echo "archfleet: cannot make a private directory in $base" >&2; exit 125; }
trap 'rm -rf "$d"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
cat > "$d/auth.json" || exit 125
exec 3< "$d/auth.json" || exit 125
rm -f "$d/auth.json"
src=$1 dst=$2
shift 2
"$@" push --format v2s2 --authfile /dev/fd/3 --digestfile "$d/digest" "$src" "$dst"
rc=$?
exec 3<&-
if [ "$rc" = 0 ]; then
  printf 'archfleet-digest=%s\n' "$(cat "$d/digest")"
fi
exit "$rc"
"""

# The export, as a fixed script: $1 the image, then the CLI's argv. The archive is written to a
# private directory on the node first (podman's exit status is then known), then sent base64.
SAVE_SCRIPT = r"""
umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/archfleet-save.XXXXXXXX") || exit 125
trap 'rm -rf "$d"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
img=$1
shift
"$@" save --format docker-archive -o "$d/image.tar" "$img" || exit $?
base64 "$d/image.tar"
"""


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from ``podman --version`` (``podman version 4.3.1``), None for any
    other CLI's answer."""
    m = _VERSION.match(text.strip())
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


async def discover_cli(transport: Transport, candidates: Sequence[str]) -> tuple[EngineCLI | None, list[str]]:
    """The first candidate that is podman (its ``--version``; every candidate asked at once),
    and why the others are not."""
    if not candidates:
        return None, []
    answers = await asyncio.gather(*(transport.run([cli, "--version"], timeout=30) for cli in candidates))
    reasons: list[str] = []
    for cli, done in zip(candidates, answers):
        if not done.ok:
            reasons.append(f"{cli}: {done.last_line()}")
            continue
        version = parse_version(done.last_line())
        if version is None:
            reasons.append(f"{cli}: not podman ({done.last_line()})")
            continue
        return EngineCLI((cli,), MODE, ".".join(map(str, version))), reasons
    return None, reasons


def capabilities(help_lines: Sequence[str], version: str | None) -> Capabilities:
    """What a podman node can do: the flags its ``podman build --help`` lists, and here-documents
    from podman 5.0 on (see :data:`HEREDOCS_SINCE`); never ``# syntax=`` frontends, and never a
    BuildKit registry cache export (buildah's ``--cache-to`` is a cache of its own format:
    :mod:`archfleet.buildcache`)."""
    flags = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", "\n".join(help_lines)))
    parsed = parse_version(f"podman version {version}") if version else None
    # buildah's --cache-to/--cache-from keep a layer cache of buildah's own, not BuildKit's
    # registry cache: archfleet's --cache-to is not something podman can export
    return Capabilities(secrets="secret" in flags, ssh="ssh" in flags, cache_export=False,
                        outputs="output" in flags, heredocs=parsed is not None and parsed[:2] >= HEREDOCS_SINCE,
                        frontends=False, link_wildcards=True)  # buildah's cache key: the digest of what COPY added


def parse_info(lines: Sequence[str]) -> dict[str, str]:
    """``podman info --format INFO_FORMAT``'s ``key=value`` words as a dict (empty when absent)."""
    for line in lines:
        if line.startswith("version="):
            return dict(word.partition("=")[::2] for word in line.split())
    return {}


def build_argv(cli: Sequence[str], *, platform: Platform, dockerfile: str, context: str, tag: str,
               build_args: Sequence[tuple[str, str]] = (), labels: Sequence[tuple[str, str]] = (),
               target: str | None = None, no_cache: bool = False, pull: bool = True,
               env_build_args: Sequence[str] = (), mounts: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The argv, and the environment to add to podman's, that build ``platform`` into the node's
    store as ``tag`` (see the module doc). A build arg named in ``env_build_args`` (its value
    came from archfleet's environment) is passed bare, ``--build-arg NAME``, with its value in
    the returned environment, where podman reads it from (as docker does); other args are
    ``NAME=VALUE`` in argv. ``mounts``: the build's ``--secret``/``--ssh`` words
    (:func:`archfleet.secrets.mounted`), which podman takes as docker does."""
    argv = [*cli, "build", "--format", "docker", "--platform", str(platform), "-f", dockerfile]
    env: dict[str, str] = {}
    flags, flag_env = build_flags(tag=tag, build_args=build_args, labels=labels, target=target,
                                  env_build_args=env_build_args)
    argv += flags
    env.update(flag_env)
    argv += list(mounts)
    if no_cache:
        argv.append("--no-cache")
    # always: resolve bases in the registry for the platform asked (as docker nodes do);
    # missing: use what the store has, as `docker build` without --pull does
    argv.append("--pull=always" if pull else "--pull=missing")
    argv.append(context)
    return argv, env


def cli_error_line(done: Completed) -> str | None:
    """podman's own last line: the last non-empty line that is not one of its log lines."""
    return last_own_line(done, _LOG_LINE)


def node_failed(done: Completed) -> str | None:
    """Why the failed build ``done`` is the node's fault (the module doc's rules, without asking
    ``podman info``), or None when it is the build's."""
    why = exit_path_failure(done)
    if why is not None:
        return why
    line = cli_error_line(done)
    if line is None or _PROCESS_EXIT.search(line):
        return None
    if resource_failure(line) or resource_failure(_HELPER_EXIT.sub("", line)):
        return f"node out of resources: {line}"
    return None


def _own_message(done: Completed) -> str:
    """podman's own last line without its ``Error: `` prefix (else the last line)."""
    return re.sub(r"^Error:\s*", "", cli_error_line(done) or done.last_line())


def auth_file(registry: str, auth_config: dict | None) -> bytes:
    """The auth file podman reads for a push to ``registry`` (``containers-auth.json(5)``): the
    credentials of ``auth_config`` (as :func:`archfleet.engine.auth_config_for` gives them)
    under the registry's name (``docker.io`` for Docker Hub), or no credentials at all."""
    auths: dict[str, dict] = {}
    if auth_config:
        name = credential_name(registry)
        if auth_config.get("identitytoken"):
            auths[name] = {"identitytoken": auth_config["identitytoken"]}
        else:
            pair = f"{auth_config.get('username', '')}:{auth_config.get('password', '')}".encode()
            auths[name] = {"auth": base64.b64encode(pair).decode()}
    return json.dumps({"auths": auths}).encode()


class PodmanEngine:
    """The ``podman`` adapter (:class:`archfleet.engines.Engine`; the module doc has the rules)."""

    kind = "podman"
    uses_engine_api = False  # no socket to forward: the CLI does everything

    def candidates(self, engine_cli: str | None, local: bool) -> list[str]:
        """``engine_cli`` alone, else on this machine every ``podman`` on PATH then
        ``/usr/bin/podman``; on a node ``podman`` then ``/usr/bin/podman``."""
        if local:
            return local_candidates(engine_cli, name="podman")
        return [engine_cli] if engine_cli else ["podman", "/usr/bin/podman"]

    def probe_argvs(self, candidates: Sequence[str]) -> list[list[str]]:
        """The commands :meth:`probe` runs, for the probe to run ahead in one session
        (:func:`archfleet.probe.run_batch`): each candidate's ``--version``, and the first
        candidate's ``info`` and ``build --help`` (another candidate's run when it is chosen)."""
        if not candidates:
            return []
        first = candidates[0]
        return [*([cli, "--version"] for cli in candidates), [first, "info", "--format", INFO_FORMAT],
                [first, "build", "--help"]]

    async def probe(self, transport: Transport, node: NodeSpec, candidates: Sequence[str]) -> Probed:
        """The podman CLI, then at once ``podman info`` and ``podman build --help`` (module doc)."""
        cli, reasons = await discover_cli(transport, candidates)
        if cli is None:
            return Probed(True, error="no podman CLI: " + "; ".join(reasons or ["none found"]),
                          fix=f"install podman on the node (Debian: apt-get install podman), or set engine_cli at "
                              f"{node.source}")
        (info, info_lines), (helped, help_lines) = await asyncio.gather(
            collect(transport, [*cli.argv, "info", "--format", INFO_FORMAT], timeout=60),
            collect(transport, [*cli.argv, "build", "--help"], timeout=30))
        facts = parse_info(info_lines)
        if not info.ok or not facts.get("version"):
            return Probed(False, cli=cli,
                          error=f"podman does not answer on the node: {cli_error_line(info) or info.last_line()}",
                          fix="run `podman info` on the node as its user and fix what it says (storage, "
                              "subuids for rootless podman)")
        version = facts["version"]
        return Probed(True, cli=cli, version=version, rootless=facts.get("rootless") == "true",
                      capabilities=capabilities(help_lines if helped.ok else (), version))

    @staticmethod
    def _argv(facts: NodeFacts) -> tuple[str, ...]:
        return tuple(facts.engine_cli) or ("podman",)

    async def build(self, transport: Transport, facts: NodeFacts, *, platform: Platform, request: BuildRequest,
                    tag: str, context: str | None = None, dockerfile: str | None = None,
                    extra_build_args: Sequence[tuple[str, str]] = (), extra_labels: Sequence[tuple[str, str]] = (),
                    on_line: LineCallback | None = None, warm: str | None = None) -> str:
        """Build ``platform`` as ``tag`` with ``podman build``; the image id (``sha256:...``). The
        request's secrets and ssh as :func:`archfleet.secrets.mounted` hands them over; no
        BuildKit cache (``warm`` is not read: :mod:`archfleet.buildcache`). Raises
        InfrastructureError or BuildFailed (module doc)."""
        from .secrets import mounted

        ids: list[str] = []

        def watch(line: str) -> None:
            m = _IMAGE_ID.match(line.strip())
            if m:
                ids.append("sha256:" + m.group(1))

        async with mounted(transport, request, local=facts.node.transport == "local") as mounts:
            argv, env = build_argv(
                self._argv(facts), platform=platform, dockerfile=dockerfile or str(request.dockerfile),
                context=context or str(request.context), tag=tag,
                build_args=[*request.build_args, *extra_build_args], labels=[*request.labels, *extra_labels],
                target=request.target, no_cache=request.no_cache, pull=request.pull,
                env_build_args=request.env_build_args, mounts=mounts.flags)
            done = await run_build(transport, mounts.argv(argv), env, on_line, watch, stdin=mounts.stdin)
        if not done.ok:
            why = node_failed(done)
            if why is None and not await self.alive(transport, facts):
                why = f"podman does not answer any more: {done.last_line()}"
            if why is not None:
                raise InfrastructureError(transport.node, why)
            raise BuildFailed(f"build failed: {_own_message(done)}")
        if ids:
            return ids[-1]
        return (await self.inspect(transport, facts, tag)).id if tag else ""

    async def push(self, transport: Transport, facts: NodeFacts, ref: Reference, auth_config: dict | None = None,
                   on_line: LineCallback | None = None) -> str:
        """``podman push`` of ``ref`` with the credentials as the module doc says; the digest."""
        image = str(ref)
        digest: list[str] = []

        def watch(line: str) -> None:
            m = _DIGEST.match(line.strip())
            if m:
                digest.append(m.group(1))
            elif on_line and line.strip():
                on_line(line)

        done = await transport.run(["sh", "-c", PUSH_SCRIPT, "sh", image, f"docker://{image}", *self._argv(facts)],
                                   stdin=auth_file(ref.registry, auth_config), on_line=watch)
        if done.ok and digest:
            return digest[-1]
        why = exit_path_failure(done)
        if why is not None:
            raise InfrastructureError(transport.node, f"{why} during the push of {ref}")
        message = _own_message(done) if not done.ok else "podman reported no digest"
        # containers/image puts the registry's "<code>: <message>" after its own context on one
        # line ("writing blob: ...: unauthorized: authentication required"): each ": " may start it
        code, _ = registry_answer(message.replace(": ", ":\n"))
        _, status = registry_answer(message)
        known = refusal(code, status, ref.registry, f"the push of {ref}", message)
        if known is not None:
            raise known from None
        if not await self.alive(transport, facts):
            raise InfrastructureError(transport.node, f"podman gone during the push of {ref}: {message}")
        hint = ""
        if "server gave HTTP response to HTTPS client" in message:
            hint = (f"; if {ref.registry} speaks plain HTTP, list it in the node's registries.conf with "
                    "insecure = true (docs/nodes.md)")
        raise RegistryError(f"push of {ref} from node {transport.node} failed: {message}{hint}")

    async def export(self, transport: Transport, facts: NodeFacts, image: str) -> AsyncIterator[bytes]:
        """``image`` as ``podman save --format docker-archive`` writes it, in chunks: its standard
        output as bytes through :meth:`Transport.stream`, read at the consumer's pace. A
        transport without ``stream`` carries text lines only: then the archive travels
        base64-encoded (a third more bytes; decoding its ~13,000 lines per MB took ~16 ms of CPU
        per MB here) and is decoded here line by line; lines that are not base64 are podman's
        messages (the error when it fails); chunks wait in memory while the consumer is slower
        than the link."""
        if getattr(transport, "stream", None) is not None:
            try:
                async for piece in stream_output(transport, [*self._argv(facts), "save", "--format", "docker-archive",
                                                             "-q", image]):
                    yield piece
            except OutputFailed as exc:
                raise InfrastructureError(transport.node, f"cannot export {image} from podman: "
                                                          f"{exc.done.last_line()}") from None
            return
        queue: asyncio.Queue = asyncio.Queue()
        messages: list[str] = []
        pending = bytearray()

        def watch(line: str) -> None:
            line = line.strip()
            if line and _BASE64_LINE.match(line):
                try:
                    pending.extend(base64.b64decode(line))
                except binascii.Error:
                    messages.append(line)
                    return
                if len(pending) >= 1 << 20:
                    queue.put_nowait(bytes(pending))
                    pending.clear()
            elif line:
                messages.append(line)

        async def save() -> Completed:
            try:
                return await transport.run(["sh", "-c", SAVE_SCRIPT, "sh", image, *self._argv(facts)], on_line=watch)
            finally:
                if pending:
                    queue.put_nowait(bytes(pending))
                    pending.clear()
                queue.put_nowait(None)

        running = asyncio.ensure_future(save())
        try:
            while True:
                chunk = await queue.get()
                if chunk is None:
                    break
                yield chunk
            done = await running
            if not done.ok:
                raise InfrastructureError(transport.node, f"cannot export {image} from podman: "
                                                          f"{messages[-1] if messages else done.last_line()}")
        finally:
            if not running.done():
                running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    async def inspect(self, transport: Transport, facts: NodeFacts, image: str) -> ImageInfo:
        """``podman image inspect``: the id (``sha256:...``) and platform. Raises
        InfrastructureError when podman cannot say (the image is not in the store)."""
        done, lines = await collect(transport, [*self._argv(facts), "image", "inspect", image], timeout=60)
        try:
            doc = json.loads("\n".join(line for line in lines if not _LOG_LINE.match(line)))[0]
        except (ValueError, IndexError, KeyError):
            raise InfrastructureError(transport.node, f"podman cannot inspect {image}: {done.last_line()}") from None
        ident = str(doc.get("Id", ""))
        return ImageInfo(ident if ident.startswith("sha256:") else f"sha256:{ident}", doc.get("Os", ""),
                         doc.get("Architecture", ""), doc.get("Variant") or "")

    async def remove(self, transport: Transport, facts: NodeFacts, image: str) -> bool:
        """``podman rmi``; False when the image was not there."""
        done = await transport.run([*self._argv(facts), "rmi", image], timeout=120)
        return done.ok

    async def alive(self, transport: Transport, facts: NodeFacts | None = None) -> bool:
        """Whether ``podman info`` still answers on the node (its storage opens); never raises."""
        argv = self._argv(facts) if facts is not None else ("podman",)
        try:
            done = await transport.run([*argv, "info", "--format", "{{.Host.Arch}}"], timeout=60)
        except Exception:
            return False
        return done.ok


PODMAN = PodmanEngine()
