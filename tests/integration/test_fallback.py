"""Node failures while building: the platform is re-planned elsewhere and the index still
verifies; with no capable node left the run fails naming the platform and the tag stays."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import uuid

import pytest

from conftest import REPO
from labtools import background, child_configs, manifest

RESTORE = {"sshd-kill": "sshd-start", "dockerd-kill": "dockerd-start", "link-down": "link-up"}


def slow_context(tmp_path, base):
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\nARG NONCE\nRUN echo $NONCE > /nonce && sleep 8\nCMD [\"uname\", \"-m\"]\n")
    return tmp_path


@contextlib.contextmanager
def build_in_background(nodes, ctx, tag, meta, *extra):
    """``archfleet build --push`` of ``ctx`` for linux/amd64 on the lab nodes, running while the
    block does: yields (process, stderr lines so far, an event set once the build's ``sleep``
    runs on some node, [that node]). Whatever happens in the block, the build is not left
    running after it."""
    args = [sys.executable, "-m", "archfleet.cli", "build", "--progress", "plain", *nodes.args("--no-local"),
            "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}", "--build-arg",
            f"NONCE={uuid.uuid4().hex}", "-t", tag, "--push", "--metadata-file", str(meta), *extra, str(ctx)]
    with background(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO) as proc:
        lines: list[str] = []
        started = threading.Event()
        victim: list[str] = []

        def read():
            for line in proc.stderr:
                lines.append(line)
                if "] building (" in line and not started.is_set():
                    victim.append(line.split("@", 1)[1].split("]", 1)[0])
                if "sleep 8" in line and victim and not started.is_set():
                    started.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        yield proc, lines, started, victim
        proc.wait(240)
        reader.join(10)


@pytest.mark.parametrize("fault", ["sshd-kill", "dockerd-kill", "link-down"])
def test_node_failure_mid_build_is_replanned(lab, nodes, tmp_path, fault):
    (tmp_path / "ctx").mkdir()
    ctx = slow_context(tmp_path / "ctx", nodes.base)
    repo, t = "promises/fallback", f"{fault}-{uuid.uuid4().hex[:6]}"
    meta = tmp_path / "meta.json"
    node = None
    try:
        with build_in_background(nodes, ctx, f"{nodes.registry}/{repo}:{t}", meta) as (proc, lines, started, victim):
            assert started.wait(120), "".join(lines[-30:])
            node = victim[0]
            nodes.fault(node, fault)
        out = "".join(lines)
        assert proc.returncode == 0, out[-3000:]
        doc = json.loads(meta.read_text())["archfleet.platforms"]["linux/amd64"]
        assert doc["node"] != node
        assert doc["replans"] and doc["replans"][0]["from"].endswith(f"@{node}")
        assert f"[linux/amd64@{node}] re-planned to native@{doc['node']}" in out
        # ...and the index the run pushed is complete and verified: its one child is amd64
        assert manifest(nodes.registry, repo, t).headers["docker-content-digest"] == proc.stdout.read().strip()
        assert {p: c["architecture"] for p, c in child_configs(nodes.registry, repo, t).items()} == {
            "linux/amd64": "amd64"}
    finally:
        if node:
            nodes.fault(node, RESTORE[fault])
        nodes.clear_leases()


def test_no_capable_node_left_fails_naming_the_platform(lab, nodes, tmp_path):
    only_n1 = tmp_path / "nodes.toml"
    text = nodes.toml.read_text()
    for other in ("n2", "n3"):
        text = text.replace(f"[nodes.{other}]\n", f"[nodes.{other}]\nenabled = false\n")
    only_n1.write_text(text)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    slow_context(ctx, nodes.base)
    repo, t = "promises/fallback", f"alldown-{uuid.uuid4().hex[:6]}"
    tag = f"{nodes.registry}/{repo}:{t}"
    first = lab.archfleet("build", "-q", "--nodes", str(only_n1), "--insecure-registry", nodes.registry, "--no-local",
                          "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}", "-t", tag, "--push",
                          str(ctx), check=True)
    before = first.stdout.strip()

    class Only:
        registry = nodes.registry
        base = nodes.base

        def args(self, *extra):
            return ["--nodes", str(only_n1), "--insecure-registry", nodes.registry, *extra]

    try:
        with build_in_background(Only(), ctx, tag, tmp_path / "m.json") as (proc, lines, started, victim):
            assert started.wait(120), "".join(lines[-30:])
            nodes.fault("n1", "sshd-kill")
        assert proc.returncode == 1
        error = [l for l in lines if l.startswith("archfleet: error:")]
        assert len(error) == 1 and "linux/amd64" in error[0] and "no other option left" in error[0]
        assert manifest(nodes.registry, repo, t).headers["docker-content-digest"] == before
    finally:
        nodes.fault("n1", "sshd-start")
        nodes.clear_leases()


def test_a_failing_run_step_fails_once_and_is_not_retried_on_another_node(lab, nodes, tmp_path):
    """concepts.md: a failing Dockerfile step is the build's failure, reported and not retried,
    although two other nodes could build the platform (and the step prints a network error)."""
    (tmp_path / "Dockerfile").write_text(
        f'FROM {nodes.base}\nARG NONCE\nRUN echo "$NONCE: Connection refused" && exit 5\n')
    args = nodes.args("--no-local", "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}",
                      "--build-arg", f"NONCE={uuid.uuid4().hex}")
    plan = json.loads(lab.archfleet("plan", "--format", "json", *args, str(tmp_path), check=True).stdout)
    assert len(plan["platforms"][0]["alternatives"]) == 2  # precondition: two other nodes could take it
    proc = lab.archfleet("build", "--progress", "plain", *args, str(tmp_path))
    assert proc.returncode == 1, proc.stderr[-3000:]
    building = [l for l in proc.stderr.splitlines() if "] building (" in l]
    assert len(building) == 1, building  # one attempt, on one node
    node = building[0].split("@", 1)[1].split("]", 1)[0]
    assert "re-planned" not in proc.stderr
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("archfleet: error:")]
    assert line.startswith(f"archfleet: error: linux/amd64 failed on native@{node}: build failed: ")
    assert "exit code: 5" in line
