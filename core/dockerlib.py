"""docker-py (the ``docker`` package), imported once, under one lock, when first needed.

Importing docker-py (and requests, urllib3 with it) takes ~45 ms of CPU. A command that never
talks to an Engine API, reads registry credentials or applies an ignore file need not pay it:
a build of a context without ``.dockerignore`` on nodes whose transport streams the export
(``docker save`` by the CLI) never imports it (issue 17). Every archfleet import of docker goes through :func:`module`: importing it from two
threads at once races (its package imports its submodules in a cycle, and Python hands the
second thread a partially initialised module)."""

from __future__ import annotations

import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()


def loaded() -> bool:
    """Whether :func:`module` has loaded docker-py in this process already (``archfleet server``
    loads it once for every command it runs): then an Engine API call costs no import."""
    return "docker.utils.build" in sys.modules


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
