"""The ``ssh`` transport: nodes from ``nodes.toml``, reached with asyncssh.

Connections: one per node for the whole command (probe and builds share it), more when more
than 8 sessions are wanted at once (sshd's ``MaxSessions`` is 10 by default; see
:class:`archfleet.transport.SSHTransport`), with keepalives and a connect timeout.

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
import os
from pathlib import Path

from archfleet.api import InfrastructureError, NodeFacts, SSHTransport, hookimpl, probe_node, score_key

TRANSPORT = "ssh"
CONNECT_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT_MAX = 3
DEFAULT_USER_FILES = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_FILES = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


@hookimpl
def archfleet_add_nodes(config):
    return [n for n in config.file_nodes if n.transport == TRANSPORT]


def _hostport(host: str, port: int | None) -> str:
    """``host:port`` for messages (``[v6]:port`` for IPv6 addresses)."""
    port = port or 22
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _entry_name(host: str, port: int | None) -> str:
    """The name OpenSSH files a host under in known_hosts: ``[host]:port`` unless port 22."""
    return f"[{host}]:{port}" if port and port != 22 else host


def known_hosts_files(node, config) -> tuple[list[str], str | None]:
    """(files to read, file accept-new writes to) for ``node``; ``config`` is asyncssh's parsed
    ssh_config for it (``options.config``), or None. Rules in the module doc."""
    if node.known_hosts:
        return [node.known_hosts], node.known_hosts
    user = config.get("UserKnownHostsFile", ()) if config is not None else ()
    glob = config.get("GlobalKnownHostsFile", ()) if config is not None else ()
    user = [os.path.expanduser(p) for p in (DEFAULT_USER_FILES if user == () else user)]
    glob = [os.path.expanduser(p) for p in (DEFAULT_GLOBAL_FILES if glob == () else glob)]
    return user + glob, (user[0] if user else None)


class HostKeys:
    """The host-key decision for one connection attempt (module doc): asyncssh calls
    :meth:`lookup` for the trusted keys and, when the presented key is not one of them,
    :meth:`validate`. ``presented`` keeps what the server showed, for the error message."""

    def __init__(self, node, files: list[str], write_to: str | None, alias: str | None):
        import asyncssh

        self.node = node
        self.files = files
        self.write_to = write_to
        self.alias = alias
        existing = [f for f in files if os.path.isfile(f)]
        try:
            self.known = asyncssh.read_known_hosts(existing) if existing else asyncssh.import_known_hosts("")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise InfrastructureError(node.name, f"cannot read known_hosts {', '.join(existing)}: {exc}") from None
        self.had_entry = False
        self.presented = None  # (host, port, key)
        self.accepted: str | None = None  # the known_hosts line accept-new will write

    def names(self, host: str, addr: str, port: int | None) -> list[str]:
        """What to look up for ``host`` at ``addr``:``port`` (``port`` None: 22)."""
        if self.alias:
            return [self.alias]
        names = [_entry_name(host, port)]
        if addr and addr != host:
            names.append(_entry_name(addr, port))
        return names

    def lookup(self, host: str, addr: str, port: int | None):
        keys, cas, revoked = [], [], []
        for name in self.names(host, addr, port):
            try:
                found = self.known.match(name, "", None)
            except ValueError:
                continue
            keys += found[0]
            cas += found[1]
            revoked += found[2]
        self.had_entry = bool(keys or cas)
        return keys, cas, revoked

    def validate(self, host: str, addr: str, port: int, key) -> bool:
        self.presented = (host, port, key)
        if self.had_entry or self.node.host_key_policy != "accept-new" or not self.write_to:
            return False
        name = self.names(host, addr, port if port != 22 else None)[0]
        self.accepted = f"{name} {key.export_public_key('openssh').decode().strip()}\n"
        return True

    def commit(self) -> None:
        """Record the key accept-new took, once the server has proved it holds it (key exchange
        done; OpenSSH records it then too, whether or not the login succeeds)."""
        if self.accepted and self.write_to:
            try:
                _append(self.write_to, self.accepted)
            except OSError as exc:
                raise InfrastructureError(self.node.name, f"cannot record the host key in {self.write_to}: "
                                                          f"{exc.strerror}") from None
            self.accepted = None

    def refusal(self, fallback: str) -> str:
        """The one line saying why the host key was not accepted."""
        if self.presented is None:
            return f"host key not accepted: {fallback}"
        host, port, key = self.presented
        # the node is named here too: `archfleet ls` shows this line without the "node X:" prefix
        where = f"node {self.node.name} at {_hostport(host, port)}" + (
            f" (ssh_config alias {self.node.host})" if self.node.host != host else "")
        files = ", ".join(self.files) or "no known_hosts file (UserKnownHostsFile none)"
        fp = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"
        name = self.names(host, "", port if port != 22 else None)[0]
        if self.had_entry:
            default = os.path.expanduser(DEFAULT_USER_FILES[0])
            where_file = f" -f {self.files[0]}" if self.files and self.files[0] != default else ""
            return (f"host key of {where} does not match the one in {files}: the server presented {fp}; "
                    f"refusing to connect (if the key changed on purpose, remove the old one with "
                    f"ssh-keygen -R '{name}'{where_file} and connect again)")
        if self.node.host_key_policy == "accept-new":
            return (f"host key of {where} is new, but there is no known_hosts file to record it in "
                    f"(set known_hosts at {self.node.source}); the server presented {fp}")
        return (f"host key of {where} is not in {files}: the server presented {fp}; refusing to connect "
                f"(check the fingerprint, then add the key under '{name}', or set host_key_policy = "
                f"\"accept-new\" at {self.node.source})")


def _append(path: str, line: str) -> None:
    """Append one known_hosts line (the file and its directory are created private if missing)."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _client_class():
    import asyncssh

    class Client(asyncssh.SSHClient):
        def __init__(self, keys: HostKeys):
            self.keys = keys

        def validate_host_public_key(self, host, addr, port, key):
            return self.keys.validate(host, addr, port, key)

    return Client


async def _options(node):
    """asyncssh's options for ``node``: ~/.ssh/config applied, nodes.toml's values first."""
    import asyncssh

    kwargs = dict(connect_timeout=CONNECT_TIMEOUT, keepalive_interval=KEEPALIVE_INTERVAL,
                  keepalive_count_max=KEEPALIVE_COUNT_MAX)
    if node.port:
        kwargs["port"] = node.port
    if node.user:
        kwargs["username"] = node.user
    if node.identity:
        kwargs["client_keys"] = [node.identity]
    # config=(): read ~/.ssh/config, as asyncssh.connect does (construct alone reads none)
    return await asyncssh.SSHClientConnectionOptions.construct(host=node.host, config=(), **kwargs)


async def open_connection(node):
    """One verified connection to ``node`` (raises InfrastructureError saying why not)."""
    import asyncssh

    try:
        options = await _options(node)
    except (OSError, ValueError, asyncssh.Error) as exc:
        raise InfrastructureError(node.name, f"SSH options for {node.host}: {exc}") from None
    where = _hostport(options.host, options.port)
    files, write_to = known_hosts_files(node, options.config)
    keys = HostKeys(node, files, write_to, options.host_key_alias)
    client = _client_class()
    try:
        conn = await asyncssh.connect(node.host, options.port, options=options, known_hosts=keys.lookup,
                                      client_factory=lambda: client(keys))
    except asyncssh.HostKeyNotVerifiable as exc:
        raise InfrastructureError(node.name, keys.refusal(exc.reason)) from None
    except asyncssh.PermissionDenied:
        keys.commit()
        raise InfrastructureError(node.name, f"SSH login to {where} as {options.username} refused "
                                             "(check identity or the SSH agent)") from None
    except (OSError, asyncio.TimeoutError, asyncssh.Error, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise InfrastructureError(node.name, f"SSH to {where} failed: {reason}") from None
    try:
        keys.commit()
    except InfrastructureError:
        conn.close()
        raise
    return conn


async def _connect(node) -> SSHTransport:
    conn = await open_connection(node)
    return SSHTransport(node.name, conn, node.docker_host, link_key=score_key(node),
                        connect=lambda: open_connection(node))


async def get_transport(node, session) -> SSHTransport:
    """The node's transport for this command: one, shared by the probe and the builds, kept in
    ``session`` (a connection that failed is tried again next time)."""
    pool: dict[str, asyncio.Future] = session.state(TRANSPORT).setdefault("pool", {})
    if node.name not in pool or (pool[node.name].done() and pool[node.name].exception()):
        pool[node.name] = asyncio.ensure_future(_connect(node))
    return await asyncio.shield(pool[node.name])


def _candidates(node):
    return [node.engine_cli] if node.engine_cli else ["docker", "/usr/bin/docker"]


def _reason(exc: InfrastructureError, node) -> str:
    return str(exc).removeprefix(f"node {node.name}: ")


@hookimpl
def archfleet_probe(node, config, session):
    if node.transport != TRANSPORT:
        return None

    async def _probe():
        try:
            transport = await get_transport(node, session)
        except InfrastructureError as exc:
            return NodeFacts(node, False, error=_reason(exc, node))
        try:
            return await probe_node(transport, node, _candidates(node))
        except InfrastructureError as exc:
            return NodeFacts(node, False, error=_reason(exc, node))

    return _probe()


@hookimpl
def archfleet_connect(node, facts, session):
    if node.transport != TRANSPORT:
        return None

    async def _conn():
        transport = await get_transport(node, session)
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
