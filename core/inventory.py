"""Where nodes come from, and which nodes files archfleet trusts.

``nodes.toml`` is found in this order: ``--nodes FILE``, ``$ARCHFLEET_NODES``, then the user
config dir (``~/.config/archfleet/nodes.toml``). It holds one ``[nodes.NAME]`` table per node;
``[nodes.local]`` adjusts the implicit local node. Every validation error names ``file:line``
and the key.

This module knows the keys every node has (``transport``, ``arch``, ``engine`` (``docker`` or
``podman``: which engine adapter builds there, :mod:`archfleet.engines`), ``engine_cli``,
``docker_host`` (docker nodes only), ``max_builds``, ``labels``, ``enabled``). A transport's own keys (an SSH node's
``host``, ``port``, ...) are declared by its plugin (``archfleet_node_keys``: name ->
:class:`Key`) and validated here the same way, into ``NodeSpec.settings``; this module holds no
transport's schema. Plugins contribute nodes through ``archfleet_add_nodes``; :func:`combine`
checks names are unique and applies ``--node`` selections.

The trust rule (like git's ``safe.directory``): a nodes file can run programs (``engine_cli``),
pick the daemon that receives registry credentials (``docker_host``) and weaken host-key checks
(``known_hosts``, ``host_key_policy``, ``identity``), so it is read only when the user chose it:
named with ``--nodes`` or ``$ARCHFLEET_NODES``, or in their own config dir. ``./nodes.toml`` in
the working directory (a checkout is someone else's input) is never read implicitly; when one
is there and not used, :func:`make_config` says so in one line. A file someone other than the
user or root could change is refused (owned by another user; world-writable; group-writable
unless the group is the owner's private group, as Debian's OpenSSH allows for ~/.ssh/config).
A relative ``engine_cli`` of the local node is relative to the file, never to the working
directory.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import attrs

from .engines import KINDS as ENGINES
from .errors import UsageError
from .model import NodeSpec
from .platforms import PlatformError, parse_target
from .transport import valid_docker_host

ENV_NODES = "ARCHFLEET_NODES"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_BYTES = 1 << 20  # a nodes file is a few KB; anything near this is not one
DEFAULT_TRANSPORT = "ssh"  # a node that names no transport (as in every nodes.toml so far)

_LOCAL_KEYS = {"engine", "engine_cli", "docker_host", "max_builds", "labels", "enabled"}
_NODE_KEYS = _LOCAL_KEYS | {"transport", "arch"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# TOML's names for its value types (toml.io, v1.0.0), in the order isinstance is asked (bool is an int)
_TOML_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (list, "array"),
               (dict, "table"))


def toml_type(kind: type, value: Any = None) -> str:
    """TOML's name for values of Python type ``kind`` (``str`` -> "string", ``dict`` -> "table",
    a ``datetime`` -> "offset date-time" or, with ``value`` naive, "local date-time")."""
    for python, name in _TOML_TYPES:
        if issubclass(kind, python):
            return name
    if kind.__name__ == "datetime":
        return "local date-time" if value is not None and value.tzinfo is None else "offset date-time"
    return {"date": "local date", "time": "local time"}.get(kind.__name__, kind.__name__)


_SHOWN = 80  # characters of a value an error line shows


def shown(value: Any) -> str:
    """:func:`toml_text`, cut to :data:`_SHOWN` characters (a 300-item array is not one line)."""
    text = toml_text(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 1] + "…"


def toml_text(value: Any) -> str:
    """``value`` as it is written in a TOML file, on one line: ``true``, ``7``, ``"22"`` (a basic
    string, its control characters escaped), ``["a", true]``, ``{ port = 22 }``; so an error
    shows what the user wrote, not Python's spelling of it (``True``, ``'22'``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{k if _BARE_KEY.fullmatch(k) else toml_text(k)} = {toml_text(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if hasattr(value, "isoformat"):
        text = value.isoformat()
        if "." in text:  # 07:32:00.999000 -> 07:32:00.999, as written
            head, _, tail = text.partition(".")
            digits = len(tail) - len(tail.lstrip("0123456789"))
            frac = tail[:digits].rstrip("0")
            text = head + ("." + frac if frac else "") + tail[digits:]
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    return str(value)


@attrs.frozen
class Key:
    """One ``nodes.toml`` key a transport's plugin reads, as it declares it (``archfleet_node_keys``).

    ``kind``: the TOML type(s) accepted (``str``, ``int``, ``bool``, ``dict``; a bool is never
    taken for an int). ``hint``: what is expected, for messages ("an integer 1-65535").
    ``check``: a further test of the value. ``default``: the value when the key is absent.
    ``required``: when set, the key must be there and this says what it is ("an address or an
    ~/.ssh/config alias"). ``path``: ``"file"`` makes the value a path (``~`` is the user's
    home, a relative path is relative to the nodes file); ``"readable"`` also requires that the
    file can be opened now. The validated value goes into ``NodeSpec.settings`` under the key."""

    kind: type | tuple[type, ...] = str
    hint: str = ""
    check: Callable[[Any], bool] | None = None
    default: Any = None
    required: str | None = None
    path: str | None = None


@attrs.frozen
class Config:
    """What node-contributing and probing plugins may need from the command line."""

    nodes_file: Path | None = None
    file_nodes: tuple[NodeSpec, ...] = ()  # parsed from nodes_file
    engine_cli: str | None = None  # engine CLI for the local node
    local: bool = True  # include the implicit local node
    only_nodes: tuple[str, ...] = ()  # --node NAME: restrict to these

    def file_node(self, name: str) -> NodeSpec | None:
        """The node the nodes file defines under ``name``, or None."""
        return next((n for n in self.file_nodes if n.name == name), None)


def user_config_dir() -> Path:
    """archfleet's config directory for this user (``~/.config/archfleet``, XDG aware)."""
    import platformdirs

    return Path(platformdirs.user_config_dir("archfleet"))


def find_nodes_file(explicit: str | None) -> Path | None:
    """The nodes file to read: ``explicit`` (``--nodes``), ``$ARCHFLEET_NODES``, else the one in
    the user config dir if it exists. Never ``./nodes.toml`` unless named. Raises
    :class:`UsageError` for a named file that does not exist."""
    for value, what in ((explicit, "--nodes"), (os.environ.get(ENV_NODES), f"${ENV_NODES}")):
        if value:
            message = not_utf8(what, value)
            if message:
                raise UsageError(message)
            path = Path(value).expanduser()
            if not path.exists():
                raise UsageError(f"{what}: {value}: no such file")
            return path
    path = user_config_dir() / "nodes.toml"
    return path if path.is_file() else None


def ignored_local_file(used: Path | None) -> str | None:
    """One line for a ``./nodes.toml`` that defines something and is not read, else None.
    (Read without blocking: a FIFO or other special file there gets no note.)"""
    here = Path("nodes.toml")
    try:
        if used is not None and here.resolve() == used.resolve():
            return None
        fd = os.open(here, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        head = os.read(fd, MAX_BYTES) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        head = b""
    finally:
        os.close(fd)
    if not re.search(rb"(?m)^\s*\[", head):
        return None  # only comments (an example): nothing is being left out
    return (f"./nodes.toml is not read unless you name it (it can run programs): pass --nodes nodes.toml "
            f"or set ${ENV_NODES} if you trust it" + (f"; using {used}" if used else ""))


def make_config(nodes: str | None = None, engine_cli: str | None = None, local: bool = True,
                only_nodes: tuple[str, ...] = (), note: Callable[[str], None] | None = None,
                keys: Mapping[str, Mapping[str, Key]] | None = None) -> Config:
    """The command's :class:`Config`: the nodes file found and loaded (see :func:`find_nodes_file`)
    with the transports' ``keys`` (``archfleet_node_keys``: transport -> key -> :class:`Key`).
    ``note`` receives the one line about an ignored ``./nodes.toml``, if there is one."""
    path = find_nodes_file(nodes)
    if note is not None and nodes is None and not os.environ.get(ENV_NODES):
        message = ignored_local_file(path)
        if message:
            note(message)
    specs = load_nodes_file(path, keys or {}) if path else ()
    return Config(nodes_file=path, file_nodes=tuple(specs), engine_cli=engine_cli, local=local,
                  only_nodes=tuple(only_nodes))


def not_utf8(what: str, value: str) -> str | None:
    """One line when ``value`` (from argv or the environment, where bytes that are not UTF-8
    arrive as surrogate escapes) cannot be encoded as UTF-8, naming its byte offset; else None."""
    try:
        value.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        offset = len(value[:exc.start].encode("utf-8"))
        return f"{what} {value!r}: not UTF-8 at byte {offset}; archfleet takes UTF-8 names and values"


def read_trusted(path: Path) -> str:
    """The text of nodes file ``path``, if it is a regular file only the user or root can change.

    Opened once and checked on the open file (``fstat``), so the file checked is the file read.
    Raises :class:`UsageError`: unreadable, not a regular file, not trusted, larger than 1 MiB,
    or not UTF-8 (naming the line and byte offset)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: not a regular file; give a nodes.toml file")
        problem = _untrusted(st)
        if problem:
            raise UsageError(f"{path}: refusing a nodes file {problem} (it can run programs); "
                             "chmod go-w it or copy it to a file of your own")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise UsageError(f"{path}: larger than {MAX_BYTES} bytes; this is not a nodes file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 at byte {exc.start}; TOML files are UTF-8") from None
    return text.removeprefix("\ufeff")  # a BOM some editors write


def _untrusted(st: os.stat_result) -> str | None:
    """Why someone other than the user or root could change a file with this stat, or None."""
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        return f"owned by uid {st.st_uid} (not you or root)"
    if st.st_mode & stat.S_IWOTH:
        return f"anyone can write (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & stat.S_IWGRP and not _private_group(st.st_uid, st.st_gid):
        return f"its group can write (mode {stat.S_IMODE(st.st_mode):04o}, gid {st.st_gid})"
    return None


def _private_group(uid: int, gid: int) -> bool:
    """The owner's own group with nobody else in it (a Debian user-private group)."""
    try:
        user, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except KeyError:
        return False
    return user.pw_gid == gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


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


def load_nodes_file(path: Path, keys: Mapping[str, Mapping[str, Key]]) -> list[NodeSpec]:
    """The nodes in ``path`` (read with :func:`read_trusted`), validated with the keys every node
    has and those its transport declares (``keys``: transport -> key -> :class:`Key`); raises
    :class:`UsageError` naming ``file:line``, the node and the key for the first problem."""
    text = read_trusted(path)
    lines = _Lines(text)
    if lines.duplicates:
        name, number = lines.duplicates[0]
        raise UsageError(f"{path}:{number}: node {name!r} is defined twice (first at line {lines.of(name)})")
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise UsageError(f"{path}: not valid TOML: nested too deeply") from None
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
        out.append(_node(path, lines, name, table, keys))
    return out


def _node(path: Path, lines: _Lines, name: str, table: Any, keys: Mapping[str, Mapping[str, Key]]) -> NodeSpec:
    def fail(key: str | None, message: str) -> UsageError:
        where = f"{path}:{lines.of(name, key)}"
        return UsageError(f"{where}: node {name!r}" + (f" key {key!r}" if key else "") + f": {message}")

    if not NAME.fullmatch(name):
        raise fail(None, "names are letters, digits, '.', '_' and '-' (at most 63, not starting with a symbol)")
    if not isinstance(table, dict):
        raise fail(None, "must be a table ([nodes.NAME])")

    def get(key, types, default=None, check=None, hint=""):
        if key not in table:
            return default
        value = table[key]
        types = types if isinstance(types, tuple) else (types,)
        expected = hint or f"a {toml_type(types[0])}"
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise fail(key, f"expected {expected}, got {toml_type(type(value), value)} {shown(value)}")
        if isinstance(value, str) and _CONTROL.search(value):
            raise fail(key, f"control characters are not allowed, got {shown(value)}")
        if check and not check(value):
            raise fail(key, f"expected {hint}, got {shown(value)}")
        return value

    def file_path(value: str) -> Path:
        """A path in the file: ``~`` is the user's home, relative is relative to the file."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(path.parent.absolute() / p))

    is_local = name == "local"
    transport = None
    own: Mapping[str, Key] = {}
    if not is_local:
        # the transport first: it decides which other keys the node may have, so a transport
        # no plugin provides is the mistake to name, not the keys it would have declared
        known = sorted(keys)
        transport = get("transport", str, DEFAULT_TRANSPORT, lambda v: v in keys,
                        " or ".join(f'"{t}"' for t in known) + " (a transport a plugin provides)" if known
                        else "a transport a plugin provides (none is loaded)")
        if transport not in keys:  # the default transport, and its plugin is not loaded
            raise fail(None, f"no plugin provides transport {transport!r} (is it disabled?)")
        own = keys[transport]
    allowed = _LOCAL_KEYS if is_local else _NODE_KEYS | set(own)
    for key in table:
        if key not in allowed:
            raise fail(key, "unknown key (known: " + ", ".join(sorted(allowed)) + ")"
                       + ("; the local node takes only these" if is_local else ""))
    max_builds = get("max_builds", int, None, lambda v: 1 <= v <= 64, "an integer 1-64")
    enabled = get("enabled", bool, True, hint="true or false")
    labels = get("labels", dict, {}, lambda v: all(isinstance(x, str) and not _CONTROL.search(k + x)
                                                   for k, x in v.items()), "a table of strings without control characters")
    engine_cli = get("engine_cli", str, None, lambda v: v.strip() != "", "a path")
    docker_host = get("docker_host", str, None, valid_docker_host,
                      "unix:///absolute/path or tcp://host:port (the port is required)")
    engine = get("engine", str, "docker", lambda v: v in ENGINES, " or ".join(f'"{k}"' for k in ENGINES))
    if engine != "docker" and docker_host is not None:
        raise fail("docker_host", f"a {engine} node has no Docker socket (archfleet drives {engine} through its CLI); "
                                  "remove docker_host, or set engine = \"docker\"")
    if is_local:
        if engine_cli is not None and "/" in engine_cli:
            engine_cli = str(file_path(engine_cli))  # never relative to the working directory
        return NodeSpec(name="local", transport="local", engine=engine, engine_cli=engine_cli,
                        docker_host=docker_host, max_builds=max_builds or 4, labels=labels, enabled=enabled,
                        source=f"{path}:{lines.of(name)}")
    settings: dict[str, Any] = {}
    for key, spec in own.items():
        if key not in table:
            if spec.required:
                raise fail(None, f"missing {key!r} ({spec.required})")
            if spec.default is not None:
                settings[key] = spec.default
            continue
        value = get(key, spec.kind, None, spec.check, spec.hint)
        if spec.path:
            value = str(file_path(value))
            if spec.path == "readable":
                try:
                    with open(value, "rb"):
                        pass
                except OSError as exc:
                    raise fail(key, f"cannot read file {value!r}: {exc.strerror}") from None
        settings[key] = value
    arch = None
    if "arch" in table:
        raw = get("arch", str, None)
        try:
            arch = parse_target(raw)
        except PlatformError as exc:
            raise fail("arch", str(exc)) from None
    return NodeSpec(
        name=name, transport=transport, arch=arch, engine=engine, engine_cli=engine_cli,
        docker_host=docker_host, max_builds=max_builds or 2, labels=labels, enabled=enabled,
        source=f"{path}:{lines.of(name)}", settings=settings,
    )


def combine(contributed: Iterable[tuple[str, NodeSpec]], config: Config) -> list[NodeSpec]:
    """The enabled nodes from what plugins contributed (``(plugin, node)`` pairs, in order):
    names must be unique (a duplicate is a :class:`UsageError` naming both places), ``--node``
    selections (``config.only_nodes``) must name known nodes and restrict to them, and the
    ``local`` node comes first, the others in the order given."""
    nodes: list[NodeSpec] = []
    names: dict[str, NodeSpec] = {}
    for _plugin, node in contributed:
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
