"""Issue 14's done-when: one build using --secret, --ssh, --cache-from, -o and --push across the
three lab nodes (a platform pinned to each) gives a verified index, and each platform's RUN step
saw the secret (its hash) and the forwarded agent (the throwaway key's fingerprint, listed by
ssh-add through the mounted agent socket: the step needs no network)."""

from __future__ import annotations

import hashlib
import os
import secrets as _secrets
import shutil
import subprocess
import time
from pathlib import Path

from labtools import child_configs, manifest, unique

DOCKERFILE = """\
ARG BASE
FROM $BASE
COPY rootfs/ /
ARG N
RUN --mount=type=secret,id=token,required=true --mount=type=ssh,required=true \\
    echo "$N" > /n && sha256sum < /run/secrets/token | cut -d' ' -f1 > /token.sha256 && \\
    /usr/bin/ssh-add -l > /agent
"""
PINS = {"linux/amd64": "n1", "linux/arm64": "n2", "linux/386": "n3"}


def _copy_with_libs(program: str, root: Path) -> None:
    """``program`` and the libraries ``ldd`` names, under ``root`` (this machine's amd64 files:
    the kernel runs them in any container, emulated platform or not)."""
    lines = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout.splitlines()
    libs = [line.split("=>")[-1].split("(")[0].strip() for line in lines]
    for f in [program, *(p for p in libs if p.startswith("/"))]:
        dest = root / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(f), dest)


def test_secret_ssh_cache_from_output_and_push_across_three_nodes(lab, nodes, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "rootfs").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    _copy_with_libs(shutil.which("ssh-add"), ctx / "rootfs")
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "archfleet-features-all", "-f", str(key)],
                   check=True)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    value = "s3cr3t-all-" + _secrets.token_hex(16)
    src = tmp_path / "token"
    src.write_text(value)
    repo, t = "features/all", unique("t")
    out = tmp_path / "out"
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        subprocess.run(["ssh-add", "-q", str(key)], check=True, env={**os.environ, "SSH_AUTH_SOCK": str(sock)})
        proc = lab.archfleet(
            "build", "--progress", "plain", *nodes.args("--no-local"),
            *(a for p, n in PINS.items() for a in ("--node", f"{p}={n}")), "--platform", ",".join(PINS),
            "--build-arg", f"BASE={nodes.base}", "--build-arg", f"N={unique('n')}",
            "--secret", f"id=token,src={src}", "--ssh", "default",
            "--cache-from", f"{nodes.registry}/{repo}:cache", "-o", f"type=local,dest={out}",
            "-t", f"{nodes.registry}/{repo}:{t}", "--push", str(ctx), env={"SSH_AUTH_SOCK": str(sock)})
    finally:
        agent.terminate()
        agent.wait(10)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for p, n in PINS.items():
        assert f"[{p}@{n}] building" in proc.stderr, (p, n)
    # the index was verified and pushed; its children are the three platforms
    assert manifest(lab.registry, repo, t).headers["docker-content-digest"] == proc.stdout.strip()
    assert {p: c["architecture"] for p, c in child_configs(lab.registry, repo, t).items()} == {
        "linux/amd64": "amd64", "linux/arm64": "arm64", "linux/386": "386"}
    want = hashlib.sha256(value.encode()).hexdigest()
    for p in PINS:
        d = out / p.replace("/", "_")
        assert (d / "token.sha256").read_text().strip() == want, p
        assert fingerprint in (d / "agent").read_text(), p
    assert value not in proc.stderr + proc.stdout
    assert list(Path("/dev/shm").glob("archfleet-s*")) == []
