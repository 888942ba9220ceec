"""docker-py (the ``docker`` package), imported once, under one lock, when first needed.

Importing docker-py (and requests, urllib3 with it) takes ~45 ms of CPU. A command that never
talks to an Engine API or reads registry credentials (``ls`` of SSH nodes, ``plan``) need not
pay it, and a build can pay it while its engine builds (:func:`preload`) rather than before
(issue 17). Every archfleet import of docker goes through :func:`module`: importing it from two
threads at once races (its package imports its submodules in a cycle, and Python hands the
second thread a partially initialised module)."""

from __future__ import annotations

import threading
from types import ModuleType

_LOCK = threading.Lock()
_preloading: threading.Thread | None = None


def module() -> ModuleType:
    """The ``docker`` package, with ``docker.auth``, ``docker.credentials``, ``docker.errors`` and
    ``docker.utils.build`` (the ignore-file rule) imported. Blocking the first time (~45 ms): call it where a blocking call is allowed."""
    with _LOCK:
        import docker
        import docker.auth
        import docker.credentials
        import docker.errors
        import docker.utils.build
    return docker


def preload() -> None:
    """Start importing docker-py in a thread of its own, once per process, for a command that
    will need it soon (a build: its exports and credentials) but is waiting on something else
    now. Returns at once; :func:`module` waits for it if called meanwhile."""
    global _preloading
    with _LOCK:
        if _preloading is not None:
            return
        _preloading = threading.Thread(target=module, name="archfleet-import-docker")
    _preloading.start()
