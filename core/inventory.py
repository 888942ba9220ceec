"""Where nodes come from: plugins contribute them (``archfleet_add_nodes``); this module
collects them, checks names are unique and applies command-line selections."""

from __future__ import annotations

from pathlib import Path

import attrs

from .errors import UsageError
from .model import NodeSpec


@attrs.frozen
class Config:
    """What node-contributing and probing plugins may need from the command line."""

    nodes_file: Path | None = None
    engine_cli: str | None = None  # engine CLI for the local node
    local: bool = True  # include the implicit local node
    only_nodes: tuple[str, ...] = ()  # --node NAME: restrict to these


def collect_nodes(pm, config: Config) -> list[NodeSpec]:
    nodes: list[NodeSpec] = []
    names: dict[str, NodeSpec] = {}
    for contributed in pm.hook.archfleet_add_nodes(config=config):
        for node in contributed or ():
            if not isinstance(node, NodeSpec):
                raise UsageError(f"a plugin contributed {node!r}, not a NodeSpec")
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
    return [n for n in nodes if n.enabled]
