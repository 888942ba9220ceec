"""Where nodes come from.

``nodes.toml`` is found in this order: ``--nodes FILE``, ``$ARCHFLEET_NODES``, ``./nodes.toml``,
then the user config dir (``~/.config/archfleet/nodes.toml``). It holds one ``[nodes.NAME]``
table per node; ``[nodes.local]`` adjusts the implicit local node. Every validation error names
``file:line`` and the key. Plugins contribute nodes through ``archfleet_add_nodes``; this module
collects them, checks names are unique and applies ``--node`` selections.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from .errors import UsageError
from .model import NodeSpec
from .platforms import PlatformError, parse
from .transport import valid_docker_host

ENV_NODES = "ARCHFLEET_NODES"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOST = re.compile(r"^[A-Za-z0-9_.:\[\]%-]+$")
HOST_KEY_POLICIES = ("strict", "accept-new")

_SSH_KEYS = {
    "host", "port", "user", "identity", "known_hosts", "host_key_policy", "arch", "engine", "engine_cli",
    "docker_host", "max_builds", "labels", "enabled", "transport",
}
_LOCAL_KEYS = {"engine_cli", "docker_host", "max_builds", "labels", "enabled"}


@attrs.frozen
class Config:
    """What node-contributing and probing plugins may need from the command line."""

    nodes_file: Path | None = None
    file_nodes: tuple[NodeSpec, ...] = ()  # parsed from nodes_file
    engine_cli: str | None = None  # engine CLI for the local node
    local: bool = True  # include the implicit local node
    only_nodes: tuple[str, ...] = ()  # --node NAME: restrict to these

    def file_node(self, name: str) -> NodeSpec | None:
        return next((n for n in self.file_nodes if n.name == name), None)


def user_config_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("archfleet"))


def find_nodes_file(explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UsageError(f"--nodes: {explicit}: no such file")
        return path
    env = os.environ.get(ENV_NODES)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise UsageError(f"${ENV_NODES}: {env}: no such file")
        return path
    for path in (Path("nodes.toml"), user_config_dir() / "nodes.toml"):
        if path.is_file():
            return path
    return None


def make_config(nodes: str | None = None, engine_cli: str | None = None, local: bool = True,
                only_nodes: tuple[str, ...] = ()) -> Config:
    path = find_nodes_file(nodes)
    specs = load_nodes_file(path) if path else ()
    return Config(nodes_file=path, file_nodes=tuple(specs), engine_cli=engine_cli, local=local,
                  only_nodes=tuple(only_nodes))


class _Lines:
    """Line numbers of ``[nodes.NAME]`` headers and their ``key =`` lines (tomllib has none)."""

    HEADER = re.compile(r'^\s*\[\s*nodes\s*\.\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*\]')
    KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+)\s*=')

    def __init__(self, text: str):
        self.headers: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        self.duplicates: list[tuple[str, int]] = []
        current = None
        for number, line in enumerate(text.splitlines(), 1):
            m = self.HEADER.match(line)
            if m:
                current = m.group(1).strip("\"'")
                if current in self.headers:
                    self.duplicates.append((current, number))
                self.headers.setdefault(current, number)
                continue
            if line.lstrip().startswith("["):
                current = None
                continue
            m = self.KEY.match(line)
            if m and current is not None:
                self.keys.setdefault((current, m.group(1).strip('"')), number)

    def of(self, node: str, key: str | None = None) -> int:
        if key is not None and (node, key) in self.keys:
            return self.keys[(node, key)]
        return self.headers.get(node, 1)


def load_nodes_file(path: Path) -> list[NodeSpec]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    lines = _Lines(text)
    if lines.duplicates:
        name, number = lines.duplicates[0]
        raise UsageError(f"{path}:{number}: node {name!r} is defined twice (first at line {lines.of(name)})")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{path}:{m.group(1)}" if m else str(path)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise UsageError(f"{where}: not valid TOML: {message}") from None
    unknown_top = [k for k in doc if k != "nodes"]
    if unknown_top:
        raise UsageError(f"{path}:1: unknown top-level key {unknown_top[0]!r}; nodes go in [nodes.NAME] tables")
    nodes = doc.get("nodes", {})
    if not isinstance(nodes, dict):
        raise UsageError(f"{path}:1: 'nodes' must be a table of [nodes.NAME] tables")
    out = []
    for name, table in nodes.items():
        out.append(_node(path, lines, name, table))
    return out


def _node(path: Path, lines: _Lines, name: str, table: Any) -> NodeSpec:
    def fail(key: str | None, message: str) -> UsageError:
        where = f"{path}:{lines.of(name, key)}"
        return UsageError(f"{where}: node {name!r}" + (f" key {key!r}" if key else "") + f": {message}")

    if not NAME.match(name):
        raise fail(None, "names are letters, digits, '.', '_' and '-' (at most 63, not starting with a symbol)")
    if not isinstance(table, dict):
        raise fail(None, "must be a table ([nodes.NAME])")

    def get(key, types, default=None, check=None, hint=""):
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) and bool not in types:
            raise fail(key, f"expected {hint or types[0].__name__}, got {value!r}")
        if not isinstance(value, types):
            raise fail(key, f"expected {hint or types[0].__name__}, got {type(value).__name__} {value!r}")
        if check and not check(value):
            raise fail(key, f"expected {hint}, got {value!r}")
        return value

    is_local = name == "local"
    allowed = _LOCAL_KEYS if is_local else _SSH_KEYS
    for key in table:
        if key not in allowed:
            raise fail(key, "unknown key (known: " + ", ".join(sorted(allowed)) + ")"
                       + ("; the local node takes only these" if is_local else ""))
    max_builds = get("max_builds", (int,), None, lambda v: 1 <= v <= 64, "an integer 1-64")
    enabled = get("enabled", (bool,), True, hint="true or false")
    labels = get("labels", (dict,), {}, lambda v: all(isinstance(x, str) for x in v.values()),
                 "a table of strings")
    engine_cli = get("engine_cli", (str,), None, lambda v: v.strip() != "" and "\n" not in v, "a path")
    docker_host = get("docker_host", (str,), None, valid_docker_host,
                      "unix:///path or tcp://host:port (the port is required)")
    if is_local:
        return NodeSpec(name="local", transport="local", engine_cli=engine_cli, docker_host=docker_host,
                        max_builds=max_builds or 4, labels=labels, enabled=enabled,
                        source=f"{path}:{lines.of(name)}")
    transport = get("transport", (str,), "ssh", lambda v: v == "ssh", '"ssh"')
    if "host" not in table:
        raise fail(None, "missing 'host' (an address or an ~/.ssh/config alias)")
    host = get("host", (str,), None, lambda v: bool(HOST.match(v)) and not v.startswith("-"),
               "a host name, address or ~/.ssh/config alias")
    port = get("port", (int,), None, lambda v: 1 <= v <= 65535, "an integer 1-65535")
    user = get("user", (str,), None, lambda v: bool(re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", v)), "a user name")
    identity = get("identity", (str,), None)
    if identity is not None:
        key_path = Path(identity).expanduser()
        if not key_path.is_absolute():
            key_path = (path.parent / key_path).resolve()
        try:
            with open(key_path, "rb"):
                pass
        except OSError as exc:
            raise fail("identity", f"cannot read key file {str(key_path)!r}: {exc.strerror}") from None
        identity = str(key_path)
    known_hosts = get("known_hosts", (str,), None)
    if known_hosts is not None:
        kh = Path(known_hosts).expanduser()
        if not kh.is_absolute():
            kh = (path.parent / kh).resolve()
        known_hosts = str(kh)
    policy = get("host_key_policy", (str,), "strict", lambda v: v in HOST_KEY_POLICIES,
                 " or ".join(HOST_KEY_POLICIES))
    arch = None
    if "arch" in table:
        raw = get("arch", (str,), None)
        try:
            arch = parse(raw)
        except PlatformError as exc:
            raise fail("arch", str(exc)) from None
    engine = get("engine", (str,), "docker", lambda v: v == "docker", '"docker" (the only engine so far)')
    return NodeSpec(
        name=name, transport=transport, host=host, port=port, user=user, identity=identity,
        known_hosts=known_hosts, host_key_policy=policy, arch=arch, engine=engine, engine_cli=engine_cli,
        docker_host=docker_host, max_builds=max_builds or 2, labels=labels, enabled=enabled,
        source=f"{path}:{lines.of(name)}",
    )


def collect_nodes(pm, config: Config) -> list[NodeSpec]:
    nodes: list[NodeSpec] = []
    names: dict[str, NodeSpec] = {}
    from .hookcall import call_each

    for plugin, contributed in call_each(pm, "archfleet_add_nodes", config=config):
        for node in contributed or ():
            if not isinstance(node, NodeSpec):
                raise UsageError(f"plugin {plugin!r} contributed {node!r}, not a NodeSpec")
            if node.name in names:
                raise UsageError(
                    f"{node.source}: node name {node.name!r} is already used at {names[node.name].source}"
                )
            names[node.name] = node
            nodes.append(node)
    if config.only_nodes:
        unknown = [n for n in config.only_nodes if n not in names]
        if unknown:
            raise UsageError(f"--node: no node named {', '.join(unknown)} (known: {', '.join(names) or 'none'})")
        nodes = [n for n in nodes if n.name in config.only_nodes]
    nodes.sort(key=lambda n: n.name != "local")  # local first, then in the order given
    return [n for n in nodes if n.enabled]
