"""httpx, imported when first used, without its command line (issue 17: fixed cost per run).

Importing httpx takes 30-70 ms of CPU, and its package also imports its command line
(``httpx._main``: click, rich and pygments, all installed as archfleet's own dependencies),
another ~39 ms. :data:`httpx` is the package as a lazy module (:class:`importlib.util.LazyLoader`):
it loads at its first attribute, when a registry client is first made, so a command that asks
no registry (``ls`` of SSH nodes) never pays it. ``httpx._main`` is a stub in archfleet's
process only (the ``httpx`` console script is another process). Import :data:`httpx` from
here, not the package, in archfleet's modules."""

from __future__ import annotations

import importlib.util
import sys
import types


def lazy(name: str) -> types.ModuleType:
    """The module ``name``, loaded on its first attribute access (the module itself when
    something imported it already)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stub_command_line() -> None:
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    stub = types.ModuleType("httpx._main", "httpx's command line, not loaded by archfleet")

    def main() -> None:
        raise SystemExit("httpx's command line is not loaded in archfleet's process")

    stub.main = main
    sys.modules["httpx._main"] = stub


_stub_command_line()
httpx = lazy("httpx")
