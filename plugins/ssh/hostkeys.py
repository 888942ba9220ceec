"""Reaching an SSH node: ssh_config applied as OpenSSH applies it, host keys checked (and, with
``accept-new``, recorded) as OpenSSH checks them. Rules in the package doc (:mod:`archfleet.plugins.ssh`)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import attrs

from archfleet.api import InfrastructureError

CONNECT_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT_MAX = 3
DEFAULT_USER_FILES = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_FILES = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


@attrs.frozen
class SSHNode:
    """An SSH node's settings (its ``nodes.toml`` keys, validated by archfleet with the plugin's
    :data:`archfleet.plugins.ssh.KEYS`), with the node's name and where it was defined."""

    name: str
    host: str
    port: int | None = None
    user: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    host_key_policy: str = "strict"
    source: str = "<builtin>"

    @classmethod
    def of(cls, node) -> "SSHNode":
        """From a :class:`~archfleet.model.NodeSpec` of transport ``ssh``."""
        return cls(node.name, node.setting("host"), node.setting("port"), node.setting("user"),
                   node.setting("identity"), node.setting("known_hosts"),
                   node.setting("host_key_policy", "strict"), node.source)

    @property
    def address(self) -> str:
        """``user@host:port`` as given (the alias, before ssh_config), for people."""
        return (f"{self.user}@" if self.user else "") + self.host + (f":{self.port}" if self.port else "")


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
        """asyncssh's ``known_hosts`` callable: the trusted keys, CA keys and revoked keys for ``host`` at ``addr``:``port`` under the names OpenSSH uses."""
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
        """asyncssh asks when the presented ``key`` is not trusted: accept it only under ``accept-new`` when the host had no entry at all (it is recorded by :meth:`commit`)."""
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
        raise InfrastructureError(node.name, keys.refusal(exc.reason), fix=(
            "check that the node really is who it claims; if its key changed on purpose, update known_hosts "
            "(ssh-keygen -R)")) from None
    except asyncssh.PermissionDenied:
        keys.commit()
        raise InfrastructureError(node.name, f"SSH login to {where} as {options.username} refused "
                                             "(check identity or the SSH agent)",
                                  fix=f"check user and identity at {node.source}, or the SSH agent") from None
    except (OSError, asyncio.TimeoutError, asyncssh.Error, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise InfrastructureError(node.name, f"SSH to {where} failed: {reason}", fix=(
            f"check that sshd runs on {node.host} and the address and port at {node.source} are right")) from None
    try:
        keys.commit()
    except InfrastructureError:
        conn.close()
        raise
    return conn


