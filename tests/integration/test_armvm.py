"""A real arm64 node (Debian arm64 under qemu-system-aarch64): probed, built on natively, and
used or avoided by the planner on the evidence."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from labtools import child_configs, unique

pytestmark = pytest.mark.armvm


def report(line: str) -> None:
    """Figures for the CI log (printed in pytest's summary)."""
    from conftest import FIGURES

    FIGURES.append(line)


def test_ls_shows_the_vm_as_native_arm64(lab, armvm):
    got = {n["name"]: n for n in json.loads(lab.archfleet("ls", "--format", "json", "--nodes", str(armvm.toml),
                                                          check=True).stdout)}
    vm = got["armvm"]
    assert vm["reachable"], vm
    assert vm["native"][0] == "linux/arm64" and "linux/arm/v7" in vm["native"]
    assert vm["builder"] == "buildkit"
    report(f"armvm: booted in {armvm.boot_seconds:.0f}s, benchmark score {vm['score']}")


def test_pinned_native_build_on_the_vm_is_really_arm64(lab, armvm, tmp_path):
    repo, t = "promises/armvm", unique("native")
    tag = f"{lab.registry}/{repo}:{t}"
    meta = tmp_path / "m.json"
    started = time.time()
    lab.archfleet("build", "-q", "--nodes", str(armvm.toml), "--platform", "linux/arm64",
                  "--node", "linux/arm64=native@armvm", "-t", tag, "--push", "--metadata-file", str(meta),
                  "--build-arg", f"N={uuid.uuid4().hex}", "examples/arch-test", check=True, timeout=1200)
    took = time.time() - started
    entry = json.loads(meta.read_text())["archfleet.platforms"]["linux/arm64"]
    assert (entry["node"], entry["strategy"]) == ("armvm", "native")
    assert child_configs(lab.registry, repo, t)["linux/arm64"]["architecture"] == "arm64"
    assert lab.run_image(tag, "linux/arm64") == "aarch64"
    report(f"armvm: native build + push of examples/arch-test on the VM took {took:.0f}s")


def test_planner_prefers_the_x86_host_for_a_trivial_image_and_says_why(lab, armvm):
    plan = json.loads(lab.archfleet("plan", "--format", "json", "--nodes", str(armvm.toml), "--platform",
                                    "linux/arm64", "examples/arch-test", check=True).stdout)
    entry = plan["platforms"][0]
    assert entry["node"] == "local" and entry["strategy"] in ("qemu", "cross"), json.dumps(plan, indent=1)
    vm = [a for a in entry["alternatives"] if a["node"] == "armvm"]
    assert vm and vm[0]["strategy"] == "native" and vm[0]["estimate_seconds"] > entry["estimate_seconds"]
    assert "slower" in vm[0]["why_not"]
    table = lab.archfleet("plan", "--nodes", str(armvm.toml), "--platform", "linux/arm64", "examples/arch-test",
                          check=True).stdout
    assert "not native@armvm" in table


@pytest.mark.parametrize("emulators_removed", ["linux/arm64"], indirect=True)
def test_without_the_host_emulator_the_vm_builds_it(lab, armvm, emulators_removed, tmp_path):
    tag = f"{lab.registry}/promises/armvm:{unique('only')}"
    meta = tmp_path / "m.json"
    plan = json.loads(lab.archfleet("plan", "--format", "json", "--nodes", str(armvm.toml), "--platform",
                                    "linux/arm64", "examples/arch-test", check=True).stdout)
    assert plan["platforms"][0]["node"] == "armvm"
    lab.archfleet("build", "-q", "--nodes", str(armvm.toml), "--platform", "linux/arm64", "-t", tag, "--push",
                  "--metadata-file", str(meta), "--build-arg", f"N={uuid.uuid4().hex}", "examples/arch-test",
                  check=True, timeout=1200)
    assert json.loads(meta.read_text())["archfleet.platforms"]["linux/arm64"]["node"] == "armvm"
