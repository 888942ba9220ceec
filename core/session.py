"""One command's run of archfleet, as plugins see it across hooks.

A plugin keeps what must outlive one hook call (connections to its nodes, a client it opened
at probe time and reuses for the build) in ``session.state(<plugin name>)``, a dict of its own,
and closes it in ``archfleet_session_end``. Nothing of the kind lives in module globals, so two
commands in one process (tests, an embedding program) never share connections.
"""

from __future__ import annotations

from typing import Any


class Session:
    """Per-command state for plugins. Made by the pipeline for each command and handed to
    ``archfleet_add_nodes``, ``archfleet_probe``, ``archfleet_offer``, ``archfleet_connect``,
    ``archfleet_run`` and ``archfleet_session_end``. ``registry`` is the command's registry
    client when it has one (a build), for plugins that read the registry."""

    def __init__(self) -> None:
        self._state: dict[str, dict[str, Any]] = {}
        self.ended = False
        # the command's registry client (an archfleet.registry.RegistryClient) once the pipeline
        # opened one (a build): a plugin that reads the registry uses it rather than a client of
        # its own, sharing its connections, tokens and what it already read; None otherwise
        self.registry = None

    def state(self, plugin: str) -> dict[str, Any]:
        """The dict ``plugin`` keeps its things in for this command (made on first use)."""
        return self._state.setdefault(plugin, {})

    def __repr__(self) -> str:
        return f"Session(plugins={sorted(self._state)}, ended={self.ended})"
