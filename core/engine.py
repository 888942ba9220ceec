"""The Docker engine adapter (``engine = "docker"``, the default; see :mod:`archfleet.engines` for
the interface every adapter has): dockerd, rootful or rootless (a ``docker_host`` to a rootless
daemon's socket; the probe reads ``name=rootless`` in ``docker info``'s security options).

Builds go through an engine CLI because docker-py cannot drive BuildKit (docker/docker-py#2230):
``docker buildx build`` where the buildx plugin exists, else ``DOCKER_BUILDKIT=1 docker build``
on a client that still has BuildKit built in (Docker < 23). The probe asks the CLI too
(``--version``, ``docker info``: the daemon the CLI builds on). Engine API work (inspect,
export, ping, push with ``auth_config``) goes through docker-py, in a thread.

How a failed build is classified (:func:`build`): the node failed (:class:`InfrastructureError`,
the platform is re-planned on another node) or the build failed (:class:`BuildFailed`, the same
Dockerfile would fail on any node: reported, never retried). The decision comes from how the
engine CLI ended and from asking the engine, **never from the build's own output**: with
``--progress plain`` BuildKit prefixes every line it streams with ``#N `` (the step number),
and what a RUN step prints ("Connection refused", "no space left on device", ...) is the
user's text, whatever it says. In order:

1. The engine CLI could not be started (exit 126/127 from the transport: not found, not
   executable) or was killed by a signal (a negative exit status: the OOM killer, a reboot;
   over SSH, status 137 with the transport's own ``killed by signal NAME`` line last): the node
   failed (:func:`archfleet.engines.exit_path_failure`, shared with the podman adapter).
2. The engine does not answer ``ping()`` (``GET /_ping``, the Engine API's liveness check):
   the engine is gone, the node failed.
3. Otherwise only the CLI's own error line is read: the last non-empty line that is not
   BuildKit progress output (Docker 20.10: ``executor failed running [...]: exit code: N`` or
   ``failed to solve with frontend ...``; buildx: ``ERROR: failed to solve: ...``):

   - a process of the build exited non-zero (``executor failed running [CMD]: exit code: N``
     in Docker 20.10's BuildKit, ``process "CMD" did not complete successfully: exit code: N``
     in BuildKit >= 0.9, docker/cli#1291): the build failed, whatever CMD or its output say.
     This includes "exec format error": Docker 20.10 reports a program the node cannot run
     (no QEMU handler, an arm64 CPU without AArch32) as that step's output and exit code 1,
     indistinguishable from a program printing it; keeping such options out of the plan is
     the offers' job (a strategy offers a node only for platforms it runs or emulates);
   - an error whose *last* component is the errno text of a resource of the node itself
     (ENOSPC "no space left on device", EDQUOT "disk quota exceeded", ENOMEM "cannot
     allocate memory", EROFS "read-only file system", EIO "input/output error", EMFILE "too
     many open files"; Go wraps errors as ``op path: errno text``, so the errno text ends the
     line, and a file name or command quoted earlier in it cannot trigger this): the node
     failed;
   - anything else (a Dockerfile syntax error, a file COPY cannot find, a base image that
     cannot be pulled): the build failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from typing import AsyncIterator, Collection, Mapping, Sequence

import attrs

from . import dockerlib
from .engines import (build_flags, ENV_CLI, EngineCLI, ImageInfo, Probed, exit_path_failure, last_own_line,  # noqa: F401
                      local_candidates, resource_failure, run_build)
from .errors import BuildFailed, InfrastructureError, RegistryError
from .model import BuildRequest, Capabilities, CliVersion, EngineInfo, NodeFacts, NodeSpec
from .platforms import Platform
from .reference import Reference
from .registry import credential_name, load_credentials, refusal, registry_answer
from .transport import Completed, LineCallback, OutputFailed, Transport, stream_output

_VERSION = re.compile(r"version\s+v?(\d+)\.(\d+)", re.I)
_IMAGE_ID = re.compile(r"writing image (sha256:[0-9a-f]{64})")
_PROGRESS = re.compile(r"^#\d+ ")  # BuildKit's plain progress: the build's own output, never classified
# a build process exited non-zero: "executor failed running [CMD]: exit code: N" (Docker 20.10;
# CMD may span lines, so only its end is matched) or "process "CMD" did not complete
# successfully: exit code: N" (BuildKit >= 0.9)
_PROCESS_EXIT = re.compile(r"(\]|did not complete successfully): exit code: \d+\s*$")
# One `docker info` answers what the CLI is and what the daemon is. Its first line is the CLI's
# own part (`ClientInfo`, Docker >= 19.03: its plugins, each found the way the CLI runs it, and
# from Docker 24 its own version), printed whether or not a daemon answers; its second is the
# server's version and whether it is rootless, or why it cannot say (Docker 20.10's client exits
# 0 with ServerErrors when the daemon does not answer; newer ones exit 1 and print the error).
INFO_FORMAT = ('client={{json .ClientInfo}}\n'
               '{{if .ServerErrors}}error: {{join .ServerErrors "; "}}'
               '{{else}}version={{.ServerVersion}} security={{join .SecurityOptions " "}}{{end}}')


def _version_argv(cli: str) -> tuple[str, ...]:
    return (cli, "--version")


def _info_argv(cli: str) -> tuple[str, ...]:
    return (cli, "info", "--format", INFO_FORMAT)


def probe_argvs(candidates: Sequence[str]) -> list[list[str]]:
    """The commands that find the CLI and ask its daemon (:func:`choose_cli`): each candidate's
    ``--version`` and ``info --format INFO_FORMAT``; two per candidate, all independent."""
    return [list(argv) for cli in candidates for argv in (_version_argv(cli), _info_argv(cli))]


def buildx_plugin(info: Completed) -> str | None:
    """The version of the buildx plugin the CLI lists in ``docker info``'s ``ClientInfo.Plugins``
    (the CLI found it and ran its ``docker-cli-plugin-metadata``; a plugin listed with ``Err``
    is broken and not counted), or None when it lists none."""
    for line in info.tail:
        if not line.startswith("client="):
            continue
        try:
            client = json.loads(line[len("client="):])
        except ValueError:
            return None
        for plugin in (client.get("Plugins") or ()) if isinstance(client, dict) else ():
            if isinstance(plugin, dict) and plugin.get("Name") == "buildx" and not plugin.get("Err"):
                return str(plugin.get("Version") or "")
        return None
    return None


async def ask_clis(transport: Transport, candidates: Sequence[str],
                   remembered: Mapping[str, CliVersion] | None = None,
                   infos: Mapping[str, EngineInfo] | None = None) -> dict[tuple, Completed]:
    """Every :func:`probe_argvs` command at once (they are cheap and independent), by argv;
    a candidate's ``--version`` that ``remembered`` holds (path -> what the same file printed,
    :mod:`archfleet.cliversions`) and its ``info`` that ``infos`` holds (path -> what it printed
    with everything it depends on as now, :mod:`archfleet.engineinfos`) are answered from
    there, not run."""
    known = {_version_argv(cli): Completed(_version_argv(cli), 0, v.tail) for cli, v in (remembered or {}).items()}
    known.update({_info_argv(cli): Completed(_info_argv(cli), 0, i.tail) for cli, i in (infos or {}).items()})
    argvs = [tuple(argv) for argv in probe_argvs(candidates) if tuple(argv) not in known]
    done = await asyncio.gather(*(transport.run(list(argv), timeout=30) for argv in argvs))
    return {**known, **dict(zip(argvs, done))}


def _local_files(candidates: Sequence[str], docker_host: str | None) -> "_Remembered":
    """For candidates on this machine given by absolute path: their remembered ``--version``
    answers (:func:`archfleet.cliversions.recall`) and ``info`` answers
    (:func:`archfleet.engineinfos.recall`), and the identities now that new answers are kept
    under. Blocking (a small file each, stats, one ``GET /_ping`` to the daemon's socket)."""
    from . import cliversions, engineinfos

    local = [cli for cli in candidates if os.path.isabs(cli)]
    identities = {cli: cliversions.identity(cli) for cli in local}
    found = {cli: cliversions.recall(cli, now) for cli, now in identities.items()}
    daemon = engineinfos.daemon_identity(docker_host) if local else None  # the same for every CLI
    info_ids = {cli: engineinfos.with_program(identities[cli], daemon) for cli in local}
    infos = {cli: engineinfos.recall(cli, now) for cli, now in info_ids.items()}
    return _Remembered({cli: v for cli, v in found.items() if v is not None}, identities,
                       {cli: i for cli, i in infos.items() if i is not None}, info_ids)


@attrs.frozen
class _Remembered:
    """:func:`_local_files`' answer: remembered answers by CLI path, and the identities now."""

    versions: Mapping[str, CliVersion] = attrs.field(factory=dict)
    identities: Mapping[str, tuple | None] = attrs.field(factory=dict)
    infos: Mapping[str, EngineInfo] = attrs.field(factory=dict)
    info_identities: Mapping[str, list | None] = attrs.field(factory=dict)


def _new_infos(candidates: Sequence[str], answers: Mapping[tuple, Completed], seen: _Remembered
               ) -> tuple[EngineInfo, ...]:
    """The ``info`` answers just asked of CLIs on this machine whose dependencies were gathered
    before asking, that named a daemon version without an error, for the learn stage to keep."""
    new = []
    for cli in candidates:
        answer = answers.get(_info_argv(cli))
        ident = seen.info_identities.get(cli)
        if cli in seen.infos or ident is None or answer is None or not answer.ok:
            continue
        version, _, error = parse_info(answer.tail)
        if version is not None and error is None:
            new.append(EngineInfo(cli, json.dumps(ident), answer.tail))
    return tuple(new)


def _new_versions(candidates: Sequence[str], answers: Mapping[tuple, Completed],
                  remembered: Mapping[str, CliVersion], identities: Mapping[str, tuple | None]) -> tuple[CliVersion, ...]:
    """The ``--version`` answers just asked, of CLIs whose file was stat'ed before asking and
    that answered 0, for the learn stage to keep."""
    new = []
    for cli in candidates:
        answer = answers.get(_version_argv(cli))
        ident = identities.get(cli)
        if cli not in remembered and ident is not None and answer is not None and answer.ok:
            new.append(CliVersion(cli, ident, answer.tail))
    return tuple(new)


def choose_cli(candidates: Sequence[str], answers: dict[tuple, Completed]
               ) -> tuple[EngineCLI | None, list[str], Completed | None]:
    """From the :func:`probe_argvs` answers: the first candidate, in order, that can build with
    BuildKit, why each one before it could not, and its ``info`` answer (the daemon's part, for
    :func:`parse_info`).

    A candidate builds with ``buildx build`` when its ``docker info`` lists a working buildx
    plugin, else with ``DOCKER_BUILDKIT=1 docker build`` when ``--version`` says a Docker client
    older than 23 (BuildKit built in; from 23 on, ``docker build`` needs buildx). A program that
    merely exits 0 (a wrong --engine-cli) lists no plugin and prints no version: refused, with
    the reason."""
    reasons: list[str] = []
    for cli in candidates:
        ver = answers[_version_argv(cli)]
        info = answers[_info_argv(cli)]
        if not ver.ok:
            line = ver.last_line()  # a transport's own "CLI: command not found" names it already
            reasons.append(line if line.startswith(f"{cli}:") else f"{cli}: {line}")
            continue
        buildx = buildx_plugin(info)
        if buildx is not None:
            return EngineCLI((cli, "buildx"), "buildx", f"buildx {buildx}".strip()), reasons, info
        m = _VERSION.search(" ".join(ver.tail))
        if m is None:
            printed = next((l.strip() for l in reversed(ver.tail) if l.strip()), "nothing")
            reasons.append(f"{cli}: not a docker CLI (its --version printed {printed!r})")
            continue
        if int(m.group(1)) < 23:
            return EngineCLI((cli,), "buildkit", f"{m.group(1)}.{m.group(2)}"), reasons, info
        reasons.append(f"{cli}: version {m.group(1)}.{m.group(2)} has no buildx plugin "
                       "and no built-in BuildKit")
    return None, reasons, None


def build_argv(cli: Sequence[str], mode: str, *, platform: Platform, dockerfile: str, context: str,
               tag: str, build_args: Sequence[tuple[str, str]] = (), labels: Sequence[tuple[str, str]] = (),
               target: str | None = None, no_cache: bool = False, pull: bool = True,
               env_build_args: Collection[str] = (), mounts: Sequence[str] = (),
               cache: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The argv, and the environment to add to the engine CLI's, that build ``platform`` into the
    engine as ``tag``. ``mounts``: the ``--secret``/``--ssh`` words of the build
    (:func:`archfleet.secrets.mounted`: paths and descriptors, never a value); ``cache``: its
    ``--cache-from``/``--cache-to`` words (:func:`archfleet.buildcache.cache_argv`).

    Tag, build args (a bare ``--build-arg NAME`` keeps its value out of argv), labels and
    target as every engine CLI takes them: :func:`archfleet.engines.build_flags`.
    """
    if mode == "buildx":
        argv = [*cli, "build", "--load"]
        env: dict[str, str] = {}
    else:
        argv = [*cli, "build"]
        env = {"DOCKER_BUILDKIT": "1"}
    argv += ["--progress", "plain", "--platform", str(platform), "-f", dockerfile]
    flags, flag_env = build_flags(tag=tag, build_args=build_args, labels=labels, target=target,
                                  env_build_args=env_build_args)
    argv += flags
    env.update(flag_env)
    argv += list(mounts)
    argv += list(cache)
    if no_cache:
        argv.append("--no-cache")
    if pull:
        # Docker 20.10's image store holds one platform per tag, and its BuildKit takes a 386
        # base it finds there for an amd64 build (and writes amd64 into the config): resolving
        # bases in the registry avoids building on the wrong base.
        argv.append("--pull")
    argv.append(context)
    return argv, env


def cli_error_line(done: Completed) -> str | None:
    """The engine CLI's own error line: the last non-empty line of its output that is not
    BuildKit progress output (``#N ...``), or None when there is none."""
    return last_own_line(done, _PROGRESS)


def node_failed(done: Completed) -> str | None:
    """Why the failed build ``done`` is the node's fault (rules 1 and 3 of the module
    docstring, without the ping), or None when the build's."""
    why = exit_path_failure(done)
    if why is not None:
        return why
    line = cli_error_line(done)
    if line is None or _PROCESS_EXIT.search(line):
        return None
    return resource_failure(line)


def engine_gone(done: Completed) -> bool:
    """Whether ``done`` failed because of the node rather than the build, from how the CLI ended
    (see the module docstring). The engine's ``ping()`` is the other half: :func:`build`."""
    return node_failed(done) is not None


async def build(transport: Transport, cli: EngineCLI, *, platform: Platform, request: BuildRequest, tag: str,
                context: str | None = None, dockerfile: str | None = None,
                extra_build_args: Sequence[tuple[str, str]] = (), extra_labels: Sequence[tuple[str, str]] = (),
                on_line: LineCallback | None = None, local: bool = False, warm: str | None = None) -> str:
    """Build ``platform`` on the node into its engine as ``tag``; return the image id.

    The build's secrets and ssh reach the CLI as :func:`archfleet.secrets.mounted` says (``local``:
    the node is this machine, whose files the CLI reads itself); its caches as
    :func:`archfleet.buildcache.cache_argv` says (``warm``: another node's child of this
    platform, read as a cache source). Raises :class:`InfrastructureError` when the node failed
    and :class:`BuildFailed` when the build did (the rules are in the module docstring). An
    exception raised by ``on_line`` stops the build (the engine CLI is killed through the
    transport's cancellation) and is raised here.
    """
    from .buildcache import cache_argv
    from .secrets import mounted

    cache, cache_args = cache_argv(cli.mode, request, platform, warm)
    image_id: list[str] = []

    def watch(line: str) -> None:
        m = _IMAGE_ID.search(line)
        if m:
            image_id.append(m.group(1))

    async with mounted(transport, request, local=local) as mounts:
        argv, env = build_argv(
            cli.argv, cli.mode, platform=platform,
            dockerfile=dockerfile or str(request.dockerfile), context=context or str(request.context), tag=tag,
            build_args=[*request.build_args, *extra_build_args, *cache_args],
            labels=[*request.labels, *extra_labels], target=request.target, no_cache=request.no_cache,
            pull=request.pull, env_build_args=request.env_build_args, mounts=mounts.flags, cache=cache,
        )
        done = await run_build(transport, mounts.argv(argv), env, on_line, watch, stdin=mounts.stdin)
    if not done.ok:
        why = node_failed(done)
        if why is None and not await ping(transport):
            why = f"engine gone (it does not answer ping): {done.last_line()}"
        if why is not None:
            raise InfrastructureError(transport.node, why)
        raise BuildFailed(f"build failed: {_build_error(done)}")
    if image_id or not tag:
        return image_id[-1] if image_id else ""
    return await asyncio.to_thread(lambda: transport.docker_client().images.get(tag).id)


def _build_error(done: Completed) -> str:
    """The line that says why the build failed: the CLI's own error line (``ERROR: `` dropped),
    else BuildKit's last ``ERROR`` line, else the last line."""
    line = cli_error_line(done)
    if line:
        return re.sub(r"^ERROR:\s*", "", line)
    for line in reversed(done.tail):
        line = line.strip()
        if "ERROR" in line or "did not complete successfully" in line:
            return re.sub(r"^#\d+\s+", "", line)
    return done.last_line()


async def ping(transport: Transport) -> bool:
    """Whether the node's engine answers ``GET /_ping`` (in a thread; never raises)."""
    def _ping() -> bool:
        try:
            return bool(transport.docker_client().ping())
        except Exception:
            return False

    return await asyncio.to_thread(_ping)


async def push(transport: Transport, ref: Reference, auth_config: dict | None = None,
               on_line: LineCallback | None = None) -> str:
    """Push ``ref`` (a tag in the node's engine) through the Engine API; return the manifest digest.

    ``auth_config`` travels in the request header only: credentials never touch the node's disk.

    A failure is given its type here, at the adapter boundary (downstream code never reads the
    text), from what the Engine API relays:

    - the registry's answer: its distribution error code, which dockerd writes as
      ``<code>: <message>`` (``denied: ...``, ``toomanyrequests: ...``, ``manifest invalid: ...``),
      ``errorDetail.code`` when it is an HTTP status, or the status in ``received unexpected
      HTTP status: NNN`` (:func:`archfleet.registry.registry_answer`). ``denied``/``unauthorized``
      /401/403 and ``toomanyrequests``/429 (rate limits, quotas) are :class:`RegistryRefused`
      (exit 3, with the ``docker login`` to run); any other code or status is
      :class:`RegistryError` (exit 1). The registry answers every node alike: not retried.
    - the connection to the engine dropped, or the engine no longer answers ``ping()``:
      :class:`InfrastructureError` (the node failed: the platform is built elsewhere).
    - anything else while the engine still answers: :class:`RegistryError` naming the node (the
      push failed between the engine and the registry; not retried on another node).
    """
    repository = ref.name if ref.registry != "docker.io" else ref.repository
    loop = asyncio.get_running_loop()

    def _push() -> str:
        docker = dockerlib.module()
        client = transport.docker_client()
        digest = None
        kwargs = {"auth_config": auth_config} if auth_config else {}
        try:
            for event in client.api.push(repository, tag=ref.tag, stream=True, decode=True, **kwargs):
                if "error" in event or "errorDetail" in event:
                    detail = event.get("errorDetail") or {}
                    code = detail.get("code") if isinstance(detail, dict) else None
                    message = event.get("error") or (detail.get("message") if isinstance(detail, dict) else None)
                    raise _PushError(str(message or detail), code if isinstance(code, int) else None)
                aux = event.get("aux") or {}
                if aux.get("Digest"):
                    digest = aux["Digest"]
                if on_line and event.get("status") not in (None, "Preparing", "Waiting") and not event.get("progressDetail"):
                    loop.call_soon_threadsafe(on_line, f"{event.get('id', '')} {event['status']}".strip())
        except docker.errors.APIError as exc:  # the engine answered the request with an error status
            raise _PushError(str(exc.explanation or exc), None) from None
        except (ConnectionError, OSError, docker.errors.DockerException) as exc:
            raise _Dropped(str(exc) or type(exc).__name__) from None
        if not digest:
            raise _PushError("the engine reported no digest", None)
        return digest

    try:
        return await asyncio.to_thread(_push)
    except _Dropped as exc:
        raise InfrastructureError(transport.node, f"engine connection lost during the push of {ref}: {exc}") from None
    except _PushError as exc:
        message, status = str(exc), exc.status
        code, in_text = registry_answer(message)
        if status is None or not 100 <= status <= 599:
            status = in_text
        known = refusal(code, status, ref.registry, f"the push of {ref}", message)
        if known is not None:
            raise known from None
        if not await ping(transport):
            raise InfrastructureError(transport.node, f"engine gone during the push of {ref}: {message}") from None
        raise RegistryError(f"push of {ref} from node {transport.node} failed: {message}") from None


EXPORT_CHUNK = 1024 * 1024  # bytes per piece of an export
_EXPORT_AHEAD = 4  # pieces read ahead of the consumer, at most
_EXPORT_DRAIN = 1.5  # seconds an abandoned export keeps reading, discarding, before it closes


def _drain(stream) -> None:
    """Read ``stream`` (an abandoned export) to its end, discarding it, for at most
    :data:`_EXPORT_DRAIN` seconds, so that the engine's answer ends before its socket closes.
    Closed mid-answer, a socket that an SSH node's engine forward still writes into made
    asyncio's transports (asyncssh's forward, CPython 3.11) log dozens of "socket.send() raised
    exception." lines and connection_lost tracebacks after archfleet's one error line."""
    deadline = time.monotonic() + _EXPORT_DRAIN
    try:
        for _ in stream:
            if time.monotonic() > deadline:
                return
    except Exception:  # the connection dropped: nothing left to drain
        return


async def export(transport: Transport, image_id: str) -> AsyncIterator[bytes]:
    """The image ``image_id`` of the node's engine as an image archive, streamed: ``docker
    save`` through the Engine API (``GET /images/{id}/get``, docker-py's ``api.get_image``) over
    the node's engine connection (:meth:`Transport.docker_client`; an SSH node's is forwarded),
    in pieces of :data:`EXPORT_CHUNK` bytes, never whole in memory: the engine is read at most
    :data:`_EXPORT_AHEAD` pieces ahead of the consumer. Docker 20.10 writes a docker-archive
    (``manifest.json``, the config, ``<dir>/layer.tar``), Docker 25+ an OCI layout as well;
    :mod:`archfleet.publish` reads both.

    The docker adapter's export for a transport without :meth:`Transport.stream` (a plugin's);
    with it, :func:`cli_export` (the same archive from the node's CLI, no docker-py). Closing
    the iterator early stops the read. Raises
    :class:`InfrastructureError` when the engine cannot be reached, drops the connection, or no
    longer has the image (pruned since it was built): the platform can be built elsewhere."""
    import itertools
    import threading

    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(_EXPORT_AHEAD)
    stop = threading.Event()
    end = object()

    def hand(item) -> bool:
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, item)
            return True
        except RuntimeError:  # the loop is closed: nobody is reading any more
            return False

    def pump() -> None:
        docker = dockerlib.module()
        try:
            stream = transport.docker_client().api.get_image(image_id, chunk_size=EXPORT_CHUNK)
            # the engine answers in HTTP chunks of ~32 KiB whatever chunk_size asks; handed over
            # one by one, a 30 MB export took ~1000 round trips through the event loop and the
            # reader waited on them for 0.19 s (twice the read itself): gather EXPORT_CHUNK first
            gathered = bytearray()
            for piece in itertools.chain(stream, [None]):
                if stop.is_set():  # the reader is gone
                    _drain(stream)
                    return
                if piece is not None:
                    gathered += piece
                    if len(gathered) < EXPORT_CHUNK:
                        continue
                elif not gathered:
                    break
                while not room.acquire(timeout=0.2):
                    if stop.is_set():
                        _drain(stream)
                        return
                if stop.is_set() or not hand(bytes(gathered)):
                    _drain(stream)
                    return
                gathered.clear()
            hand(end)
        except docker.errors.NotFound:
            hand(InfrastructureError(transport.node, f"the engine no longer has image {image_id} (removed "
                                                     "since it was built?)"))
        except docker.errors.APIError as exc:
            hand(InfrastructureError(transport.node, f"the engine refused to export {image_id}: "
                                                     f"{exc.explanation or exc}"))
        except Exception as exc:  # the connection to the engine dropped
            hand(InfrastructureError(transport.node, f"engine connection lost during the export of {image_id}: "
                                                     f"{str(exc) or type(exc).__name__}"))

    worker = loop.run_in_executor(None, pump)
    try:
        while True:
            item = await pieces.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            room.release()
            yield item
    finally:
        stop.set()
        if not worker.done():  # let the pump drain and stop before the caller ends the session
            with contextlib.suppress(BaseException):
                await asyncio.wait({worker}, timeout=_EXPORT_DRAIN + 1.0)
        if worker.done() and not worker.cancelled():
            worker.exception()  # mark it seen; pump reports through the queue


async def cli_export(transport: Transport, cli: Sequence[str], image_id: str) -> AsyncIterator[bytes]:
    """The image ``image_id`` as ``docker save`` by the node's CLI (``cli``) writes it, streamed
    through :meth:`Transport.stream` (:func:`archfleet.transport.stream_output`): what
    :func:`export` reads through the Engine API, without docker-py (its import was ~40-70 ms
    of CPU in every build, issue 17) and without the node's engine socket forwarded. Closing
    the iterator early kills the save. Raises :class:`InfrastructureError` when the engine no
    longer has the image, refuses, or the node is lost: the platform can be built elsewhere."""
    try:
        async for piece in stream_output(transport, [*cli, "save", image_id]):
            yield piece
    except OutputFailed as exc:
        line = exc.done.last_line()
        if "reference does not exist" in line or "No such image" in line or "no such file" in line:
            raise InfrastructureError(transport.node, f"the engine no longer has image {image_id} (removed "
                                                      "since it was built?)") from None
        raise InfrastructureError(transport.node, f"the engine refused to export {image_id}: {line}") from None


class _Dropped(Exception):
    """The connection to the engine failed during the push."""


class _PushError(Exception):
    """The engine reported the push failed: its message and ``errorDetail.code``, if any."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


def auth_config_for(registry: str) -> dict | None:
    """Credentials for the Engine API's ``X-Registry-Auth`` header, from the Docker config, for
    ``registry`` as in a reference (``docker.io`` for Docker Hub; its API host works too).
    ``serveraddress`` is what the docker CLI sends: ``https://index.docker.io/v1/`` for Docker
    Hub, else the registry. Blocking (it may run a credential helper)."""
    creds = load_credentials(registry)
    if not creds:
        return None
    name = credential_name(registry)
    auth = dockerlib.module().auth
    server = auth.INDEX_URL if name == auth.INDEX_NAME else name
    if "identitytoken" in creds:
        return {"identitytoken": creds["identitytoken"], "serveraddress": server}
    return {"username": creds.get("username", ""), "password": creds.get("password", ""), "serveraddress": server}



# -- the rest of the adapter: facts, export, inspect, cleanup ------------------------------------

def capabilities(mode: str, server_version: str | None) -> Capabilities:
    """What a Docker node can do, from how its CLI builds and the daemon's version (no command
    needed: these are fixed by the CLI and BuildKit versions):

    - ``buildkit`` (a client with BuildKit built in, Docker < 23, ``DOCKER_BUILDKIT=1 docker
      build``): ``--secret``, ``--ssh`` and ``--output`` (its ``build --help`` lists them), no
      ``--cache-to`` (only an inline cache, in the image's config: :mod:`archfleet.buildcache`
      degrades a ``mode=min`` registry cache to it, and a ``mode=max`` one needs buildx);
    - ``buildx``: all four;
    - here-documents need the daemon's BuildKit to carry the Dockerfile 1.4 frontend: Docker >=
      23 (BuildKit 0.11). Docker 20.10's BuildKit refuses them ("unknown instruction", seen here);
    - a ``# syntax=`` directive works with any BuildKit (it pulls that frontend image);
    - a COPY wildcard below a symbolic link of the context is cached by what it copies from
      BuildKit 0.10 on (moby/buildkit#2300), so from Docker 23; Docker 20.10's BuildKit built
      ``COPY link/* /d/`` from another context's files here."""
    major = None
    if server_version:
        m = re.match(r"\s*v?(\d+)\.", server_version)
        major = int(m.group(1)) if m else None
    return Capabilities(secrets=True, ssh=True, cache_export=mode == "buildx", outputs=True,
                        heredocs=major is not None and major >= 23, frontends=True,
                        link_wildcards=major is not None and major >= 23)


def parse_info(lines: Sequence[str]) -> tuple[str | None, bool, str | None]:
    """(server version, rootless, error) from the output of ``docker info --format INFO_FORMAT``."""
    for line in lines:
        line = line.strip()
        if line.startswith("version=") and not line.startswith("version= "):
            version, _, rest = line[len("version="):].partition(" security=")
            return version.strip() or None, "name=rootless" in rest.split(), None
        if line.startswith("error: "):
            return None, False, line[len("error: "):]
    return None, False, next((l.strip() for l in reversed(lines) if l.strip() and not l.startswith("client=")),
                             "no answer")


def _api_export_here(transport: Transport, facts: NodeFacts) -> bool:
    if facts.node.transport != "local" or not dockerlib.loaded():
        return False
    from . import engineinfos

    return engineinfos.unix_daemon(getattr(transport, "docker_host", None) or facts.node.docker_host) is not None


class DockerEngine:
    """The ``docker`` adapter (:class:`archfleet.engines.Engine`): this module's functions, with
    the CLI the probe chose taken from the node's facts."""

    kind = "docker"
    uses_engine_api = True  # pushes, inspect, export and ping go through the Engine API

    def candidates(self, engine_cli: str | None, local: bool) -> list[str]:
        """``engine_cli`` alone, else on this machine every ``docker`` on PATH then
        ``/usr/bin/docker``; on a node ``docker`` then ``/usr/bin/docker``."""
        if local:
            return local_candidates(engine_cli)
        return [engine_cli] if engine_cli else ["docker", "/usr/bin/docker"]

    def probe_argvs(self, candidates: Sequence[str]) -> list[list[str]]:
        """The commands :meth:`probe` runs, for the probe to run them at once in one session
        (:func:`archfleet.probe.run_batch`): :func:`probe_argvs`."""
        return probe_argvs(candidates)

    async def probe(self, transport: Transport, node: NodeSpec, candidates: Sequence[str]) -> Probed:
        """The CLI, the daemon's version and whether it is rootless, from each candidate's
        ``--version`` and ``docker info`` (:func:`choose_cli`, :func:`parse_info`): the daemon
        asked is the one the chosen CLI builds on. A daemon that does not answer: ``answered``
        False."""
        seen = _Remembered()
        if node.transport == "local":  # this machine's files: their answers are kept by identity
            # here, not in a thread (~25 syscalls, <1 ms): a thread waited for the GIL at each of
            # them while this thread imported (20-40 ms before the CLIs started, issue 17)
            seen = _local_files(candidates, node.docker_host)
        answers = await ask_clis(transport, candidates, seen.versions, seen.infos)
        versions = _new_versions(candidates, answers, seen.versions, seen.identities)
        infos = _new_infos(candidates, answers, seen)
        cli, reasons, info = choose_cli(candidates, answers)
        if cli is None or info is None:
            # the daemon's version as any candidate's info said it (a CLI that cannot build may
            # still ask the daemon), for ls and doctor
            version = next((v for c in candidates for v in [parse_info(answers[_info_argv(c)].tail)[0]] if v), None)
            return Probed(True, version=version, versions=versions, infos=infos,
                          error="no engine CLI with BuildKit: " + "; ".join(reasons or ["no docker CLI found"]))
        version, rootless, error = parse_info(info.tail)
        if version is None and error is None:
            error = info.last_line()
        if error is not None and node.transport == "local":
            return Probed(False, cli=cli, error=f"no Docker engine answers ({error})",
                          fix="start dockerd, or point DOCKER_HOST or the CLI's docker context at one "
                              "(docker_host in nodes.toml)")
        if error is not None:
            return Probed(False, cli=cli, error=f"engine not answering on the node: {error}",
                          fix=f"start dockerd on the node, or fix docker_host at {node.source}")
        return Probed(True, cli=cli, version=version, rootless=rootless, capabilities=capabilities(cli.mode, version),
                      versions=versions, infos=infos)

    @staticmethod
    def _cli(facts: NodeFacts) -> EngineCLI:
        return EngineCLI(tuple(facts.engine_cli), facts.builder or "buildkit")

    async def build(self, transport: Transport, facts: NodeFacts, **kw) -> str:
        """:func:`build` with the facts' CLI (``local``: the facts' node is this machine)."""
        kw.setdefault("local", facts.node.transport == "local")
        return await build(transport, self._cli(facts), **kw)

    async def push(self, transport: Transport, facts: NodeFacts, ref: Reference, auth_config: dict | None = None,
                   on_line: LineCallback | None = None) -> str:
        """:func:`push` through the Engine API (credentials in its request header only)."""
        return await push(transport, ref, auth_config, on_line=on_line)

    def export(self, transport: Transport, facts: NodeFacts, image: str) -> AsyncIterator[bytes]:
        """``docker save`` by the node's CLI (:func:`cli_export`) when the transport streams a
        command's output (:meth:`Transport.stream`), else through the Engine API (:func:`export`).
        Also through the Engine API on this machine when docker-py is loaded already
        (:func:`archfleet.dockerlib.loaded`: in ``archfleet server``) and the CLI's daemon is a
        Unix socket named without a CLI context, the one docker-py reaches
        (:func:`archfleet.engineinfos.unix_daemon`): the same archive without starting the CLI
        (tiny image: 68-75 ms against 95-106 ms, issue 17)."""
        if getattr(transport, "stream", None) is None or _api_export_here(transport, facts):
            return export(transport, image)
        return cli_export(transport, tuple(facts.engine_cli) or ("docker",), image)

    async def inspect(self, transport: Transport, facts: NodeFacts, image: str) -> ImageInfo:
        """The image's id and platform from the Engine API (``GET /images/NAME/json``)."""
        attrs_ = await asyncio.to_thread(lambda: transport.docker_client().api.inspect_image(image))
        return ImageInfo(attrs_["Id"], attrs_.get("Os", ""), attrs_.get("Architecture", ""),
                         attrs_.get("Variant") or "")

    async def remove(self, transport: Transport, facts: NodeFacts, image: str) -> bool:
        """``DELETE /images/NAME`` (untag; layers another image uses stay); False when absent."""
        def _remove() -> bool:
            docker = dockerlib.module()
            try:
                transport.docker_client().api.remove_image(image)
            except docker.errors.ImageNotFound:
                return False
            return True

        return await asyncio.to_thread(_remove)

    async def alive(self, transport: Transport, facts: NodeFacts | None = None) -> bool:
        """:func:`ping`."""
        return await ping(transport)


DOCKER = DockerEngine()
