"""The README's demo, examples/demo.sh: it builds examples/arch-test for five platforms, pushes
the index and runs it on each platform, and it fails when a platform does not print its own
``uname -m`` (it used to print whatever came back, an empty line included, and exit 0)."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest

from conftest import REPO
from labtools import DOCKER, manifest, unique

UNAME = {"linux/amd64": "x86_64", "linux/arm64": "aarch64", "linux/arm/v7": "armv7l", "linux/s390x": "s390x",
         "linux/ppc64le": "ppc64le"}


def demo(*args: str, platforms: str | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if platforms:
        env["PLATFORMS"] = platforms
    return subprocess.run(["bash", str(REPO / "examples" / "demo.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def checked(stdout: str) -> list[str]:
    return [" ".join(line.split()) for line in stdout.splitlines() if "uname -m:" in line]


def test_the_demo_builds_five_platforms_and_each_prints_its_own_uname(lab):
    tag = f"{lab.registry}/promises/demo:{unique('t')}"
    proc = demo(tag)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checked(proc.stdout) == [f"{p} uname -m: {u}" for p, u in UNAME.items()]
    assert lab.manifest("promises/demo", tag.rsplit(":", 1)[1]).status_code == 200


@pytest.fixture
def arm64_index_running_amd64(lab, tmp_path):
    """An index whose linux/arm64 child claims arm64 in its config but runs an amd64 program
    (the final stage pinned to amd64: what Docker 20.10 builds for it), beside a right amd64
    child; built and pushed with docker itself, not archfleet (whose verification refuses it)."""
    repo, t = "promises/demo-wrong", unique("t")
    digests = {}
    for platform, pin in (("linux/amd64", ""), ("linux/arm64", "--platform=linux/amd64 ")):
        ctx = tmp_path / platform.replace("/", "-")
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {pin}{lab.base}\nCMD [\"uname\", \"-m\"]\n")
        ref = f"{lab.registry}/{repo}:{t}-{platform.split('/')[1]}"
        for argv in ([DOCKER, "build", "--platform", platform, "-t", ref, str(ctx)], [DOCKER, "push", ref],
                     [DOCKER, "rmi", ref]):
            done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
            assert done.returncode == 0, done.stderr[-2000:]
        got = manifest(lab.registry, repo, ref.rsplit(":", 1)[1])
        digests[platform] = (got.headers["docker-content-digest"], len(got.content), got.headers["content-type"])
    index = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
             "manifests": [{"mediaType": media, "size": size, "digest": digest,
                            "platform": {"os": "linux", "architecture": platform.split("/")[1]}}
                           for platform, (digest, size, media) in digests.items()]}
    put = httpx.put(f"http://{lab.registry}/v2/{repo}/manifests/{t}", content=json.dumps(index),
                    headers={"Content-Type": index["mediaType"]})
    assert put.status_code == 201, put.text
    yield f"{lab.registry}/{repo}:{t}"
    subprocess.run([DOCKER, "rmi", f"{lab.registry}/{repo}:{t}"], capture_output=True)


def test_the_demo_fails_when_a_platform_prints_another_uname(lab, arm64_index_running_amd64):
    tag = arm64_index_running_amd64
    right = demo("--check", tag, platforms="linux/amd64")  # control: the amd64 child is right
    assert right.returncode == 0, right.stderr
    assert checked(right.stdout) == ["linux/amd64 uname -m: x86_64"]
    wrong = demo("--check", tag, platforms="linux/amd64,linux/arm64")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert checked(wrong.stdout) == ["linux/amd64 uname -m: x86_64", "linux/arm64 uname -m: x86_64 <- expected aarch64"]
    assert f"demo: {tag} does not run as each platform it claims" in wrong.stderr
