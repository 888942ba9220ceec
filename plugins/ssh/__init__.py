"""The ``ssh`` transport: nodes from ``nodes.toml``, reached with asyncssh. Everything about an
SSH node lives in this package: its ``nodes.toml`` keys (:data:`KEYS`, declared to archfleet
through ``archfleet_node_keys``), its connections (kept per command in the session, closed at
its end), its transport (:mod:`.transport`) and its host-key rules (:mod:`.hostkeys`).

Connections: one per node for the whole command (probe and builds share it), more when more
than 8 sessions are wanted at once (sshd's ``MaxSessions`` is 10 by default; see
:class:`archfleet.plugins.ssh.transport.SSHTransport`), with keepalives and a connect timeout.

``~/.ssh/config`` applies as OpenSSH applies it, through asyncssh: ``host`` may be an alias whose
``HostName``, ``Port``, ``User``, ``IdentityFile``, ``ProxyJump`` and ``HostKeyAlias`` are used;
``port``/``user``/``identity`` in ``nodes.toml`` win over the alias's.

Host keys are always verified, looked up the way OpenSSH looks them up (``sshconnect.c``,
``get_hostfile_hostname_ipaddr``): under ``[HostName]:Port`` when the port is not 22, else
``HostName`` (and likewise the peer's address); under ``HostKeyAlias`` alone when the config sets
one. Files: the node's ``known_hosts``, else ssh_config's ``UserKnownHostsFile`` and
``GlobalKnownHostsFile``, else OpenSSH's defaults (``~/.ssh/known_hosts``, ``~/.ssh/known_hosts2``,
``/etc/ssh/ssh_known_hosts``, ``/etc/ssh/ssh_known_hosts2``). ``UserKnownHostsFile none`` or a
file that does not exist trusts nobody; checking is never turned off.

``host_key_policy = "accept-new"`` (opt-in, like OpenSSH's ``StrictHostKeyChecking=accept-new``)
records the key of a host that has *no* entry yet, under the name above, in the file OpenSSH
would write (the node's ``known_hosts``, else the first ``UserKnownHostsFile``), so OpenSSH
accepts the entry too. A host whose entry holds a different key is refused, always; the error
names the node, the real ``host:port`` and the presented fingerprint.
"""

from __future__ import annotations

import asyncio
import re

import attrs

from archfleet.api import InfrastructureError, Key, NodeFacts, adapter_for, hookimpl, probe_node

from .hostkeys import SSHNode, open_connection
from .transport import SSHTransport

TRANSPORT = "ssh"
HOST_KEY_POLICIES = ("strict", "accept-new")
_HOST = re.compile(r"[A-Za-z0-9_.:\[\]%-]+")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

#: The keys of an SSH node in ``nodes.toml`` (besides the keys every node has).
KEYS = {
    "host": Key(str, "a host name, address or ~/.ssh/config alias",
                lambda v: bool(_HOST.fullmatch(v)) and not v.startswith("-"),
                required="an address or an ~/.ssh/config alias"),
    "port": Key(int, "an integer 1-65535", lambda v: 1 <= v <= 65535),
    "user": Key(str, "a user name", lambda v: bool(_USER.fullmatch(v))),
    "identity": Key(str, "a path", lambda v: v.strip() != "", path="readable"),
    "known_hosts": Key(str, "a path", lambda v: v.strip() != "", path="file"),
    "host_key_policy": Key(str, " or ".join(HOST_KEY_POLICIES), lambda v: v in HOST_KEY_POLICIES,
                           default="strict"),
}


@hookimpl
def archfleet_node_keys():
    return {TRANSPORT: KEYS}


@hookimpl
def archfleet_add_nodes(config):
    return [n for n in config.file_nodes if n.transport == TRANSPORT]


async def _connect(node) -> SSHTransport:
    target = SSHNode.of(node)
    conn = await open_connection(target)
    return SSHTransport(node.name, conn, node.docker_host, link_key=node.key,
                        connect=lambda: open_connection(target))


async def get_transport(node, session) -> SSHTransport:
    """The node's transport for this command: one, shared by the probe and the builds, kept in
    ``session`` (a connection that failed is tried again next time)."""
    pool: dict[str, asyncio.Future] = session.state(TRANSPORT).setdefault("pool", {})
    if node.name not in pool or (pool[node.name].done() and pool[node.name].exception()):
        pool[node.name] = asyncio.ensure_future(_connect(node))
    return await asyncio.shield(pool[node.name])


def _down(node, exc: InfrastructureError) -> NodeFacts:
    return NodeFacts(node, False, error=str(exc).removeprefix(f"node {node.name}: "), fix=exc.fix,
                     address=SSHNode.of(node).address)


@hookimpl
def archfleet_probe(node, config, session):
    if node.transport != TRANSPORT:
        return None

    async def _probe():
        try:
            transport = await get_transport(node, session)
            facts = await probe_node(transport, node)  # the engine adapter's CLIs for a node
        except InfrastructureError as exc:
            return _down(node, exc)
        return attrs.evolve(facts, address=SSHNode.of(node).address)

    return _probe()


@hookimpl
def archfleet_connect(node, facts, session):
    if node.transport != TRANSPORT:
        return None

    async def _conn():
        transport = await get_transport(node, session)
        if not adapter_for(node.engine).uses_engine_api:
            return transport  # podman: everything goes through its CLI, there is no socket
        try:
            await transport.open_engine()
        except Exception as exc:
            raise InfrastructureError(node.name, f"cannot forward the engine socket: {exc}") from None
        return transport

    return _conn()


@hookimpl
def archfleet_session_end(session):
    async def _close():
        pool = list(session.state(TRANSPORT).pop("pool", {}).values())
        for fut in pool:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                await fut.result().close()
            elif not fut.done():
                fut.cancel()

    return _close()
