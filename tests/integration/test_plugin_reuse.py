"""An out-of-tree strategy plugin, installed as a package: examples/plugins/archfleet-reuse
(built and found through its entry point on PYTHONPATH: conftest.reuse_plugin)."""

from __future__ import annotations

import json
import uuid


def test_installed_plugin_is_listed(cli, reuse_plugin):
    doc = json.loads(cli.archfleet("plugins", "--format", "json", env=reuse_plugin, check=True).stdout)
    reuse = next(p for p in doc["plugins"] if p["name"] == "reuse")
    assert reuse["source"] == "archfleet-reuse" and reuse["version"] == "0.1.0"
    assert reuse["hooks"] == ["archfleet_estimate", "archfleet_offer", "archfleet_run"]
    assert {"native", "qemu", "cross", "local", "ssh", "estimates"} <= {p["name"] for p in doc["plugins"]}


def test_unchanged_context_is_not_rebuilt_and_the_index_is_the_same(lab, reuse_plugin, tmp_path):
    ctx = tmp_path / "ctx"  # the metadata files go beside it, not in it
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nARG N\nRUN echo $N > /n\nCMD [\"uname\", \"-m\"]\n")
    tag = f"{lab.registry}/promises/reuse:{uuid.uuid4().hex[:8]}"
    args = ["--platform", "linux/amd64,linux/arm64,linux/s390x", "-t", tag, "--push", "--build-arg", "N=1", str(ctx)]
    first = lab.archfleet("build", "-q", "--metadata-file", str(tmp_path / "m1.json"), *args,
                          env=reuse_plugin, check=True)
    m1 = json.loads((tmp_path / "m1.json").read_text())["archfleet.platforms"]
    assert "reuse" not in {e["strategy"] for e in m1.values()}
    plan = json.loads(lab.archfleet("plan", "--format", "json", *args, env=reuse_plugin, check=True).stdout)
    assert {p["strategy"] for p in plan["platforms"]} == {"reuse"}
    assert all(any(a["strategy"] in ("native", "qemu") for a in p["alternatives"]) for p in plan["platforms"])
    second = lab.archfleet("build", "--progress", "plain", "--metadata-file", str(tmp_path / "m2.json"), *args,
                           env=reuse_plugin, check=True)
    m2 = json.loads((tmp_path / "m2.json").read_text())["archfleet.platforms"]
    assert {e["strategy"] for e in m2.values()} == {"reuse"}
    assert "] building" not in second.stderr  # nothing was built
    assert second.stdout.strip() == first.stdout.strip()  # the same index
    assert lab.run_image(tag, "linux/s390x") == "s390x"
    # a changed build arg is a different context: built again
    args[args.index("N=1")] = "N=2"
    third = lab.archfleet("build", "-q", "--metadata-file", str(tmp_path / "m3.json"), *args,
                          env=reuse_plugin, check=True)
    m3 = json.loads((tmp_path / "m3.json").read_text())["archfleet.platforms"]
    assert "reuse" not in {e["strategy"] for e in m3.values()}
    assert third.stdout.strip() != first.stdout.strip()


def test_disabled_plugins_are_not_loaded_and_are_listed_last(cli, reuse_plugin):
    """cli.md: `archfleet plugins` lists loaded plugins, disabled ones last
    (ARCHFLEET_DISABLE_PLUGINS names built-in or installed ones)."""
    env = {**reuse_plugin, "ARCHFLEET_DISABLE_PLUGINS": "reuse,qemu"}
    doc = json.loads(cli.archfleet("plugins", "--format", "json", env=env, check=True).stdout)
    assert {"reuse", "qemu"}.isdisjoint(p["name"] for p in doc["plugins"]) and doc["disabled"] == ["qemu", "reuse"]
    table = cli.archfleet("plugins", env=env, check=True).stdout.splitlines()
    assert table[-1] == "disabled: qemu, reuse" and not any(line.split()[:1] == ["reuse"] for line in table)
