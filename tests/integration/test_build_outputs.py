"""-o type=local / type=tar and --load end to end (issue 14, docs/cli.md "Outputs"): the files
of each platform's result where buildx puts them (one platform at the top, several under
<os>_<arch>/), also when an SSH node built them (its export comes back over SSH), and the local
engine's platform in the local engine under -t, wherever it was built."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from labtools import manifest, unique

DOCKERFILE = """\
ARG BASE
FROM $BASE
ARG N
RUN mkdir -p /data && echo "$N" > /data/n && uname -m > /data/arch && echo a > /data/gone
RUN rm /data/gone
"""
DOCKER = "/usr/bin/docker"


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def _loaded(tag: str) -> tuple[str, str]:
    """(architecture, /data/n) of the image ``tag`` in the local engine."""
    arch = subprocess.run([DOCKER, "image", "inspect", "-f", "{{.Architecture}}", tag], capture_output=True,
                          text=True, check=True).stdout.strip()
    n = subprocess.run([DOCKER, "run", "--rm", "--platform", f"linux/{arch}", tag, "cat", "/data/n"],
                       capture_output=True, text=True, check=True).stdout.strip()
    return arch, n


def _rmi(tag: str) -> None:
    subprocess.run([DOCKER, "rmi", "-f", tag], capture_output=True)


def test_one_platform_on_this_machine_its_files_at_the_top_and_loaded(lab, tmp_path):
    """buildx: a one-platform local output holds the result's file system at DIR's top; the
    overlay's whiteouts are applied (a file a later step removed is not there); --load tags it."""
    ctx, n = _context(tmp_path), unique("n")
    out, tar = tmp_path / "out", tmp_path / "out.tar"
    tag = f"features/out-local:{unique('t')}"
    try:
        proc = lab.archfleet("build", "--progress", "plain", "--node", "local", "--platform", "linux/amd64",
                             "--build-arg", f"BASE={lab.base}", "--build-arg", f"N={n}", "-t", tag,
                             "-o", f"type=local,dest={out}", "-o", f"type=tar,dest={tar}", "--load", str(ctx))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (out / "data" / "n").read_text().strip() == n and (out / "data" / "arch").read_text().strip() == "x86_64"
        assert not (out / "data" / "gone").exists() and (out / "bin" / "busybox").exists()
        with tarfile.open(tar) as t:
            names = set(t.getnames())
            assert "data/n" in names and "data/gone" not in names
            assert t.extractfile("data/n").read().decode().strip() == n
        assert _loaded(tag) == ("amd64", n)
    finally:
        _rmi(tag)


def test_two_platforms_on_an_ssh_node_come_back_under_os_arch_and_the_local_one_is_loaded(lab, nodes, tmp_path):
    """BuildKit's exporters split several platforms as linux_amd64/, linux_arm64/; archfleet
    reads n1's export (the one the push reads) over SSH; --load puts n1's linux/amd64 child in
    this machine's engine under -t; the pushed index is verified as usual."""
    ctx, n = _context(tmp_path), unique("n")
    out, tar = tmp_path / "out", tmp_path / "out.tar"
    repo, t = "features/out-ssh", unique("t")
    tag = f"{nodes.registry}/{repo}:{t}"
    try:
        proc = lab.archfleet("build", "--progress", "plain", *nodes.args("--no-local", "--node", "n1"),
                             "--platform", "linux/amd64,linux/arm64", "--build-arg", f"BASE={nodes.base}",
                             "--build-arg", f"N={n}", "-t", tag, "--push",
                             "-o", f"type=local,dest={out}", "-o", f"type=tar,dest={tar}", "--load", str(ctx))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "[linux/arm64@n1] building" in proc.stderr and "[linux/amd64@n1] building" in proc.stderr
        assert manifest(lab.registry, repo, t).headers["docker-content-digest"] == proc.stdout.strip()
        assert sorted(p.name for p in out.iterdir()) == ["linux_amd64", "linux_arm64"]
        for d, arch in (("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")):
            assert (out / d / "data" / "n").read_text().strip() == n
            assert (out / d / "data" / "arch").read_text().strip() == arch
            assert not (out / d / "data" / "gone").exists()
        with tarfile.open(tar) as tf:
            names = set(tf.getnames())
            assert {"linux_amd64/data/n", "linux_arm64/data/arch"} <= names
            assert tf.extractfile("linux_arm64/data/arch").read().decode().strip() == "aarch64"
        assert _loaded(tag) == ("amd64", n)
        assert f"loaded linux/amd64 into the local engine as {tag}" in proc.stderr
    finally:
        _rmi(tag)


def test_a_reused_platform_s_files_and_image_come_from_the_registry(lab, tmp_path):
    """concepts.md "Reuse": an unchanged rebuild builds nothing; its -o files are then read from
    the child in the registry (layers downloaded, merged as the engine's would be) and --load
    pulls that child by digest."""
    ctx, n = _context(tmp_path), unique("n")
    repo, t = "features/out-reuse", unique("t")
    tag = f"{lab.registry}/{repo}:{t}"
    args = ["build", "--progress", "plain", "--node", "local", "--platform", "linux/amd64,linux/arm64",
            "--build-arg", f"BASE={lab.base}", "--build-arg", f"N={n}", "-t", tag, "--push"]
    try:
        first = lab.archfleet(*args, str(ctx))
        assert first.returncode == 0, first.stderr[-3000:]
        _rmi(tag)
        out, tar = tmp_path / "out", tmp_path / "out.tar"
        again = lab.archfleet(*args, "-o", f"type=local,dest={out}", "-o", f"type=tar,dest={tar}", "--load", str(ctx))
        assert again.returncode == 0, again.stderr[-3000:]
        assert "reuse" in again.stderr and again.stdout.strip() == first.stdout.strip()  # nothing built
        for d, arch in (("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")):
            assert (out / d / "data" / "n").read_text().strip() == n
            assert (out / d / "data" / "arch").read_text().strip() == arch
            assert not (out / d / "data" / "gone").exists() and (out / d / "bin" / "busybox").exists()
        with tarfile.open(tar) as tf:
            assert tf.extractfile("linux_arm64/data/arch").read().decode().strip() == "aarch64"
        assert _loaded(tag) == ("amd64", n)
    finally:
        _rmi(tag)
