"""What ``docker info`` printed for an engine CLI on this machine, kept while nothing its answer
depends on changed (``engine-infos.json`` in the user's cache dir).

The docker adapter's probe asks each candidate CLI's ``docker info`` for the daemon's version,
whether it is rootless, and the CLI's plugins (buildx). Two CLIs starting and a daemon
answering took 60-70 ms, the longest step before a one-platform build's ``docker build``
(issue 17; with ``archfleet server`` the longest by far). The answer is a function of:

- the CLI program (its file's identity, :func:`archfleet.cliversions.identity`);
- the daemon it asks: ``DOCKER_HOST`` (the node's ``docker_host`` first), else the default
  socket ``/var/run/docker.sock``; only a Unix socket named by an absolute path is kept, by the
  identity of the socket file (device, inode, change time: dockerd makes a new one each time
  it starts) and by what the daemon answers to ``GET /_ping`` now (its version and API
  version: a daemon restarted behind a socket systemd keeps, as with socket activation, still
  answers anew; nothing answering is never kept); ``DOCKER_CONTEXT`` other than ``default``,
  or a ``currentContext`` in the CLI's ``config.json`` without ``DOCKER_HOST``, is never kept;
- the CLI's configuration (``$DOCKER_CONFIG/config.json``, by identity), its plugins (every
  file in each ``cli-plugins`` directory the CLI reads, by identity) and the environment it
  reads (every ``DOCKER_*`` and ``BUILDX_*`` variable: ``DOCKER_API_VERSION`` changes its
  answer).

:func:`identity` gathers those; a probe of this machine reads an answer kept under the same
identity (:func:`recall`) instead of starting the CLI, within :data:`TTL`. Only answers that
name a daemon version, without errors, are kept, and only the learn stage writes them
(:func:`store`), like the CLIs' ``--version`` answers (:mod:`archfleet.cliversions`).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
from typing import Iterable

from . import cachedir, cachefile, cliversions
from .model import EngineInfo

# seconds an answer is kept even when nothing it depends on changed
TTL = 3600
DEFAULT_SOCKET = "/var/run/docker.sock"
# where the docker CLI looks for plugins besides $DOCKER_CONFIG/cli-plugins (docker/cli
# cli-plugins/manager: defaultSystemPluginDirs on Linux)
SYSTEM_PLUGIN_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
                      "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins")


def _file_id(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _dir_id(path: str) -> list | None:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return None
    entries = []
    for name in names:
        try:
            entries.append([name, *_file_id(os.stat(os.path.join(path, name)))])
        except OSError:
            entries.append([name])
    return entries


def unix_daemon(docker_host: str | None = None, environ=None) -> tuple[str, str, str, dict, list | None] | None:
    """The daemon the docker CLI (and docker-py's ``from_env``) talks to, when it is a Unix
    socket named without a CLI context: (socket path, ``DOCKER_HOST`` as used, the CLI's config
    directory, its config.json, that file's identity or None when missing), else None. ``docker_host``: the
    node's, which wins over ``DOCKER_HOST``. ``DOCKER_CONTEXT`` other than ``default``, or a
    ``currentContext`` in config.json without a ``DOCKER_HOST``, is None: docker-py does not
    read contexts, and a context's endpoint is not a file. Blocking (a small file)."""
    environ = os.environ if environ is None else environ
    if environ.get("DOCKER_CONTEXT") not in (None, "", "default"):
        return None
    host = docker_host or environ.get("DOCKER_HOST") or ""
    config_dir = environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    config_path = os.path.join(config_dir, "config.json")
    try:
        with open(config_path, "rb") as f:
            config_st = os.fstat(f.fileno())
            config = json.loads(f.read() or b"{}")
        config_seen = _file_id(config_st)
    except FileNotFoundError:
        config, config_seen = {}, None
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if not host and config.get("currentContext") not in (None, "", "default"):
        return None
    if host and not host.startswith("unix://"):
        return None
    path = host[len("unix://"):] if host else DEFAULT_SOCKET
    if not os.path.isabs(path):  # relative to the working directory: the CLI's, docker-py's differ
        return None
    return path, host, config_dir, config, config_seen


def identity(cli: str, docker_host: str | None = None, environ=None) -> list | None:
    """Everything ``cli``'s ``docker info`` answer depends on (module doc), as a JSON-able list:
    the program's identity then :func:`daemon_identity`; None when the answer must not be kept
    (not an ELF program, or :func:`daemon_identity` is None). ``docker_host``: the node's, which
    wins over ``DOCKER_HOST``. Blocking (stats, small files, a request to the daemon)."""
    daemon = daemon_identity(docker_host, environ)
    return with_program(cliversions.identity(cli) if daemon is not None else None, daemon)


def with_program(program: tuple[int, ...] | None, daemon: list | None) -> list | None:
    """:func:`identity` from the program's (:func:`archfleet.cliversions.identity`) and a
    :func:`daemon_identity` made once for every candidate CLI (the daemon, config and plugins
    are the same for each); None when either is."""
    return None if program is None or daemon is None else [list(program), *daemon]


def daemon_identity(docker_host: str | None = None, environ=None) -> list | None:
    """What every CLI's ``docker info`` answer depends on besides the program itself: the
    daemon's Unix socket file and its ``/_ping`` answer, the CLI's config.json, its plugins and
    its environment (module doc); None for a daemon not on a Unix socket (:func:`unix_daemon`),
    not answering, or a config that cannot be read. Blocking (stats, small files, a request)."""
    environ = os.environ if environ is None else environ
    daemon = unix_daemon(docker_host, environ)
    if daemon is None:
        return None
    path, host, config_dir, config, config_seen = daemon
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    answer = _ping(path)
    if answer is None:
        return None
    extra = config.get("cliPluginsExtraDirs") or []
    if not isinstance(extra, list) or not all(isinstance(d, str) for d in extra):
        return None
    plugin_dirs = [os.path.join(config_dir, "cli-plugins"), *extra, *SYSTEM_PLUGIN_DIRS]
    cli_env = sorted([k, v] for k, v in environ.items() if k.startswith(("DOCKER_", "BUILDX_")))
    return [host, [st.st_dev, st.st_ino, st.st_ctime_ns], answer, config_seen,
            [[d, _dir_id(d)] for d in plugin_dirs], cli_env]


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=2)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _ping(path: str) -> list | None:
    """What the daemon on ``path`` answers to ``GET /_ping`` (the Engine API's cheapest call,
    ~1 ms): its ``Server`` (``Docker/20.10.24+dfsg1 (linux)``), ``Api-Version``,
    ``Builder-Version`` and ``Ostype`` headers; None when nothing answers 200. A daemon
    restarted behind a socket systemd keeps (socket activation) answers anew: an upgrade
    shows in its version."""
    conn = _UnixHTTP(path)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            return None
        return [resp.getheader(h) for h in ("Server", "Api-Version", "Builder-Version", "Ostype")]
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def recall(cli: str, now: list | None) -> EngineInfo | None:
    """What ``cli``'s ``docker info`` printed when everything it depends on was ``now`` (its
    :func:`identity`), within :data:`TTL`; else None. Blocking (a small file)."""
    tail = cachefile.recall_lines(cachedir.engine_infos(), cli, now, TTL)
    return EngineInfo(cli, json.dumps(now), tail) if tail is not None else None


def store(answers: Iterable[EngineInfo]) -> None:
    """Keep each answer (under the file's lock, replaced whole). Never raises for the file
    system. Blocking: call it in a thread."""
    cachefile.keep_lines(cachedir.engine_infos(), ((a.path, json.loads(a.identity), a.tail) for a in answers))
