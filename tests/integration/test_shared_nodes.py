"""Two archfleet runs sharing the lab: the second sees the build slots the first holds on a
node (its leases) and plans around them; the leases go when the first run ends."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid

from conftest import REPO
from labtools import background, ls as ls_json


def ls(lab, nodes):
    return ls_json(lab, nodes.toml)


def plan(lab, nodes, *extra):
    proc = lab.archfleet("plan", "--format", "json", *nodes.args("--no-local", "--platform", "linux/amd64",
                                                                "--build-arg", f"BASE={nodes.base}", *extra),
                         "examples/arch-test", check=True)
    return json.loads(proc.stdout)["platforms"][0]


def equal_scores(nodes, cache) -> None:
    """Every lab node gets the same benchmark score (in this test's own score cache), so no
    node is slower than another: what the planner says about n1 can only come from its leases."""
    from archfleet.inventory import load_nodes_file
    from archfleet.plugins.ssh import KEYS as SSH_KEYS
    from archfleet.scores import score_key

    keys = [score_key(n) for n in load_nodes_file(nodes.toml, {"ssh": SSH_KEYS}) if n.name in ("n1", "n2", "n3")]
    (cache / "archfleet").mkdir(parents=True, exist_ok=True)
    (cache / "archfleet" / "scores.json").write_text(json.dumps({k: {"score": 1.0, "at": time.time()} for k in keys}))


def reader(proc, lines: list[str]) -> threading.Thread:
    def read():
        for line in proc.stderr:
            lines.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_a_second_run_plans_around_the_slots_the_first_holds(lab, nodes, tmp_path, own_cache):
    equal_scores(nodes, own_cache)
    ctx = tmp_path / "slow"
    ctx.mkdir()
    # Several RUNs: a prior of ~30 s per build, so the leases stay well inside their estimates
    # while this test looks at them; 40 s of work, so the first run still holds its slots when
    # the second has probed and is waiting (an overrunning lease keeps counting).
    (ctx / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nARG N\nRUN echo $N && sleep 40\n"
                                    + "RUN true\n" * 5)
    idle_pinned = plan(lab, nodes, "--node", "n1")
    # leases other tests' cut-off builds may have left count until their heartbeat is 75 s
    # old: this test looks only at leases with well over 10 s to go (its own)
    tag = f"{nodes.registry}/promises/shared:{uuid.uuid4().hex[:8]}"
    build = [sys.executable, "-m", "archfleet.cli", "build"]
    with background([*build, "-q", *nodes.args(
            "--no-local", "--platform", "linux/amd64,linux/386", "--node", "n1", "-t", tag, "--push",
            "--build-arg", f"BASE={nodes.base}", "--build-arg", f"N={uuid.uuid4().hex}"), str(ctx)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as first:
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
        # as fast as the others alone (equal scores): it lost only because its slots are taken
        assert n1["estimate_seconds"] <= free["estimate_seconds"], (n1, free)
        assert "slots are taken" in n1["why_not"] and "by other archfleet runs" in n1["why_not"], n1

        # A second build told to use n1 anyway waits for a slot there (max_builds across runs)
        # instead of starting a third build on a two-slot node.
        leases_before = len(ls(lab, nodes)["n1"]["busy"])
        with background([*build, "--progress", "plain", *nodes.args(
                "--no-local", "--platform", "linux/amd64", "--node", "n1", "-t", f"{tag}-second", "--push",
                "--build-arg", f"BASE={nodes.base}", "--build-arg", f"N={uuid.uuid4().hex}"), "examples/arch-test"],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as second:
            lines: list[str] = []
            reading = reader(second, lines)
            deadline = time.time() + 60
            while not any("waiting for a slot other archfleet runs hold" in l for l in lines):
                assert second.poll() is None and time.time() < deadline, "".join(lines)[-2000:]
                time.sleep(0.2)
            # while it waits: the first run still holds both slots, nobody took a third, and
            # the second has not started building
            assert first.poll() is None, "the first run ended before the second was seen waiting"
            assert len(ls(lab, nodes)["n1"]["busy"]) <= leases_before
            assert not any("] building (" in l for l in lines), "".join(lines)
            out, err = first.communicate(timeout=300)
            assert first.returncode == 0, err[-2000:]
            second.wait(300)
            reading.join(10)
            err2 = "".join(lines)
            assert second.returncode == 0, err2[-2000:]
    waited = err2.index("waiting for a slot other archfleet runs hold")
    assert err2.index("[linux/amd64@n1] building", waited) > waited
    assert not [b for b in ls(lab, nodes)["n1"]["busy"] if b > 10]  # the first run dropped its leases
