"""Nodes of three engine kinds in one fleet (issue 16): the lab's n1 (rootful dockerd), n4
(rootless podman, no daemon) and n5 (rootless dockerd), all reached over SSH as their users,
plus this machine as a podman node. Real engines, real registries, real faults."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, extra_registry, htpasswd_auth
from labtools import (background, basic_entry, child_configs, docker_config, files_holding, look, ls, manifest,
                      netns_inode, sampled, unique)

FIVE = "linux/amd64,linux/386,linux/arm64,linux/arm/v7,linux/s390x"
# one node per platform: every engine builds something, natively and under QEMU
PINS = {"linux/amd64": "n1", "linux/386": "n4", "linux/arm64": "n4", "linux/arm/v7": "n5", "linux/s390x": "n5"}
# what `uname -m` prints in each child (a 386 child on an x86-64 kernel says x86_64: verification
# checks its program's ELF header instead)
UNAME = {"linux/arm64": "aarch64", "linux/arm/v7": "armv7l", "linux/s390x": "s390x"}


def test_ls_over_the_lab_shows_three_engine_kinds(lab, engine_nodes):
    nodes = ls(lab, engine_nodes.toml, "--no-local")
    kinds = {name: (n["engine"], n["rootless"], n["builder"], n["reachable"]) for name, n in nodes.items()}
    assert kinds == {"n1": ("docker", False, "buildkit", True), "n4": ("podman", True, "buildah", True),
                     "n5": ("docker", True, "buildkit", True)}
    assert nodes["n4"]["engine_version"].startswith("4.") and nodes["n4"]["capabilities"]["secrets"] is True
    table = lab.archfleet("ls", "--no-local", "--nodes", str(engine_nodes.toml), check=True).stdout
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert f"podman {nodes['n4']['engine_version']} rootless" in rows["n4"]
    assert f"docker {nodes['n5']['engine_version']} rootless" in rows["n5"]
    assert "rootless" not in rows["n1"]


def test_one_verified_index_from_a_docker_a_podman_and_a_rootless_docker_node(lab, engine_nodes, tmp_path):
    repo, tag = "engines/mixed", unique("five")
    meta = tmp_path / "meta.json"
    pins = [a for p, n in PINS.items() for a in ("--node", f"{p}={n}")]
    proc = lab.archfleet("build", "--progress", "plain", *engine_nodes.args("--no-local"), *pins,
                         "--platform", FIVE, "--build-arg", f"BASE={engine_nodes.base}",
                         "--build-arg", f"N={unique('n')}", "-t", f"{engine_nodes.registry}/{repo}:{tag}",
                         "--push", "--metadata-file", str(meta), "examples/arch-test")
    assert proc.returncode == 0, proc.stderr[-4000:]
    built = json.loads(meta.read_text())["archfleet.platforms"]
    assert {p: (d["node"], d["strategy"]) for p, d in built.items()} == {
        "linux/amd64": ("n1", "native"), "linux/386": ("n4", "native"), "linux/arm64": ("n4", "qemu"),
        "linux/arm/v7": ("n5", "qemu"), "linux/s390x": ("n5", "qemu")}
    index = manifest(engine_nodes.registry, repo, tag)
    assert index.headers["docker-content-digest"] == proc.stdout.strip()
    # podman pushed Docker schema 2 like the docker nodes: one manifest list, not a mixed OCI index
    assert index.json()["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    configs = child_configs(engine_nodes.registry, repo, tag)
    assert {p: c["architecture"] + (f"/{c['variant']}" if c.get("variant") else "") for p, c in configs.items()} == {
        "linux/amd64": "amd64", "linux/386": "386", "linux/arm64": "arm64", "linux/arm/v7": "arm/v7",
        "linux/s390x": "s390x"}
    # the emulated children run as the machine they say (the loopback registry serves the same storage)
    for platform in UNAME:
        assert lab.run_image(f"127.0.0.1:5000/{repo}@{built[platform]['digest']}", platform) == UNAME[platform]


def _slow_context(d: Path, base: str) -> Path:
    d.mkdir()
    (d / "Dockerfile").write_text(f"FROM {base}\nARG NONCE\nRUN echo $NONCE > /nonce && sleep 8\n"
                                  'CMD ["uname", "-m"]\n')
    return d


def _favour(toml: Path, name: str) -> None:
    """Make the planner put what it can on node ``name`` first: its CPU score cached as five
    times the project VM's, the others' as a tenth (this test's own cache directory)."""
    from archfleet import scores
    from archfleet.inventory import load_nodes_file
    from archfleet.plugins.ssh import KEYS

    for node in load_nodes_file(toml, {"ssh": KEYS}):
        if node.transport == "ssh":
            scores.store(scores.score_key(node), 5.0 if node.name == name else 0.1)


# what the re-plan says (metadata "replans"): the SSH session dropped; podman killed by a signal
CAUSE = {"sshd-kill": "SSH connection lost", "podman-kill": "engine CLI killed by signal KILL"}


@pytest.mark.parametrize("fault", sorted(CAUSE))
def test_killing_the_podman_node_mid_build_still_ends_with_a_correct_index(lab, engine_nodes, tmp_path, fault):
    ctx = _slow_context(tmp_path / "ctx", engine_nodes.base)
    _favour(engine_nodes.toml, "n4")
    repo, tag = "engines/podman-fault", unique(fault)
    meta = tmp_path / "meta.json"
    args = [sys.executable, "-m", "archfleet.cli", "build", "--progress", "plain", *engine_nodes.args("--no-local"),
            "--platform", "linux/amd64,linux/arm64,linux/s390x", "--build-arg", f"BASE={engine_nodes.base}",
            "--build-arg", f"NONCE={unique('n')}", "-t", f"{engine_nodes.registry}/{repo}:{tag}", "--push",
            "--metadata-file", str(meta), str(ctx)]
    lines: list[str] = []
    sleeping = threading.Event()
    faulted = False
    try:
        with background(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO) as proc:
            def read():
                for line in proc.stderr:
                    lines.append(line)
                    if "@n4]" in line and "sleep 8" in line:  # podman's "STEP 3/3: RUN ... && sleep 8"
                        sleeping.set()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            assert sleeping.wait(120), "".join(lines[-40:])
            engine_nodes.fault("n4", fault)
            faulted = True
            proc.wait(300)
            reader.join(10)
            out = "".join(lines)
            assert proc.returncode == 0, out[-4000:]
            digest = proc.stdout.read().strip()
        built = json.loads(meta.read_text())["archfleet.platforms"]
        moved = {p: d for p, d in built.items() if d["replans"]}
        assert moved, out[-3000:]  # at least the platform whose sleep ran on n4 was re-planned
        assert all(d["node"] != "n4" and d["replans"][0]["from"].endswith("@n4") for d in moved.values())
        assert all(f"[{p}@n4] re-planned to " in out for p in moved)
        # typed as the node's failure from how the CLI ended, not from what the build printed
        whys = [d["replans"][0]["why"] for d in moved.values()]
        assert any(CAUSE[fault] in why for why in whys), whys
        assert manifest(engine_nodes.registry, repo, tag).headers["docker-content-digest"] == digest
        assert {p: c["architecture"] for p, c in child_configs(engine_nodes.registry, repo, tag).items()} == {
            "linux/amd64": "amd64", "linux/arm64": "arm64", "linux/s390x": "s390x"}
    finally:
        if faulted and fault == "sshd-kill":
            engine_nodes.fault("n4", "sshd-start")
        engine_nodes.clear_leases()


@pytest.fixture(scope="module")
def plain_http_registry_with_auth(lab, engine_nodes, tmp_path_factory):
    d = tmp_path_factory.mktemp("podman-auth")
    password = "pw-" + secrets.token_hex(16)
    with extra_registry(d, "10.231.0.1:5061", ready_status=401, auth=htpasswd_auth(d, "alice", password)):
        yield password


def test_podman_pushes_with_credentials_that_reach_no_argv_environment_or_file(
        lab, engine_nodes, plain_http_registry_with_auth, tmp_path):
    """nodes.md: a podman node reads the coordinator's credentials through an auth file that is
    unlinked before podman starts. While a build pinned to n4 pushes to a registry that wants
    them, no process's argv and no environment in n4's namespace holds them, and afterwards no
    file in n4's home, /dev/shm or /tmp does."""
    password, host = plain_http_registry_with_auth, "10.231.0.1:5061"
    needles = [password.encode(), base64.b64encode(f"alice:{password}".encode())]
    env = docker_config(tmp_path, {host: basic_entry("alice", password)})
    repo, tag = "engines/creds", unique("t")
    started = time.time()
    with sampled(lambda: look(needles, netns_inode("af-n4"))) as samples:
        proc = lab.archfleet("build", "--progress", "plain", *engine_nodes.args("--no-local", "--node", "n4"),
                             "--insecure-registry", host, "--platform", "linux/amd64,linux/arm64",
                             "--build-arg", f"BASE={engine_nodes.base}", "--build-arg", f"N={unique('n')}",
                             "-t", f"{host}/{repo}:{tag}", "--push", "examples/arch-test", env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # n4's podman pushed there itself, to a registry that takes no anonymous push
    assert "[linux/arm64@n4] pushing" in proc.stderr
    index = manifest(host, repo, tag, auth=("alice", password))
    assert index.status_code == 200 and index.headers["docker-content-digest"] == proc.stdout.strip()
    seen = {name for _, names in samples for name in names}
    assert len(samples) > 10 and any(name.endswith("podman") for name in seen), seen  # it watched n4's podman
    assert [hit for hits, _ in samples for hit in hits] == []
    home = engine_nodes.toml.parent / "nodes" / "n4" / "home"
    assert files_holding([home, Path("/dev/shm"), Path("/tmp")], needles, started,
                         skip=Path(env["DOCKER_CONFIG"])) == []


def podman_storage(d: Path) -> dict[str, str]:
    """The environment for podman on this machine with a store of its own under ``d`` (not
    root's /var/lib/containers) and the loopback registry listed as insecure, through podman's
    own variables (pytest removes ``d`` with the test's other files)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{d}/storage"\n'
                                    f'runroot = "{d}/run"\n')
    (d / "registries.conf").write_text('[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n')
    return {"CONTAINERS_STORAGE_CONF": str(d / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(d / "registries.conf")}


def test_this_machine_as_a_podman_node_builds_native_and_emulated(lab, tmp_path):
    if not any(os.access(os.path.join(p, "podman"), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.fail("podman is not installed (tests/lab/bootstrap.sh installs it)")
    nodes = tmp_path / "nodes.toml"
    nodes.write_text('[nodes.local]\nengine = "podman"\n')
    nodes.chmod(0o600)
    env = podman_storage(tmp_path / "podman")
    local = ls(lab, nodes, env=env)["local"]
    assert (local["engine"], local["builder"], local["rootless"]) == ("podman", "buildah", False)
    repo, tag = "engines/local-podman", unique("t")
    proc = lab.archfleet("build", "--progress", "plain", "--nodes", str(nodes), "--platform", "linux/amd64,linux/arm64",
                         "-t", f"{lab.registry}/{repo}:{tag}", "--push", "examples/arch-test", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[linux/amd64@local] STEP 1/" in proc.stderr  # podman's build output, not BuildKit's
    assert {p: c["architecture"] for p, c in child_configs(lab.registry, repo, tag).items()} == {
        "linux/amd64": "amd64", "linux/arm64": "arm64"}


def test_each_adapter_builds_inspects_exports_and_removes_an_image_on_its_node(lab, engine_nodes, tmp_path):
    """The adapter interface on real engines: the local dockerd, rootless podman on n4 and the
    rootless dockerd on n5 (over SSH). What inspect says is what was built; export is a `docker
    save` archive naming the image; remove removes it once."""
    import asyncio
    import io
    import tarfile

    from archfleet import pipeline
    from archfleet.engines import adapter_for
    from archfleet.inventory import make_config
    from archfleet.manager import make_hooks
    from archfleet.model import BuildRequest
    from archfleet.platforms import parse
    from archfleet.session import Session

    (tmp_path / "Dockerfile").write_text("ARG BASE\nFROM $BASE\nARG N\nRUN echo $N > /n\n")
    arm = parse("linux/arm64")
    # this machine's dockerd reaches the lab registry on loopback, the nodes on the bridge
    where = {"local": (lab.registry, lab.base), "n4": (engine_nodes.registry, engine_nodes.base),
             "n5": (engine_nodes.registry, engine_nodes.base)}

    async def roundtrip():
        hooks = make_hooks()
        session = Session()
        found = {}
        try:
            facts = await pipeline.probe(hooks, make_config(nodes=str(engine_nodes.toml), keys=hooks.node_keys()),
                                         session)
            for name, (registry, base) in where.items():
                f = facts[name]
                engine, transport = adapter_for(f.node.engine), await pipeline.connect(hooks, f, session)
                request = BuildRequest(tmp_path, tmp_path / "Dockerfile", (arm,),
                                       build_args=(("BASE", base), ("N", unique("n"))))
                ctx, dockerfile, _ = await transport.prepare_context(request)
                tag = f"{registry}/engines/roundtrip:{name}-{unique('t')}"
                image = await engine.build(transport, f, platform=arm, request=request, tag=tag, context=ctx,
                                           dockerfile=dockerfile)
                info = await engine.inspect(transport, f, tag)
                archive = b"".join([chunk async for chunk in engine.export(transport, f, tag)])
                removed = (await engine.remove(transport, f, tag), await engine.remove(transport, f, tag))
                found[name] = (image, info, archive, removed, tag)
        finally:
            await hooks.session_end(session)
        return found

    for name, (image, info, archive, removed, tag) in asyncio.run(roundtrip()).items():
        assert (info.id, info.os, info.architecture) == (image, "linux", "arm64"), name
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            (entry,) = json.load(tar.extractfile("manifest.json"))
        assert tag in entry["RepoTags"] and entry["Config"].removeprefix("blobs/sha256/").startswith(
            image.split(":")[1][:12]), (name, entry)
        assert removed == (True, False), name
