"""The spine end to end against the real dockerd, QEMU handlers and registry of the lab
(repositories promises/...)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid

import httpx
import pytest

from conftest import extra_registry, htpasswd_auth
from labtools import DOCKER, basic_entry, docker_config, engine_images, ls, manifest, one_line_error, tags_of, unique

FIVE = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x", "linux/ppc64le"]
UNAME = {"linux/amd64": "x86_64", "linux/arm64": "aarch64", "linux/arm/v7": "armv7l",
         "linux/s390x": "s390x", "linux/ppc64le": "ppc64le"}


def test_five_platforms_push_a_verified_index_that_runs_everywhere(lab, tmp_path):
    tag = f"{lab.registry}/promises/arch-test:{unique('five')}"
    meta = tmp_path / "meta.json"
    proc = lab.archfleet("build", "--progress", "plain", "--platform", ",".join(FIVE), "-t", tag, "--push",
                         "--metadata-file", str(meta), "examples/arch-test", check=True)
    digest = proc.stdout.strip().splitlines()[-1]
    resp = lab.manifest("promises/arch-test", tag.rsplit(":", 1)[1])
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


def test_a_built_platform_waits_at_the_push_gate_and_is_cancelled_when_another_fails(lab, tmp_path):
    """The push gate (README: "holds every push until all platforms are built"): amd64 is built
    in a second and reaches the gate; arm64 fails 15 s later. amd64 was built (its image is in
    the engine under its local name), was cancelled at the gate, and pushed nothing: not even its
    config blob, and no tag moved or appeared."""
    repo, t = "promises/gate", unique("t")
    tag = f"{lab.registry}/{repo}:{t}"
    before = lab.archfleet("build", "-q", "--platform", "linux/amd64", "-t", tag, "--push", "examples/arch-test",
                           check=True).stdout.strip()
    assert lab.manifest(repo, t).headers["docker-content-digest"] == before
    tags_before = tags_of(lab.registry, repo)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {lab.base}\n"
        'RUN if [ "$(uname -m)" = aarch64 ]; then sleep 15; echo "arm64 fails on purpose"; exit 7; fi\n'
        'CMD ["uname", "-m"]\n')
    run = uuid.uuid4().hex
    proc = lab.archfleet("build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "--label",
                         f"run={run}", "-t", tag, "--push", str(tmp_path))
    try:
        assert proc.returncode == 1, proc.stderr[-3000:]
        (line,) = [l for l in proc.stderr.splitlines() if l.startswith("archfleet: error:")]
        assert line.startswith("archfleet: error: linux/arm64 failed on ") and "exit code: 7" in line
        assert "linux/amd64 failed" not in line and line.endswith("nothing was pushed to the tags")
        amd64 = [l for l in proc.stderr.splitlines() if l.startswith("[linux/amd64@local]")]
        built = next(i for i, l in enumerate(amd64) if "writing image sha256:" in l)
        cancelled = next(i for i, l in enumerate(amd64) if "cancelled: linux/arm64 failed" in l)
        assert built < cancelled, amd64  # built first, then stopped at the gate
        assert not [l for l in amd64 if "] pushing (" in l], amd64  # never started its push
        # built: the image is in the engine, under its local name (never a registry tag)
        inspect = subprocess.run([DOCKER, "image", "inspect", "--format", "{{.Id}} {{index .Config.Labels \"run\"}}",
                                  f"{tag}-linux-amd64"], capture_output=True, text=True)
        image_id, label = inspect.stdout.split()
        assert label == run, inspect.stderr
        # ...and nothing reached the registry: not its config (the image id is its digest), no tag
        assert httpx.head(f"http://{lab.registry}/v2/{repo}/blobs/{image_id}").status_code == 404
        assert lab.manifest(repo, t).headers["docker-content-digest"] == before
        assert tags_of(lab.registry, repo) == tags_before
    finally:
        subprocess.run([DOCKER, "rmi", "-f", *engine_images(f"run={run}")], capture_output=True)


@pytest.mark.parametrize("emulators_removed", ["linux/s390x"], indirect=True)
def test_missing_emulator_fails_before_building(lab, emulators_removed):
    repo, t = "promises/arch-noemu", unique("t")
    run = uuid.uuid4().hex
    proc = lab.archfleet("build", "--progress", "plain", "--label", f"run={run}", "--platform",
                         "linux/amd64,linux/s390x", "-t", f"{lab.registry}/{repo}:{t}", "--push", "examples/arch-test")
    assert proc.returncode == 3
    line = one_line_error(proc)  # under --progress plain, so no "building" line either
    assert "linux/s390x" in line and "archfleet binfmt --install linux/s390x" in line
    assert engine_images(f"run={run}") == []  # not even the platform that could be built
    assert lab.manifest(repo, t).status_code == 404
    assert lab.manifest(repo, t + "-linux-amd64").status_code == 404
    local = ls(lab, None)["local"]
    assert "linux/s390x" not in local["emulated"] and "linux/arm64" in local["emulated"]


def test_final_stage_pinned_to_another_platform_is_caught_by_the_elf_check(lab, tmp_path):
    """Docker 20.10's BuildKit writes the requested platform into the config of an image whose
    final stage is pinned elsewhere, so only the ELF check can catch it: the error says what the
    program is built for and that the config claims otherwise. The -t tag never points at the
    result (README). The child was pushed by digest before it was read back: it is there under
    the digest the error names, and no tag points at it (docs/concepts.md)."""
    repo, t = "promises/arch-pinned", unique("t")
    tag = f"{lab.registry}/{repo}:{t}"
    before = lab.archfleet("build", "-q", "--platform", "linux/arm64", "-t", tag, "--push", "examples/arch-test",
                           check=True).stdout.strip()
    (tmp_path / "Dockerfile").write_text(f"FROM --platform=linux/amd64 {lab.base}\nCMD [\"uname\", \"-m\"]\n")
    proc = lab.archfleet("build", "-q", "--platform", "linux/arm64", "-t", tag, "--push", str(tmp_path))
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "requested linux/arm64 but the image pushed for it runs uname" in line, line  # the ELF branch...
    assert "built for linux/amd64" in line and "its config claims linux/arm64" in line  # ...not the config's
    assert lab.manifest(repo, t).headers["docker-content-digest"] == before  # the tag did not move
    named = re.search(rf"{re.escape(repo)}@(sha256:[0-9a-f]{{64}})", line)
    assert named and lab.manifest(repo, named.group(1)).status_code == 200  # the child, by digest
    assert t in tags_of(lab.registry, repo) and not [x for x in tags_of(lab.registry, repo) if x.startswith(f"{t}-")]


@pytest.mark.parametrize("args,needle", [
    (["--platform", "linux/arm65", "examples/arch-test"], "--platform"),
    (["--platform", "linux/arm64", "-t", "127.0.0.1:5000/Bad Tag", "examples/arch-test"], "--tag"),
    (["--platform", "linux/arm64", "-t", "127.0.0.1:5000/x:$(id)", "examples/arch-test"], "--tag"),
    (["--platform", "linux/arm64", "does/not/exist"], "PATH"),
    (["--platform", "linux/arm64", "-f", "nope.Dockerfile", "examples/arch-test"], "--file"),
    (["--platform", "linux/arm64", "--push", "examples/arch-test"], "--push"),
    (["--platform", "linux/arm64", "--bogus-flag", "examples/arch-test"], "--bogus-flag"),
])
def test_bad_input_is_one_line_exit_2(cli, args, needle):
    proc = cli.archfleet("build", *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in one_line_error(proc)


def test_unreachable_registry_is_one_line_before_building(lab):
    run = uuid.uuid4().hex
    proc = lab.archfleet("build", "--progress", "plain", "--label", f"run={run}", "--platform", "linux/arm64",
                         "-t", "127.0.0.1:5999/x:y", "--push", "examples/arch-test")
    assert proc.returncode == 3
    assert "127.0.0.1:5999 unreachable" in one_line_error(proc)
    assert engine_images(f"run={run}") == []


@pytest.fixture(scope="module")
def auth_registry(lab, tmp_path_factory):
    """A second real registry with htpasswd (basic) auth on 127.0.0.1:5001."""
    d = tmp_path_factory.mktemp("authreg")
    with extra_registry(d, "127.0.0.1:5001", ready_status=401, auth=htpasswd_auth(d, "alice", "s3cret")) as addr:
        yield addr


def test_wrong_credentials_are_one_line_before_building(lab, auth_registry, tmp_path):
    env = docker_config(tmp_path, {auth_registry: basic_entry("alice", "wrong")})
    run = uuid.uuid4().hex
    proc = lab.archfleet("build", "--progress", "plain", "--label", f"run={run}", "--platform", "linux/arm64",
                         "-t", f"{auth_registry}/app:x", "--push", "examples/arch-test", env=env)
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert "refused the credentials" in line and "docker login 127.0.0.1:5001" in line
    assert "wrong" not in proc.stderr  # never log secrets
    assert engine_images(f"run={run}") == []


def test_right_credentials_push_children_and_index_through_the_client(lab, auth_registry, tmp_path):
    env = docker_config(tmp_path, {auth_registry: basic_entry("alice", "s3cret")})
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{auth_registry}/app:ok",
                         "--push", "examples/arch-test", env=env, check=True)
    digest = proc.stdout.strip()
    alice = ("alice", "s3cret")
    assert manifest(auth_registry, "app", "ok").status_code == 401  # reading needs the credentials too
    resp = manifest(auth_registry, "app", "ok", auth=alice)
    assert resp.headers["docker-content-digest"] == digest  # archfleet's client pushed the index...
    for entry in resp.json()["manifests"]:  # ...and each child, by digest
        assert manifest(auth_registry, "app", entry["digest"], auth=alice).status_code == 200
    assert tags_of(auth_registry, "app", auth=alice) == ["ok"]
    assert "s3cret" not in proc.stderr


@pytest.fixture
def credential_helper(tmp_path):
    """``docker-credential-afstub`` on PATH: the credential-helper protocol (``get`` reads the
    server on stdin, answers JSON), alice's password for 127.0.0.1:5001 only; it logs each call."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    helper = bindir / "docker-credential-afstub"
    helper.write_text(f"""#!/bin/sh
read -r server
echo "$1 $server" >> {log}
case "$1 $server" in
  "get 127.0.0.1:5001"|"get http://127.0.0.1:5001"|"get https://127.0.0.1:5001")
    printf '{{"ServerURL":"%s","Username":"alice","Secret":"s3cret"}}' "$server" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
""")
    helper.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, log


@pytest.mark.parametrize("config", ["credsStore", "credHelpers"])
def test_credentials_from_a_credential_helper_push_children_and_index_through_the_client(
        lab, auth_registry, tmp_path, credential_helper, config):
    """design.md: credentials come from the Docker config through docker.auth: auths,
    credsStore, credHelpers. The helper's answer must reach archfleet's client everywhere it
    pushes: the check before building, each child (by digest) and the index."""
    path, log = credential_helper
    extra = {"credsStore": "afstub"} if config == "credsStore" else {"credHelpers": {auth_registry: "afstub"}}
    env = {**docker_config(tmp_path, {}, **extra), **path}
    t = unique("t")
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{auth_registry}/app:{t}",
                         "--push", "--build-arg", f"N={uuid.uuid4().hex}", "examples/arch-test", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resp = manifest(auth_registry, "app", t, auth=("alice", "s3cret"))
    assert resp.headers["docker-content-digest"] == proc.stdout.strip()
    assert "get " in log.read_text()  # the helper was asked
    assert "s3cret" not in proc.stderr + proc.stdout


def test_second_tag_in_another_repository_gets_the_children_too(lab):
    a = f"{lab.registry}/promises/multi-a:{unique('t')}"
    b = f"{lab.registry}/promises/multi-b:{unique('t')}"
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm/v7", "-t", a, "-t", b, "--push",
                         "examples/arch-test", check=True)
    digest = proc.stdout.strip()
    for repo, tag in (("promises/multi-a", a), ("promises/multi-b", b)):
        resp = lab.manifest(repo, tag.rsplit(":", 1)[1])
        assert resp.headers["docker-content-digest"] == digest
        for m in resp.json()["manifests"]:
            assert lab.manifest(repo, m["digest"]).status_code == 200
    assert lab.run_image(b, "linux/arm/v7") == "armv7l"


def test_plan_and_ls_show_the_local_node(lab):
    local = ls(lab, None)["local"]
    assert local["reachable"] and local["builder"] in ("buildkit", "buildx"), local
    assert local["native"][0] == "linux/amd64" and "linux/arm64" in local["emulated"], local
    table = lab.archfleet("ls", check=True).stdout.splitlines()
    (row,) = [line for line in table if line.split()[:1] == ["local"]]
    assert "ready" in row and "linux/amd64" in row, table
    plan = lab.archfleet("plan", "--format", "json", "--platform", "linux/amd64,linux/arm64", "examples/arch-test",
                         check=True)
    doc = json.loads(plan.stdout)
    chosen = {p["platform"]: p["strategy"] for p in doc["platforms"]}
    assert chosen == {"linux/amd64": "native", "linux/arm64": "qemu"}


def test_allow_partial_pushes_what_succeeded_and_says_what_it_left_out(lab):
    tag = f"{lab.registry}/promises/arch-partial:{unique('t')}"
    proc = lab.archfleet("build", "--progress", "plain", "--platform", "linux/amd64,linux/riscv64", "-t", tag,
                         "--push", "--allow-partial", "examples/arch-test")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "left out (--allow-partial): " in proc.stderr and "linux/riscv64" in proc.stderr
    index = lab.manifest("promises/arch-partial", tag.rsplit(":", 1)[1]).json()
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64"]
