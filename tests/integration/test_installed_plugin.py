"""An out-of-tree plugin installed as a package and found through its entry point: the
documentation's example (docs/examples/fast_pool.py) packaged as docs/plugins.md shows
(conftest.example_plugin, on PYTHONPATH); and the built-in plugins switched off by name."""

from __future__ import annotations

import json


def test_installed_plugin_is_listed(cli, example_plugin):
    doc = json.loads(cli.archfleet("plugins", "--format", "json", env=example_plugin, check=True).stdout)
    fast = next(p for p in doc["plugins"] if p["name"] == "fast-pool")
    assert fast["source"] == "archfleet-fast-pool" and fast["version"] == "0.1.0"
    assert fast["hooks"] == ["archfleet_offer", "archfleet_run"]
    assert {"native", "qemu", "cross", "reuse", "local", "ssh", "estimates"} <= {p["name"] for p in doc["plugins"]}


def test_disabled_plugins_are_not_loaded_and_are_listed_last(cli, example_plugin):
    """cli.md: `archfleet plugins` lists loaded plugins, disabled ones last
    (ARCHFLEET_DISABLE_PLUGINS names built-in or installed ones)."""
    env = {**example_plugin, "ARCHFLEET_DISABLE_PLUGINS": "fast-pool,reuse,qemu"}
    doc = json.loads(cli.archfleet("plugins", "--format", "json", env=env, check=True).stdout)
    assert {"fast-pool", "reuse", "qemu"}.isdisjoint(p["name"] for p in doc["plugins"])
    assert doc["disabled"] == ["fast-pool", "qemu", "reuse"]
    table = cli.archfleet("plugins", env=env, check=True).stdout.splitlines()
    assert table[-1] == "disabled: fast-pool, qemu, reuse"
    assert not any(line.split()[:1] in (["reuse"], ["fast-pool"]) for line in table[:-1])
