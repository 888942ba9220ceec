"""``archfleet doctor``: is everything a build needs in place, and what to do where it is not.

Checks the local engine and an engine CLI that can build (docker with BuildKit, or podman when
``[nodes.local] engine = "podman"``), the binfmt handlers, each registry named (reachable,
credentials accepted, plain HTTP only where allowed), every node in the nodes file (SSH, host
key, engine, clock skew), and then, for each platform asked (``--platform``, default
:data:`DEFAULT_PLATFORMS`) on each node, whether the node builds it (natively or under QEMU)
and, where it does not, the one command that fixes it. A platform some node can build is a
warning where another cannot; a platform no node can build fails. One line per check; exit 3
if any failed.
"""

from __future__ import annotations

import platform as _platform
import time

import attrs

from . import binfmt
from . import platforms as plat
from .errors import ArchfleetError, RegistryRefused, RegistryUnreachable
from .model import NodeFacts
from .platforms import Platform, native_platforms, parse
from .reference import Reference
from .registry import RegistryClient, login_hint

WANTED_EMULATORS = ("linux/arm64", "linux/arm/v7", "linux/s390x", "linux/ppc64le", "linux/riscv64")
# the platforms checked per node when --platform names none: the README's five
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x", "linux/ppc64le")
MAX_SKEW = 5.0


@attrs.frozen
class Check:
    """One line of ``archfleet doctor``: ``status`` (ok, warn or FAIL), what was checked, what was found and what to do."""
    status: str  # "ok" | "warn" | "FAIL"
    what: str
    message: str
    fix: str = ""

    def line(self) -> str:
        """The check as one printed line: ``STATUS  what: message -> fix``."""
        return f"{self.status:4s}  {self.what}: {self.message}" + (f" -> {self.fix}" if self.fix else "")


def check_binfmt(mount=None) -> list[Check]:
    """The local QEMU handlers: missing ones (FAIL when there are none, else warn) and ones that
    are registered but cannot emulate inside containers (disabled, or no fix-binary flag F;
    ``archfleet binfmt --install`` re-registers those with F)."""
    mount = binfmt.MOUNT if mount is None else mount
    if not (mount / "register").exists():
        return [Check("FAIL", "binfmt", f"binfmt_misc is not mounted at {mount}",
                      "run `archfleet binfmt --install all` as root (it mounts it)")]
    handlers = [h for h in binfmt.read_handlers(mount) if h.name.startswith("qemu-")]
    emulated = set(binfmt.emulated_platforms(handlers))
    native = set(native_platforms(_platform.machine()))
    # handlers for platforms we would emulate (not this machine's own) that cannot run in containers
    broken = [h for h in handlers if h.problem and h.platforms and not set(h.platforms) <= native]
    out = []
    missing = [p for p in WANTED_EMULATORS
               if parse(p) not in emulated and not any(parse(p) in h.platforms for h in broken)]
    if not handlers:
        out.append(Check("FAIL", "binfmt", "no QEMU handlers registered: only native platforms can be built here",
                         "run `archfleet binfmt --install all` (needs qemu-user-static)"))
    elif missing:
        out.append(Check("warn", "binfmt", f"no emulator for {', '.join(missing)}",
                         f"run `archfleet binfmt --install {','.join(missing)}`"))
    else:
        out.append(Check("ok", "binfmt", f"{len(handlers)} QEMU handlers ({', '.join(WANTED_EMULATORS)} and more)"))
    if broken:
        out.append(Check("warn", "binfmt", "; ".join(h.problem for h in broken),
                         f"run `archfleet binfmt --install {','.join(str(h.platforms[0]) for h in broken)}` "
                         "as root: it re-registers them with F"))
    return out


async def check_registry(host: str, insecure: tuple[str, ...]) -> list[Check]:
    """One check of registry ``host`` (``host[:port]``): reachable, speaking HTTPS (or plain HTTP where ``insecure`` or loopback allows), and taking the Docker config's credentials for a push."""
    ref = Reference(host, "archfleet-doctor", "check")
    async with RegistryClient(insecure) as client:
        try:
            await client.check_access(ref, push=True)
        except ArchfleetError as exc:
            text = str(exc)
            if isinstance(exc, RegistryUnreachable):
                fix = f"start the registry at {host}, or check the address and firewall"
                if not client.plain_http_allowed(host):
                    fix += f"; if it speaks plain HTTP, pass --insecure-registry {host}"
            elif isinstance(exc, RegistryRefused):
                fix = f"run {login_hint(host)} with an account that may push there"
            else:
                fix = "check the registry's address and logs"
            return [Check("FAIL", f"registry {host}", text.replace(f"registry {host} ", ""), fix)]
        scheme = client.scheme_of(host) or "https"
        if scheme == "http" and not client.plain_http_allowed(host):
            return [Check("FAIL", f"registry {host}", "speaks plain HTTP only", f"pass --insecure-registry {host}")]
        note = {"http": "plain HTTP (loopback or --insecure-registry)", "https": "HTTPS"}.get(
            scheme, f"{scheme} (loopback or --insecure-registry)")
        return [Check("ok", f"registry {host}", f"reachable over {note}; credentials accepted for push")]


async def check_nodes(hooks, config, session, facts: dict[str, NodeFacts] | None = None) -> list[Check]:
    """One check per node of the nodes file: reachable and ready (what to fix comes from the
    plugin that probed it: ``NodeFacts.fix``), and its clock against this machine's. ``facts``:
    the probe's answer, when the caller has it (else the nodes are probed here)."""
    from .pipeline import probe

    if facts is None:
        facts = await probe(hooks, config, session)
    out = []
    for f in facts.values():
        if f.node.transport == "local":
            continue
        what = f"node {f.name}"
        if not f.reachable:
            out.append(Check("FAIL", what, f.error or "unreachable",
                             f.fix or f"check the node's address, its sshd and the settings at {f.node.source}"))
            continue
        if not f.builder:
            out.append(Check("FAIL", what, f.error or "no builder",
                             f.fix or "install buildx, or set engine_cli in nodes.toml"))
            continue
        skew = await _clock_skew(hooks, f, session)
        if skew is not None and abs(skew) > MAX_SKEW:
            out.append(Check("warn", what, f"clock is {skew:+.1f}s off this machine's",
                             "run NTP (chrony/systemd-timesyncd) on both; registries reject far-off tokens"))
        out.append(Check("ok", what, f"{f.address or f.node.transport}: {f.engine_label}, {f.builder}, "
                                     f"native {','.join(map(str, f.native))}, {len(f.emulated)} emulated"
                                     + (f", clock {skew:+.1f}s" if skew is not None else "")))
    return out


async def _clock_skew(hooks, facts, session) -> float | None:
    from .pipeline import connect

    try:
        transport = await connect(hooks, facts, session)
        before = time.time()
        done = await transport.run(["date", "+%s.%N"], timeout=15)
        after = time.time()
        return float(done.last_line()) - (before + after) / 2 if done.ok else None
    except (ArchfleetError, ValueError, OSError):
        return None


def check_local_engine(facts: NodeFacts) -> list[Check]:
    """The local node's engine and CLI as its probe found them: the probe asks the engine CLI
    (for docker, ``docker info`` through each candidate), so the daemon checked is the one
    builds go to (a ``DOCKER_CONTEXT`` or ``DOCKER_HOST`` the CLI follows), and ``doctor``
    passes only where ``build`` can build."""
    if not facts.reachable:
        return [Check("FAIL", "local engine", facts.error or "does not answer",
                      facts.fix or "start the engine, or build only on nodes with --no-local")]
    # no CLI said the daemon's version: nothing was asked of the engine (the CLI itself failed)
    out = [Check("ok", "local engine", f"{facts.engine_label} answers")] if facts.engine_version else []
    if not facts.builder:
        fix = facts.fix or ("install the buildx plugin, or name a Docker < 23 client with --engine-cli "
                            "(Debian's docker.io gives /usr/bin/docker)" if facts.node.engine == "docker" else "")
        out.append(Check("FAIL", "engine CLI", facts.error or "no CLI can build", fix))
    else:
        out.append(Check("ok", "engine CLI", f"{' '.join(facts.engine_cli)} ({facts.builder})"))
    return out


def _binfmt_fix(facts: NodeFacts, platform: Platform) -> str:
    """The one command that gives ``facts``' node a usable QEMU handler for ``platform``: archfleet's
    own (it registers Debian's qemu-user-static handlers with the F flag, or re-registers one
    without it), as root, here or on the node."""
    command = f"`archfleet binfmt --install {platform}`"
    if facts.node.transport == "local":
        return f"run {command} as root"
    return (f"run {command} as root on {facts.address or facts.name} (or install qemu-user-static there: "
            "Debian's registers every handler with F)")


def check_platforms(facts: dict[str, NodeFacts], platforms: tuple[Platform, ...]) -> list[Check]:
    """Each platform on each node that can build at all: one ``ok`` line per node saying how it
    builds the platforms it can (native, or qemu), and one line per platform it cannot, with
    why and the one command that fixes it: ``FAIL`` when no node builds that platform,
    ``warn`` when another node does."""
    ready = [f for f in facts.values() if f.can_build]
    buildable = {p for f in ready for p in platforms if p in f.native or p in f.emulated}
    out: list[Check] = []
    for f in ready:
        native = [p for p in platforms if p in f.native]
        emulated = [p for p in platforms if p not in f.native and p in f.emulated]
        what = f"platforms on {f.name}"
        parts = ([f"native {', '.join(map(str, native))}"] if native else []) + (
            [f"under QEMU {', '.join(map(str, emulated))}"] if emulated else [])
        if parts:
            out.append(Check("ok", what, "; ".join(parts)))
        for p in platforms:
            if p in native or p in emulated:
                continue
            status = "warn" if p in buildable else "FAIL"
            problem = dict(f.emulation_problems).get(p)
            if problem:
                out.append(Check(status, f"{p} on {f.name}", problem, _binfmt_fix(f, p)))
            elif not plat.emulable(p):
                out.append(Check(status, f"{p} on {f.name}",
                                 f"its CPU does not run {p} and no QEMU handler emulates it",
                                 f"build {p} on a node whose CPU runs it (add one to nodes.toml)"))
            else:
                out.append(Check(status, f"{p} on {f.name}", f"not native and no qemu-{p.qemu_arch} handler",
                                 _binfmt_fix(f, p)))
    return out


async def run(hooks, config, session, registries: tuple[str, ...], insecure: tuple[str, ...],
              platforms: tuple[Platform, ...] = ()) -> list[Check]:
    """Every check, in order: the local engine and binfmt (unless ``--no-local``), each
    registry named, each node, then each of ``platforms`` (default :data:`DEFAULT_PLATFORMS`)
    on each node."""
    from .pipeline import probe

    checks: list[Check] = []
    facts = await probe(hooks, config, session)
    if config.local:
        local = facts.get("local")
        if local is not None:
            checks += check_local_engine(local)
        checks += check_binfmt()
    for host in registries:
        checks += await check_registry(host, insecure)
    checks += await check_nodes(hooks, config, session, facts)
    checks += check_platforms(facts, platforms or tuple(parse(p) for p in DEFAULT_PLATFORMS))
    return checks
