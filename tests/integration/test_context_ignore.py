"""The build context on an SSH node is the one a local build sees (defects #4, #14), end to end.

A throwaway sshd on a loopback port (2260-2269) is the SSH node: root logs in with a key made
here, its host key is pinned in a known_hosts written here, and its engine is this machine's
dockerd. The node's context cache is therefore root's (~root/.cache/archfleet/sync-v2); every
file whose absence a test checks there holds random bytes, so its blob name is new to the cache.
Images go to 127.0.0.1:5000/context/... only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import missing

PORTS = range(2260, 2270)
NODE_CACHE = Path("/root/.cache/archfleet/sync-v2")


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    missing("no free loopback port in 2260-2269 for the throwaway sshd")


@pytest.fixture(scope="module")
def ssh_node(lab, tmp_path_factory):
    """(nodes.toml path, NodeSpec) of node "box": sshd on 127.0.0.1:<port>, user root."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if os.geteuid() != 0 or not os.path.exists(sshd):
        missing("the throwaway SSH node needs root and openssh-server")
    d = tmp_path_factory.mktemp("sshnode")
    port = _free_port()
    for key in ("hostkey", "key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key), "-C", f"context-{key}"],
                       check=True)
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPermitRootLogin prohibit-password\n"
        f"PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"AuthorizedKeysFile {d}/key.pub\nPidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory (as sshd-lab.sh)
    subprocess.run([sshd, "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")], check=True)
    try:
        for _ in range(40):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail(f"sshd on 127.0.0.1:{port} did not start: {(d / 'sshd.log').read_text()[-500:]}")
        kind, key = (d / "hostkey.pub").read_text().split()[:2]
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {key}\n")
        toml = d / "nodes.toml"
        toml.write_text(f'[nodes.box]\nhost = "127.0.0.1"\nport = {port}\nuser = "root"\nidentity = "{d}/key"\n'
                        f'known_hosts = "{d}/known_hosts"\nengine_cli = "/usr/bin/docker"\n')
        from archfleet.inventory import load_nodes_file
        from archfleet.plugins.ssh import KEYS as SSH_KEYS

        yield toml, next(n for n in load_nodes_file(toml, {"ssh": SSH_KEYS}) if n.name == "box")
    finally:
        pid = d / "sshd.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), 15)


def _env(tmp_path, monkeypatch) -> dict[str, str]:
    """No nodes but the ones a test names: no user nodes.toml, no $ARCHFLEET_NODES, no agent."""
    monkeypatch.delenv("ARCHFLEET_NODES", raising=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return {"XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": "/usr/bin:" + os.environ.get("PATH", "")}


def _cached(data: bytes) -> list[str]:
    digest = hashlib.sha256(data).hexdigest()
    blobs = NODE_CACHE / "blobs"
    return [b for b in os.listdir(blobs) if b.startswith(digest)] if blobs.is_dir() else []


def test_dockerfile_ignore_file_gives_the_same_image_on_the_local_and_the_ssh_node(lab, ssh_node, tmp_path,
                                                                                   monkeypatch):
    """app.Dockerfile.dockerignore excludes secret.env; the context's own .dockerignore (which
    would exclude docs/) does not apply at all, on either node. Both images list the same files,
    neither has secret.env, and the secret's bytes never reached the node's cache."""
    toml, _ = ssh_node
    ctx = tmp_path / "ctx"
    (ctx / "docs").mkdir(parents=True)
    (ctx / "app.Dockerfile").write_text("ARG BASE\nFROM $BASE\nCOPY . /ctx/\n"
                                        "RUN cd /ctx && find . | sort > /ctx.list\nCMD [\"cat\", \"/ctx.list\"]\n")
    (ctx / "app.Dockerfile.dockerignore").write_text("# applies to app.Dockerfile only\nsecret.env\n")
    (ctx / ".dockerignore").write_text("docs\n")
    (ctx / "keep.txt").write_text("keep me\n")
    (ctx / "docs" / "guide.md").write_text("# guide\n")
    secret = f"API_TOKEN={uuid.uuid4().hex}\n".encode()
    (ctx / "secret.env").write_bytes(secret)
    run = uuid.uuid4().hex[:8]
    common = ["build", "-f", str(ctx / "app.Dockerfile"), "--platform", "linux/amd64", "--build-arg",
              f"BASE={lab.base}", "--push", "--progress", "plain"]
    env = _env(tmp_path, monkeypatch)
    local_tag = f"{lab.registry}/context/dfignore:local-{run}"
    ssh_tag = f"{lab.registry}/context/dfignore:ssh-{run}"
    lab.archfleet(*common, "-t", local_tag, str(ctx), env=env, cwd=tmp_path, check=True)
    proc = lab.archfleet(*common, "--no-local", "--nodes", str(toml), "-t", ssh_tag, str(ctx), env=env,
                         cwd=tmp_path, check=True)
    assert "@box" in proc.stderr + proc.stdout  # it really built on the SSH node
    local = lab.run_image(local_tag, "linux/amd64").split()
    remote = lab.run_image(ssh_tag, "linux/amd64").split()
    assert local == remote
    assert "./secret.env" not in remote and "./keep.txt" in remote and "./docs/guide.md" in remote
    assert _cached(secret) == []


def test_a_file_that_shrinks_while_it_is_sent_over_ssh_is_one_usage_line(lab, ssh_node, tmp_path, monkeypatch):
    """Not 'SSH connection lost' (a node failure, retried elsewhere): the user's file changed.
    The node keeps no blob of it, under the old name or any other."""
    from archfleet import context
    from archfleet.errors import UsageError
    from archfleet.model import BuildRequest
    from archfleet.platforms import parse
    from archfleet.plugins.ssh import _connect

    _, node = ssh_node
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    big = os.urandom(3 << 20)  # several chunks: the cut comes mid-file, after bytes were sent
    (ctx / "data.bin").write_bytes(big)
    req = BuildRequest(ctx, ctx / "Dockerfile", [parse("linux/amd64")])
    context.snapshot_of(req)
    real_open = context._open

    def shrinking(path):
        f = real_open(path)
        if path.name == "data.bin":
            os.truncate(path, 1 << 20)
        return f

    monkeypatch.setattr(context, "_open", shrinking)

    async def go():
        t = await _connect(node)
        try:
            await t.prepare_context(req)
        finally:
            await t.close()

    with pytest.raises(UsageError) as err:
        asyncio.run(go())
    assert "data.bin" in str(err.value) and "shrank" in str(err.value) and "\n" not in str(err.value)
    assert _cached(big) == [] and _cached(big[: 1 << 20]) == []
