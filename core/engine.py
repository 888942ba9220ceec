"""The Docker engine adapter.

Builds go through an engine CLI because docker-py cannot drive BuildKit (docker/docker-py#2230):
``docker buildx build`` where the buildx plugin exists, else ``DOCKER_BUILDKIT=1 docker build``
on a client that still has BuildKit built in (Docker < 23). Engine API work (info, inspect,
push with ``auth_config``) goes through docker-py, in a thread.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Collection, Sequence

import attrs

from .buildargs import env_passable
from .errors import BuildFailed, EnvironmentProblem, InfrastructureError
from .model import BuildRequest
from .platforms import Platform
from .reference import Reference
from .transport import Completed, LineCallback, Transport

ENV_CLI = "ARCHFLEET_ENGINE_CLI"
_VERSION = re.compile(r"version\s+v?(\d+)\.(\d+)", re.I)
_IMAGE_ID = re.compile(r"writing image (sha256:[0-9a-f]{64})")
_ENGINE_GONE = ("Cannot connect to the Docker daemon", "connection refused", "error during connect",
                "Is the docker daemon running", "broken pipe", "connection reset by peer")


@attrs.frozen
class EngineCLI:
    """An engine CLI that can drive BuildKit: ``argv`` prefix and how (``buildx``|``buildkit``)."""

    argv: tuple[str, ...]
    mode: str
    version: str = ""


def local_candidates(preferred: str | None = None) -> list[str]:
    """CLIs to try on this machine: the named one only, else every ``docker`` on PATH, then
    ``/usr/bin/docker`` (Debian's 20.10 client, which has BuildKit built in)."""
    preferred = preferred or os.environ.get(ENV_CLI)
    if preferred:
        return [preferred]
    seen: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory or ".", "docker")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in [os.path.realpath(s) for s in seen]:
                seen.append(path)
    if os.path.exists("/usr/bin/docker") and "/usr/bin/docker" not in seen:
        seen.append("/usr/bin/docker")
    return seen


async def discover_cli(transport: Transport, candidates: Sequence[str]) -> tuple[EngineCLI | None, list[str]]:
    """The first candidate that can build with BuildKit, and why the others could not.

    Every candidate is asked both questions at once (they are cheap and independent); the
    answer is still the first candidate in order that can build. Asked one after another,
    two candidates cost four sequential process starts before a build could begin."""
    if not candidates:
        return None, []
    answers = await asyncio.gather(*(transport.run(argv, timeout=30) for cli in candidates
                                     for argv in ([cli, "buildx", "version"], [cli, "--version"])))
    reasons: list[str] = []
    for i, cli in enumerate(candidates):
        buildx, ver = answers[2 * i], answers[2 * i + 1]
        if buildx.ok:
            return EngineCLI((cli, "buildx"), "buildx", buildx.last_line()), reasons
        if not ver.ok:
            reasons.append(f"{cli}: {ver.last_line()}")
            continue
        m = _VERSION.search(" ".join(ver.tail))
        if m and int(m.group(1)) < 23:
            return EngineCLI((cli,), "buildkit", f"{m.group(1)}.{m.group(2)}"), reasons
        reasons.append(f"{cli}: version {m.group(1) + '.' + m.group(2) if m else '?'} has no buildx plugin "
                       "and no built-in BuildKit")
    return None, reasons


def build_argv(cli: Sequence[str], mode: str, *, platform: Platform, dockerfile: str, context: str,
               tag: str, build_args: Sequence[tuple[str, str]] = (), labels: Sequence[tuple[str, str]] = (),
               target: str | None = None, no_cache: bool = False, pull: bool = True,
               env_build_args: Collection[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The argv, and the environment to add to the engine CLI's, that build ``platform`` into the
    engine as ``tag``.

    A build arg named in ``env_build_args`` (its value came from archfleet's environment: a bare
    ``--build-arg NAME``) is passed as a bare ``--build-arg NAME`` with ``NAME=value`` in the
    returned environment, which is where docker's CLI reads a bare name from (docker/cli
    ``opts.ValidateEnv``; buildx does the same): its value is in no process's argv, on this
    machine or on a node (transports hand the environment over without a command line). Names
    the CLI itself reads (:func:`archfleet.buildargs.env_passable`) and explicit ``NAME=VALUE``
    args go in argv, as ``docker build`` would have them.
    """
    if mode == "buildx":
        argv = [*cli, "build", "--load"]
        env: dict[str, str] = {}
    else:
        argv = [*cli, "build"]
        env = {"DOCKER_BUILDKIT": "1"}
    argv += ["--progress", "plain", "--platform", str(platform), "-f", dockerfile]
    if tag:
        argv += ["-t", tag]
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
    if no_cache:
        argv.append("--no-cache")
    if pull:
        # Docker 20.10's image store holds one platform per tag, and its BuildKit takes a 386
        # base it finds there for an amd64 build (and writes amd64 into the config): resolving
        # bases in the registry avoids building on the wrong base.
        argv.append("--pull")
    argv.append(context)
    return argv, env


def engine_gone(done: Completed) -> bool:
    text = "\n".join(done.tail)
    return any(marker.lower() in text.lower() for marker in _ENGINE_GONE) and "failed to solve" not in text


async def build(transport: Transport, cli: EngineCLI, *, platform: Platform, request: BuildRequest, tag: str,
                context: str | None = None, dockerfile: str | None = None,
                extra_build_args: Sequence[tuple[str, str]] = (), extra_labels: Sequence[tuple[str, str]] = (),
                on_line: LineCallback | None = None) -> str:
    """Build ``platform`` on the node into its engine as ``tag``; return the image id."""
    argv, env = build_argv(
        cli.argv, cli.mode, platform=platform,
        dockerfile=dockerfile or str(request.dockerfile), context=context or str(request.context), tag=tag,
        build_args=[*request.build_args, *extra_build_args], labels=[*request.labels, *extra_labels],
        target=request.target, no_cache=request.no_cache, pull=request.pull,
        env_build_args=request.env_build_args,
    )
    image_id: list[str] = []

    def watch(line: str) -> None:
        m = _IMAGE_ID.search(line)
        if m:
            image_id.append(m.group(1))
        if on_line:
            on_line(line)

    done = await transport.run(argv, env=env, on_line=watch)
    if not done.ok:
        if done.returncode in (126, 127) or engine_gone(done) or not await ping(transport):
            raise InfrastructureError(transport.node, f"engine unusable: {done.last_line()}")
        raise BuildFailed(f"build for {platform} failed: {_build_error(done)}")
    if image_id or not tag:
        return image_id[-1] if image_id else ""
    return await asyncio.to_thread(lambda: transport.docker_client().images.get(tag).id)


def _build_error(done: Completed) -> str:
    for line in reversed(done.tail):
        line = line.strip()
        if line.startswith(("ERROR:", "error:", "failed to solve")) or "did not complete successfully" in line:
            return re.sub(r"^#\d+\s+", "", line)
    return done.last_line()


async def ping(transport: Transport) -> bool:
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
    """
    import docker.errors

    repository = ref.name if ref.registry != "docker.io" else ref.repository
    loop = asyncio.get_running_loop()

    def _push() -> str:
        client = transport.docker_client()
        digest = None
        kwargs = {"auth_config": auth_config} if auth_config else {}
        try:
            for event in client.api.push(repository, tag=ref.tag, stream=True, decode=True, **kwargs):
                if "error" in event:
                    raise _PushError(event.get("error") or str(event.get("errorDetail")))
                aux = event.get("aux") or {}
                if aux.get("Digest"):
                    digest = aux["Digest"]
                if on_line and event.get("status") not in (None, "Preparing", "Waiting") and not event.get("progressDetail"):
                    loop.call_soon_threadsafe(on_line, f"{event.get('id', '')} {event['status']}".strip())
        except docker.errors.APIError as exc:
            raise _PushError(str(exc.explanation or exc)) from None
        except (ConnectionError, OSError) as exc:
            raise InfrastructureError(transport.node, f"engine connection lost during push: {exc}") from None
        if not digest:
            raise _PushError("engine reported no digest")
        return digest

    try:
        return await asyncio.to_thread(_push)
    except _PushError as exc:
        message = str(exc)
        if "unauthorized" in message.lower() or "authentication required" in message.lower():
            raise EnvironmentProblem(f"push of {ref} refused: {message}; run `docker login {ref.registry}`") from None
        if not await ping(transport):
            raise InfrastructureError(transport.node, f"engine gone during push: {message}") from None
        raise InfrastructureError(transport.node, f"push of {ref} failed: {message}") from None


class _PushError(Exception):
    pass


def auth_config_for(registry: str) -> dict | None:
    """Credentials for the Engine API's ``X-Registry-Auth`` header, from the Docker config."""
    from .registry import load_credentials

    creds = load_credentials(registry)
    if not creds:
        return None
    if "identitytoken" in creds:
        return {"identitytoken": creds["identitytoken"], "serveraddress": registry}
    return {"username": creds.get("username", ""), "password": creds.get("password", ""), "serveraddress": registry}

