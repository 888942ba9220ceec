"""Two archfleet runs sharing the lab: the second sees the build slots the first holds on a
node (its leases) and plans around them; the leases go when the first run ends."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid

from conftest import REPO


def ls(lab, nodes):
    proc = lab.archfleet("ls", "--format", "json", "--nodes", str(nodes.toml), check=True)
    return {n["name"]: n for n in json.loads(proc.stdout)}


def plan(lab, nodes, *extra):
    proc = lab.archfleet("plan", "--format", "json", *nodes.args("--no-local", "--platform", "linux/amd64",
                                                                "--build-arg", f"BASE={nodes.base}", *extra),
                         "examples/arch-test", check=True)
    return json.loads(proc.stdout)["platforms"][0]


def test_a_second_run_plans_around_the_slots_the_first_holds(lab, nodes, tmp_path):
    ctx = tmp_path / "slow"
    ctx.mkdir()
    # Several RUNs: a prior of ~30 s per build, so the leases stay well inside their estimates
    # while this test looks at them.
    (ctx / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nARG N\nRUN echo $N && sleep 20\n"
                                    + "RUN true\n" * 5)
    idle_pinned = plan(lab, nodes, "--node", "n1")
    # leases other tests' cut-off builds may have left count until their heartbeat is 75 s
    # old: this test looks only at leases with well over 10 s to go (its own)
    tag = f"{nodes.registry}/shared:{uuid.uuid4().hex[:8]}"
    first = subprocess.Popen(
        [sys.executable, "-m", "archfleet.cli", "build", "-q", *nodes.args(
            "--no-local", "--platform", "linux/amd64,linux/386", "--node", "n1", "-t", tag, "--push",
            "--build-arg", f"BASE={nodes.base}", "--build-arg", f"N={uuid.uuid4().hex}"), str(ctx)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while len([b for b in ls(lab, nodes)["n1"]["busy"] if b > 10]) < 2:
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.5)
        held = [b for b in ls(lab, nodes)["n1"]["busy"] if b > 10]
        table = lab.archfleet("ls", "--nodes", str(nodes.toml), check=True).stdout
        row = re.search(r"^n1\s+ready \((\d+) busy\)", table, re.M)
        assert row and int(row.group(1)) >= 2, table

        busy_pinned = plan(lab, nodes, "--node", "n1")
        assert busy_pinned["start"] >= min(held) - 5 > idle_pinned["start"] + 5, busy_pinned
        free = plan(lab, nodes)
        assert free["node"] != "n1", free
        n1 = next(a for a in free["alternatives"] if a["node"] == "n1")
        assert "other archfleet runs" in n1["why_not"] or "slower" in n1["why_not"], n1

        # A second build told to use n1 anyway waits for a slot there (max_builds across runs)
        # instead of starting a third build on a two-slot node.
        second = subprocess.Popen(
            [sys.executable, "-m", "archfleet.cli", "build", "--progress", "plain", *nodes.args(
                "--no-local", "--platform", "linux/amd64", "--node", "n1", "-t", f"{tag}-second", "--push",
                "--build-arg", f"BASE={nodes.base}", "--build-arg", f"N={uuid.uuid4().hex}"), "examples/arch-test"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        out, err = first.communicate(timeout=300)
    second_still_running = second.poll() is None  # a 3 s build, started with >10 s of the first to go
    assert first.returncode == 0, err[-2000:]
    out2, err2 = second.communicate(timeout=300)
    assert second.returncode == 0, err2[-2000:]
    assert second_still_running and "waiting for a slot other archfleet runs hold" in err2, err2[-2000:]
    waited = err2.index("waiting for a slot other archfleet runs hold")
    assert err2.index("[linux/amd64@n1] building", waited) > waited
    assert not [b for b in ls(lab, nodes)["n1"]["busy"] if b > 10]  # the first run dropped its leases
