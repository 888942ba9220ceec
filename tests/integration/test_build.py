"""The spine end to end against the real dockerd, QEMU handlers and registry of the lab."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
import warnings

import httpx
import pytest

from conftest import extra_registry

FIVE = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x", "linux/ppc64le"]
UNAME = {"linux/amd64": "x86_64", "linux/arm64": "aarch64", "linux/arm/v7": "armv7l",
         "linux/s390x": "s390x", "linux/ppc64le": "ppc64le"}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def one_line_error(proc) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_five_platforms_push_a_verified_index_that_runs_everywhere(lab, tmp_path):
    tag = f"{lab.registry}/arch-test:{unique('five')}"
    meta = tmp_path / "meta.json"
    proc = lab.archfleet("build", "--progress", "plain", "--platform", ",".join(FIVE), "-t", tag, "--push",
                         "--metadata-file", str(meta), "examples/arch-test", check=True)
    digest = proc.stdout.strip().splitlines()[-1]
    resp = lab.manifest("arch-test", tag.rsplit(":", 1)[1])
    assert resp.status_code == 200
    assert resp.headers["docker-content-digest"] == digest
    index = resp.json()
    assert index["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    got = sorted("/".join(filter(None, [m["platform"]["os"], m["platform"]["architecture"],
                                        m["platform"].get("variant")])) for m in index["manifests"])
    assert got == sorted(FIVE)
    # plain progress: prefixed lines per platform
    assert "[linux/arm64@local]" in proc.stderr
    doc = json.loads(meta.read_text())
    assert doc["containerimage.digest"] == digest and doc["image.name"] == tag
    children = {m["digest"] for m in index["manifests"]}
    for platform in FIVE:
        entry = doc["archfleet.platforms"][platform]
        assert entry["node"] == "local" and entry["strategy"] in ("native", "qemu")
        assert entry["digest"] in children
    for platform in FIVE:
        assert lab.run_image(tag, platform) == UNAME[platform]


def test_platform_that_cannot_be_built_pushes_nothing(lab, tmp_path):
    # linux/riscv64: Debian 12 has no riscv64 busybox, so the base has no such child.
    repo = "arch-fail"
    tag = f"{lab.registry}/{repo}:{unique('t')}"
    first = lab.archfleet("build", "--platform", "linux/amd64", "-t", tag, "--push", "examples/arch-test", check=True)
    before = first.stdout.strip()
    proc = lab.archfleet("build", "-q", "--platform", "linux/arm64,linux/riscv64", "-t", tag, "--push",
                         "examples/arch-test")
    assert proc.returncode == 1
    line = [l for l in proc.stderr.splitlines() if l.startswith("archfleet: error:")]
    assert len(line) == 1 and "linux/riscv64" in line[0] and "nothing was pushed" in line[0]
    assert lab.manifest(repo, tag.rsplit(":", 1)[1]).headers["docker-content-digest"] == before
    # the platform that did build was held back at the push gate, not pushed half-way
    assert lab.manifest(repo, tag.rsplit(":", 1)[1] + "-linux-arm64").status_code == 404


@pytest.fixture
def without_s390x_emulator(lab):
    subprocess.run([os.sys.executable, "-m", "archfleet.cli", "binfmt", "--uninstall", "linux/s390x"], check=True,
                   capture_output=True)
    try:
        yield
    finally:
        subprocess.run([os.sys.executable, "-m", "archfleet.cli", "binfmt", "--install", "linux/s390x"], check=True,
                       capture_output=True)


def test_missing_emulator_fails_before_building(lab, without_s390x_emulator):
    tag = f"{lab.registry}/arch-noemu:{unique('t')}"
    proc = lab.archfleet("build", "--platform", "linux/amd64,linux/s390x", "-t", tag, "--push", "examples/arch-test")
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert "linux/s390x" in line and "archfleet binfmt --install linux/s390x" in line
    assert lab.manifest("arch-noemu", tag.rsplit(":", 1)[1]).status_code == 404
    assert lab.manifest("arch-noemu", tag.rsplit(":", 1)[1] + "-linux-amd64").status_code == 404
    ls = lab.archfleet("ls", "--format", "json", check=True)
    local = json.loads(ls.stdout)[0]
    assert "linux/s390x" not in local["emulated"] and "linux/arm64" in local["emulated"]


def test_final_stage_pinned_to_another_platform_is_caught(lab, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM --platform=linux/amd64 {lab.base}\nCMD [\"uname\", \"-m\"]\n")
    tag = f"{lab.registry}/arch-pinned:{unique('t')}"
    proc = lab.archfleet("build", "-q", "--platform", "linux/arm64", "-t", tag, "--push", str(tmp_path))
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "requested linux/arm64" in line and "linux/amd64" in line
    assert lab.manifest("arch-pinned", tag.rsplit(":", 1)[1]).status_code == 404


@pytest.mark.parametrize("args,needle", [
    (["--platform", "linux/arm65", "examples/arch-test"], "--platform"),
    (["--platform", "linux/arm64", "-t", "127.0.0.1:5000/Bad Tag", "examples/arch-test"], "--tag"),
    (["--platform", "linux/arm64", "-t", "127.0.0.1:5000/x:$(id)", "examples/arch-test"], "--tag"),
    (["--platform", "linux/arm64", "does/not/exist"], "PATH"),
    (["--platform", "linux/arm64", "-f", "nope.Dockerfile", "examples/arch-test"], "--file"),
    (["--platform", "linux/arm64", "--push", "examples/arch-test"], "--push"),
    (["--platform", "linux/arm64", "--bogus-flag", "examples/arch-test"], "--bogus-flag"),
])
def test_bad_input_is_one_line_exit_2(lab, args, needle):
    proc = lab.archfleet("build", *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in one_line_error(proc)


def test_unreachable_registry_is_one_line_before_building(lab):
    proc = lab.archfleet("build", "--platform", "linux/arm64", "-t", "127.0.0.1:5999/x:y", "--push", "examples/arch-test")
    assert proc.returncode == 3
    assert "127.0.0.1:5999 unreachable" in one_line_error(proc)


@pytest.fixture(scope="module")
def auth_registry(lab, tmp_path_factory):
    """A second real registry with htpasswd (basic) auth on 127.0.0.1:5001."""
    d = tmp_path_factory.mktemp("authreg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import crypt  # deprecated, present through 3.12: bcrypt hashes through libxcrypt

        (d / "htpasswd").write_text(f"alice:{crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    with extra_registry(d, "127.0.0.1:5001", ready_status=401,
                        auth=f"  htpasswd:\n    realm: archfleet-test\n    path: {d}/htpasswd\n") as addr:
        yield addr


def docker_config(tmp_path, user, password) -> dict:
    import base64

    cfg = tmp_path / "docker-config"
    cfg.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5001": {"auth": auth}}}))
    return {"DOCKER_CONFIG": str(cfg)}


def test_wrong_credentials_are_one_line_before_building(lab, auth_registry, tmp_path):
    env = docker_config(tmp_path, "alice", "wrong")
    proc = lab.archfleet("build", "--platform", "linux/arm64", "-t", f"{auth_registry}/app:x", "--push",
                         "examples/arch-test", env=env)
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert "refused the credentials" in line and "docker login 127.0.0.1:5001" in line
    assert "wrong" not in proc.stderr  # never log secrets


def test_right_credentials_push_through_the_engine_and_the_client(lab, auth_registry, tmp_path):
    env = docker_config(tmp_path, "alice", "s3cret")
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{auth_registry}/app:ok",
                         "--push", "examples/arch-test", env=env, check=True)
    digest = proc.stdout.strip()
    resp = httpx.get("http://127.0.0.1:5001/v2/app/manifests/ok", auth=("alice", "s3cret"),
                     headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})
    assert resp.headers["docker-content-digest"] == digest
    assert "s3cret" not in proc.stderr


def test_second_tag_in_another_repository_gets_the_children_too(lab):
    a = f"{lab.registry}/multi-a:{unique('t')}"
    b = f"{lab.registry}/multi-b:{unique('t')}"
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm/v7", "-t", a, "-t", b, "--push",
                         "examples/arch-test", check=True)
    digest = proc.stdout.strip()
    for repo, tag in (("multi-a", a), ("multi-b", b)):
        resp = lab.manifest(repo, tag.rsplit(":", 1)[1])
        assert resp.headers["docker-content-digest"] == digest
        for m in resp.json()["manifests"]:
            assert lab.manifest(repo, m["digest"]).status_code == 200
    assert lab.run_image(b, "linux/arm/v7") == "armv7l"


def test_plan_and_ls_show_the_local_node(lab):
    ls = lab.archfleet("ls", check=True)
    assert "local" in ls.stdout and "linux/amd64" in ls.stdout and "linux/arm64" in ls.stdout
    plan = lab.archfleet("plan", "--format", "json", "--platform", "linux/amd64,linux/arm64", "examples/arch-test",
                         check=True)
    doc = json.loads(plan.stdout)
    chosen = {p["platform"]: p["strategy"] for p in doc["platforms"]}
    assert chosen == {"linux/amd64": "native", "linux/arm64": "qemu"}


def test_allow_partial_pushes_what_succeeded_and_says_what_it_left_out(lab):
    tag = f"{lab.registry}/arch-partial:{unique('t')}"
    proc = lab.archfleet("build", "--progress", "plain", "--platform", "linux/amd64,linux/riscv64", "-t", tag,
                         "--push", "--allow-partial", "examples/arch-test")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "left out (--allow-partial): " in proc.stderr and "linux/riscv64" in proc.stderr
    index = lab.manifest("arch-partial", tag.rsplit(":", 1)[1]).json()
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64"]
