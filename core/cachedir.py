"""Where archfleet keeps what it learns on this machine: one cache directory, found here only.

The directory is ``platformdirs.user_cache_dir("archfleet")``: ``$XDG_CACHE_HOME/archfleet``
when ``XDG_CACHE_HOME`` names an absolute directory, else ``~/.cache/archfleet``. It holds:

- ``history.sqlite``: how long past builds took (:mod:`archfleet.history`); ``ARCHFLEET_HISTORY``
  moves it or turns it off;
- ``links.json``: transfer rates to nodes (:mod:`archfleet.linkrate`);
- ``scores.json``: nodes' CPU benchmark scores (:mod:`archfleet.scores`);
- ``layers-v2/``: scans of image layers (:mod:`archfleet.layercache`);
- ``layer-prints.json``: image layers' sizes and first bytes' digests, by diff_id
  (:mod:`archfleet.layerprints`);
- ``engine-infos.json``: what local engine CLIs' ``docker info`` printed, by what it depended on
  (:mod:`archfleet.engineinfos`);
- ``contexts/``: each build context's file digests, by their stat (:mod:`archfleet.filedigests`);
- ``leases/``: this user's private lease directory, when ``$XDG_RUNTIME_DIR`` cannot hold it
  (:func:`archfleet.leases.private_root`).

``$XDG_RUNTIME_DIR`` (:func:`runtime_dir`) also holds ``archfleet/``, the sockets of this user's
``archfleet server`` processes (:mod:`archfleet.serverclient`).

The environment that moves these is read here and nowhere else: ``XDG_CACHE_HOME`` (through
platformdirs), ``XDG_RUNTIME_DIR`` and ``ARCHFLEET_HISTORY`` (a path for the history database,
or ``off``). Every function reads it when called, not at import, so a test (or a program that
embeds archfleet) may change it between commands. Nothing here creates a directory or touches
the file system: the caches do that when they write (:mod:`archfleet.cachefile`).

Only the learn stage (:mod:`archfleet.learn`) writes the caches; the stages that need a value
read it where they need it (estimates read history, the probe a node's score and link rate,
verification a layer's scan).
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "archfleet"
HISTORY_ENV = "ARCHFLEET_HISTORY"


def root() -> Path:
    """The cache directory (absolute unless even the home directory cannot be found).

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec says (platformdirs 4.x does too;
    the check keeps it so whatever platformdirs version is installed)."""
    import platformdirs

    path = Path(platformdirs.user_cache_dir(APP))
    if not path.is_absolute():
        path = Path(os.path.expanduser("~")) / ".cache" / APP
    return path


def history() -> Path | None:
    """The history database: ``$ARCHFLEET_HISTORY`` when set (a path, used as given), else
    ``history.sqlite`` in :func:`root`; None when ``ARCHFLEET_HISTORY=off`` (history off)."""
    value = os.environ.get(HISTORY_ENV) or ""
    if value == "off":
        return None
    return Path(value) if value else root() / "history.sqlite"


def links() -> Path:
    """The link-rate file (JSON, one entry per node)."""
    return root() / "links.json"


def scores() -> Path:
    """The benchmark-score file (JSON, one entry per node)."""
    return root() / "scores.json"


def cli_versions() -> Path:
    """The file of what local engine CLIs' ``--version`` printed (JSON, one entry per path,
    :mod:`archfleet.cliversions`)."""
    return root() / "cli-versions.json"


def engine_infos() -> Path:
    """The file of what local engine CLIs' ``docker info`` printed (JSON, one entry per path,
    :mod:`archfleet.engineinfos`)."""
    return root() / "engine-infos.json"


def context_digests(context: Path) -> Path:
    """The file of a context directory's remembered file digests (:mod:`archfleet.filedigests`):
    one per absolute context path, named by its sha256."""
    import hashlib

    name = hashlib.sha256(os.fsencode(str(context))).hexdigest()[:32]
    return root() / "contexts" / f"{name}.json"


def layers() -> Path:
    """The layer-scan directory (one JSON file per layer digest; v2: scans with opaque
    directories and hidden names)."""
    return root() / "layers-v2"


def layer_prints() -> Path:
    """The file of layers' prints (JSON, diff_id -> size and head digest, :mod:`archfleet.layerprints`)."""
    return root() / "layer-prints.json"


def leases() -> Path | None:
    """This user's private lease directory in the cache dir (the fallback when
    :func:`runtime_dir` cannot hold it); None when the cache dir is not an absolute path."""
    base = root()
    return base / "leases" if base.is_absolute() else None


def runtime_dir() -> Path | None:
    """``$XDG_RUNTIME_DIR`` when it names an absolute path, else None. Whether it is this
    user's and private is the caller's check (:func:`archfleet.leases.private_root`)."""
    value = os.environ.get("XDG_RUNTIME_DIR") or ""
    return Path(value) if value.startswith("/") else None
