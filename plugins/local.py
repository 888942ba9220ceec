"""The ``local`` node: this machine's engine (docker by default, or podman with ``[nodes.local]
engine = "podman"``), probed and driven without SSH."""

from __future__ import annotations

import asyncio

import attrs
import os
import platform as _platform

from archfleet.api import (
    LocalTransport, NodeFacts, NodeSpec, PlatformError, adapter_for, benchmark, binfmt, from_uname, hookimpl,
    native_platforms, read_cpu_flags, read_local_leases,
)

TRANSPORT = "local"


@hookimpl
def archfleet_add_nodes(config):
    if not config.local:
        return []
    node = NodeSpec(name="local", transport=TRANSPORT, engine_cli=config.engine_cli,
                    max_builds=max(4, os.cpu_count() or 1), source="<local engine>")
    override = config.file_node("local")  # [nodes.local] in nodes.toml
    if override is not None:
        node = attrs.evolve(override, engine_cli=config.engine_cli or override.engine_cli)
    return [node]


def _memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@hookimpl
def archfleet_probe(node, config):
    if node.transport != TRANSPORT:
        return None
    return _probe(node)


async def _probe(node: NodeSpec) -> NodeFacts:
    transport = LocalTransport(node.name, node.docker_host)
    try:
        try:
            native = from_uname(_platform.machine())
        except PlatformError as exc:
            return NodeFacts(node, False, error=f"unsupported machine: {exc}")
        adapter = adapter_for(node.engine)
        candidates = adapter.candidates(node.engine_cli, local=True)
        found = await adapter.probe(transport, node, candidates)
        if not found.answered:
            return NodeFacts(node, False, error=found.error, fix=found.fix, cli_versions=found.versions,
                             engine_infos=found.infos)
        cli = found.cli
        score = await benchmark(transport, node)
        handlers = binfmt.read_handlers()
        natives = native_platforms(_platform.machine(), read_cpu_flags())
        emulated = tuple(p for p in binfmt.emulated_platforms(handlers) if p not in natives)
        problems = tuple((p, why) for p, why in binfmt.unusable(handlers) if p not in natives)
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
        return NodeFacts(
            node, True, error=found.error, fix=found.fix, native=natives, emulated=emulated,
            emulation_problems=problems, engine_version=found.version, rootless=found.rootless,
            capabilities=found.capabilities, engine_cli=cli.argv if cli else (),
            builder=cli.mode if cli else None, cpus=os.cpu_count() or 1, memory=_memory(), load=load,
            score=score.value, score_measured=score.measured, busy=await asyncio.to_thread(read_local_leases, node),
            cli_versions=found.versions, engine_infos=found.infos,
        )
    finally:
        await transport.close()


@hookimpl
def archfleet_connect(node, facts, session):
    if node.transport != TRANSPORT:
        return None

    async def _connect():
        # one transport per node for the command, kept in the session and closed at its end
        transports = session.state(TRANSPORT).setdefault("transports", {})
        if node.name not in transports:
            transports[node.name] = LocalTransport(node.name, node.docker_host)
        return transports[node.name]

    return _connect()


@hookimpl
def archfleet_session_end(session):
    async def _close():
        for transport in session.state(TRANSPORT).pop("transports", {}).values():
            await transport.close()

    return _close()
