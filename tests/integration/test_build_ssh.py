"""--ssh end to end (issue 14, docs/cli.md "SSH forwarding"): a RUN --mount=type=ssh step logs
in to a throwaway sshd (in the lab node namespace af-n1, port 2280: reachable from this
machine's build containers and from n1's own) that takes one throwaway key only, and keeps what
the server said. On this machine with the user's agent (--ssh default); on
the SSH node n1 with the agent forwarded over archfleet's connection for that build only, and
with the key file handed over (--ssh default=KEY). The step's ssh client is this machine's
OpenSSH, copied into the context with its libraries (the lab base is busybox); it checks the
target's host key (StrictHostKeyChecking=yes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from labtools import unique

TARGET_NS, TARGET_IP, TARGET_PORT = "af-n1", "10.231.0.11", 2280
DOCKERFILE = f"""\
ARG BASE
FROM $BASE
COPY rootfs/ /
ARG N
RUN --mount=type=ssh,required=true echo "$N" > /n && \\
    ssh -F none -o BatchMode=yes -o UserKnownHostsFile=/known_hosts -o StrictHostKeyChecking=yes \\
        -p {TARGET_PORT} root@{TARGET_IP} > /said
"""


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def target(nodes, tmp_path_factory):
    """The throwaway sshd: in af-n1 on TARGET_PORT, one authorized key (the throwaway one), every
    login answered with a marker (ForceCommand). Yields (key path, known_hosts line, marker)."""
    d = tmp_path_factory.mktemp("sshtarget")
    os.chmod(d, 0o755)
    host_pub = _keygen(d / "hostkey", "archfleet-features-target")
    _keygen(d / "key", "archfleet-features-throwaway")
    (d / "authorized_keys").write_text((d / "key.pub").read_text())
    marker = unique("reached")
    (d / "sshd_config").write_text(
        f"ListenAddress {TARGET_IP}\nPort {TARGET_PORT}\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowTcpForwarding no\n"
        f"ForceCommand echo {marker}\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(["ip", "netns", "exec", TARGET_NS, "/usr/sbin/sshd", "-f", str(d / "sshd_config"),
                    "-E", str(d / "sshd.log")], check=True)
    for _ in range(100):
        if (d / "sshd.pid").exists() and (d / "sshd.pid").read_text().strip():
            break
        time.sleep(0.1)
    pid = int((d / "sshd.pid").read_text())
    try:
        yield d / "key", f"[{TARGET_IP}]:{TARGET_PORT} {host_pub}\n", marker
    finally:
        os.kill(pid, signal.SIGTERM)


@pytest.fixture
def agent(target, tmp_path):
    """An ssh-agent of this test holding the throwaway key; its socket."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        subprocess.run(["ssh-add", "-q", str(target[0])], check=True, env={**os.environ, "SSH_AUTH_SOCK": str(sock)})
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


def _context(tmp_path: Path, known_hosts: str) -> Path:
    """The build context: the Dockerfile, and rootfs/ with this machine's ssh, its libraries, a
    passwd entry for root and the target's host key."""
    ctx = tmp_path / "ctx"
    root = ctx / "rootfs"
    (root / "etc").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "known_hosts").write_text(known_hosts)
    ssh = Path(shutil.which("ssh"))
    libs = [line.split("=>")[-1].split("(")[0].strip()
            for line in subprocess.run(["ldd", str(ssh)], capture_output=True, text=True, check=True).stdout.splitlines()]
    for f in [str(ssh), *(p for p in libs if p.startswith("/"))]:
        dest = root / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(f), dest)
    (root / "bin").mkdir(exist_ok=True)
    if not (root / "bin" / "ssh").exists():
        os.symlink(str(ssh), root / "bin" / "ssh")
    return ctx


def _said(out: Path) -> str:
    return (out / "said").read_text().strip()


def _no_agent_dirs() -> list[str]:
    return [str(p) for p in Path("/dev/shm").glob("archfleet-ssh.*")]


def test_the_local_node_uses_the_user_s_agent(lab, nodes, target, agent, tmp_path):
    """buildx: --ssh default is $SSH_AUTH_SOCK; the local engine CLI gets it as it is."""
    _, known, marker = target
    ctx, out = _context(tmp_path, known), tmp_path / "out"
    proc = lab.archfleet("build", "--progress", "plain", "--node", "local", "--platform", "linux/amd64",
                         "--build-arg", f"BASE={lab.base}", "--build-arg", f"N={unique('n')}", "--ssh", "default",
                         "-o", f"type=local,dest={out}", str(ctx), env={"SSH_AUTH_SOCK": str(agent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _said(out) == marker


def test_without_the_key_the_target_refuses(lab, nodes, target, tmp_path):
    """The control: the target takes only the throwaway key (the agent here holds none)."""
    _, known, _ = target
    empty = tmp_path / "empty.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(empty)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if empty.exists():
                break
            time.sleep(0.05)
        ctx = _context(tmp_path, known)
        got = lab.archfleet("build", "--progress", "plain", "--node", "local", "--platform", "linux/amd64",
                            "--build-arg", f"BASE={lab.base}", "--build-arg", f"N={unique('n')}", "--ssh", "default",
                            str(ctx), env={"SSH_AUTH_SOCK": str(empty)})
    finally:
        proc.terminate()
        proc.wait(10)
    assert got.returncode != 0 and "Permission denied (publickey)" in got.stderr, got.stderr[-2000:]


def test_an_ssh_node_gets_the_agent_forwarded_for_the_build_only(lab, nodes, target, agent, tmp_path):
    """docs/cli.md: n1's engine CLI reads the agent through a socket sshd makes in a private
    tmpfs directory for this build (a streamlocal forward over archfleet's connection); the
    directory is gone afterwards."""
    _, known, marker = target
    ctx, out = _context(tmp_path, known), tmp_path / "out"
    proc = lab.archfleet("build", "--progress", "plain", *nodes.args("--no-local", "--node", "n1"),
                         "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}",
                         "--build-arg", f"N={unique('n')}", "--ssh", "default", "-o", f"type=local,dest={out}",
                         str(ctx), env={"SSH_AUTH_SOCK": str(agent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[linux/amd64@n1] building" in proc.stderr
    assert _said(out) == marker
    assert _no_agent_dirs() == []


def test_an_ssh_node_gets_a_key_file_handed_over_never_on_its_disk(lab, nodes, target, tmp_path):
    """--ssh default=KEY: on n1 the key travels like a secret (stdin, a tmpfs file removed before
    the CLI starts, read through a descriptor): the login works and the key is in no file of n1's
    home, /dev/shm or /tmp afterwards."""
    from labtools import files_holding

    key, known, marker = target
    ctx, out = _context(tmp_path, known), tmp_path / "out"
    started = time.time()
    proc = lab.archfleet("build", "--progress", "plain", *nodes.args("--no-local", "--node", "n1"),
                         "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}",
                         "--build-arg", f"N={unique('n')}", "--ssh", f"default={key}", "-o", f"type=local,dest={out}",
                         str(ctx))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _said(out) == marker
    body = key.read_bytes().splitlines()[1]  # a line of the key's base64 body
    home = nodes.toml.parent / "nodes" / "n1" / "home"
    assert len(body) > 40 and files_holding([home, Path("/dev/shm")], [body], started) == []
    assert body.decode() not in proc.stderr + proc.stdout
