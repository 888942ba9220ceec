"""The ``ssh`` transport: nodes from ``nodes.toml``, reached with asyncssh.

One connection per node for the whole command (probe and builds share it), with keepalives and
a connect timeout. Host keys are always verified against ``known_hosts`` (the node's, else the
user's); ``host_key_policy = "accept-new"`` (opt-in) records the key of a host seen for the
first time, and a changed key is always refused, naming the node and the presented fingerprint.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from archfleet.api import InfrastructureError, NodeFacts, SSHTransport, hookimpl, probe_node, score_key

TRANSPORT = "ssh"
CONNECT_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT_MAX = 3

# node name -> future of SSHTransport, shared by probe and builds within one command
_pool: dict[str, asyncio.Future] = {}


@hookimpl
def archfleet_add_nodes(config):
    return [n for n in config.file_nodes if n.transport == TRANSPORT]


class HostKeyError(Exception):
    pass


def _known_hosts_path(node) -> str:
    return node.known_hosts or os.path.expanduser("~/.ssh/known_hosts")


async def _fingerprint(node) -> str:
    import asyncssh

    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(node.host, node.port or ()),
                                     CONNECT_TIMEOUT)
    except Exception:
        return "(could not read the presented key)"
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}" if key else "(none presented)"


def _has_entry(path: str, node) -> bool:
    import asyncssh

    try:
        known = asyncssh.read_known_hosts(path)
    except (OSError, ValueError):
        return False
    host_keys, ca_keys, *_ = known.match(node.host, node.host, node.port)
    return bool(host_keys or ca_keys)


async def _accept_new(path: str, node) -> None:
    import asyncssh

    key = await asyncio.wait_for(asyncssh.get_server_host_key(node.host, node.port or ()),
                                 CONNECT_TIMEOUT)
    if key is None:
        raise HostKeyError(f"node {node.name}: {node.host} presented no host key")
    entry = node.host if not node.port or node.port == 22 else f"[{node.host}]:{node.port}"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{entry} {key.export_public_key('openssh').decode().strip()}\n")


async def _connect(node):
    import asyncssh

    known = _known_hosts_path(node)
    kwargs = dict(
        # a known_hosts file that does not exist trusts nobody (never "no checking")
        known_hosts=known if os.path.exists(known) else asyncssh.import_known_hosts(""),
        connect_timeout=CONNECT_TIMEOUT,
        keepalive_interval=KEEPALIVE_INTERVAL,
        keepalive_count_max=KEEPALIVE_COUNT_MAX,
    )
    if node.port:
        kwargs["port"] = node.port
    if node.user:
        kwargs["username"] = node.user
    if node.identity:
        kwargs["client_keys"] = [node.identity]
    for attempt in (1, 2):
        try:
            conn = await asyncssh.connect(node.host, **kwargs)
            return SSHTransport(node.name, conn, node.docker_host, link_key=score_key(node))
        except asyncssh.HostKeyNotVerifiable:
            if attempt == 1 and node.host_key_policy == "accept-new" and not _has_entry(known, node):
                await _accept_new(known, node)
                kwargs["known_hosts"] = known
                continue
            fp = await _fingerprint(node)
            what = ("does not match" if _has_entry(known, node) else "is not in")
            raise HostKeyError(f"node {node.name}: host key of {node.host}:{node.port or 22} {what} {known}; "
                               f"the server presented {fp}; refusing to connect") from None
        except asyncssh.PermissionDenied:
            raise InfrastructureError(node.name, f"SSH login as {node.user or 'the default user'} refused "
                                                 f"(check identity or the SSH agent)") from None
        except (OSError, asyncio.TimeoutError, asyncssh.Error) as exc:
            reason = str(exc) or type(exc).__name__
            raise InfrastructureError(node.name, f"SSH to {node.host}:{node.port or 22} failed: {reason}") from None
    raise AssertionError("unreachable")


async def get_transport(node) -> SSHTransport:
    if node.name not in _pool or (_pool[node.name].done() and _pool[node.name].exception()):
        _pool[node.name] = asyncio.ensure_future(_connect(node))
    return await asyncio.shield(_pool[node.name])


def _candidates(node):
    return [node.engine_cli] if node.engine_cli else ["docker", "/usr/bin/docker"]


@hookimpl
def archfleet_probe(node, config):
    if node.transport != TRANSPORT:
        return None

    async def _probe():
        try:
            transport = await get_transport(node)
        except HostKeyError as exc:
            return NodeFacts(node, False, error=str(exc))
        except InfrastructureError as exc:
            return NodeFacts(node, False, error=str(exc).split(": ", 1)[1])
        try:
            return await probe_node(transport, node, _candidates(node))
        except InfrastructureError as exc:
            return NodeFacts(node, False, error=str(exc).split(": ", 1)[1])

    return _probe()


@hookimpl
def archfleet_connect(node, facts):
    if node.transport != TRANSPORT:
        return None

    async def _conn():
        try:
            transport = await get_transport(node)
        except HostKeyError as exc:
            raise InfrastructureError(node.name, str(exc)) from None
        try:
            await transport.open_engine()
        except Exception as exc:
            raise InfrastructureError(node.name, f"cannot forward the engine socket: {exc}") from None
        return transport

    return _conn()


@hookimpl
def archfleet_session_end():
    async def _close():
        pool = list(_pool.values())
        _pool.clear()
        for fut in pool:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                await fut.result().close()
            elif not fut.done():
                fut.cancel()

    return _close()
