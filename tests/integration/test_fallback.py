"""Node failures while building: the platform is re-planned elsewhere and the index still
verifies; with no capable node left the run fails naming the platform and the tag stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import REPO

RESTORE = {"sshd-kill": "sshd-start", "dockerd-kill": "dockerd-start", "link-down": "link-up"}


def slow_context(tmp_path, base):
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\nARG NONCE\nRUN echo $NONCE > /nonce && sleep 8\nCMD [\"uname\", \"-m\"]\n")
    return tmp_path


def start_build(lab, nodes, ctx, tag, meta, *extra):
    args = [sys.executable, "-m", "archfleet.cli", "build", "--progress", "plain", *nodes.args("--no-local"),
            "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}", "--build-arg",
            f"NONCE={uuid.uuid4().hex}", "-t", tag, "--push", "--metadata-file", str(meta), *extra, str(ctx)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
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

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return proc, lines, started, victim, t


@pytest.mark.parametrize("fault", ["sshd-kill", "dockerd-kill", "link-down"])
def test_node_failure_mid_build_is_replanned(lab, nodes, tmp_path, fault):
    (tmp_path / "ctx").mkdir()
    ctx = slow_context(tmp_path / "ctx", nodes.base)
    tag = f"{nodes.registry}/fallback:{fault}-{uuid.uuid4().hex[:6]}"
    meta = tmp_path / "meta.json"
    proc, lines, started, victim, reader = start_build(lab, nodes, ctx, tag, meta)
    assert started.wait(120), "".join(lines[-30:])
    node = victim[0]
    nodes.fault(node, fault)
    try:
        proc.wait(240)
        reader.join(10)
        out = "".join(lines)
        assert proc.returncode == 0, out[-3000:]
        doc = json.loads(meta.read_text())["archfleet.platforms"]["linux/amd64"]
        assert doc["node"] != node
        assert doc["replans"] and doc["replans"][0]["from"].endswith(f"@{node}")
        assert f"re-planned to" in out
    finally:
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
    tag = f"{nodes.registry}/fallback:alldown-{uuid.uuid4().hex[:6]}"
    first = lab.archfleet("build", "-q", "--nodes", str(only_n1), "--insecure-registry", nodes.registry, "--no-local",
                          "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}", "-t", tag, "--push",
                          str(ctx), check=True)
    before = first.stdout.strip()

    class Only:
        toml = only_n1
        registry = nodes.registry
        base = nodes.base

        def args(self, *extra):
            return ["--nodes", str(only_n1), "--insecure-registry", nodes.registry, *extra]

    proc, lines, started, victim, reader = start_build(lab, Only(), ctx, tag, tmp_path / "m.json")
    assert started.wait(120), "".join(lines[-30:])
    nodes.fault("n1", "sshd-kill")
    try:
        proc.wait(120)
        reader.join(10)
        assert proc.returncode == 1
        error = [l for l in lines if l.startswith("archfleet: error:")]
        assert len(error) == 1 and "linux/amd64" in error[0] and "no other option left" in error[0]
        import httpx

        resp = httpx.get(f"http://{nodes.registry}/v2/fallback/manifests/{tag.rsplit(':', 1)[1]}",
                         headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})
        assert resp.headers["docker-content-digest"] == before
    finally:
        nodes.fault("n1", "sshd-start")
        nodes.clear_leases()
