"""--secret end to end (issue 14, docs/cli.md "Secrets"): a Dockerfile hashes two secrets (one
from a file, one from an environment variable) in a RUN step and keeps only the hashes. Built on
this machine and on an SSH node: the hashes are right, and the values are in no image layer or
config, no argv or environment sampled while the build runs, no file the build left (tmpfs,
/tmp, the node's home, archfleet's caches and history), no log, metadata or report."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets as _secrets
import tarfile
import time
from pathlib import Path

import httpx

from labtools import files_holding, look, manifest, netns_inode, sampled, unique

DOCKERFILE = """\
ARG BASE
FROM $BASE
ARG N
RUN --mount=type=secret,id=token,required=true --mount=type=secret,id=envtok,required=true \\
    echo "$N" > /n && sha256sum < /run/secrets/token | cut -d' ' -f1 > /token.sha256 \\
    && sha256sum < /run/secrets/envtok | cut -d' ' -f1 > /envtok.sha256
"""


def _layers_and_files(registry: str, repo: str, digest: str) -> tuple[list[bytes], dict[str, bytes]]:
    """Every blob of the child ``digest`` (config and layers, decompressed) and the files its
    layers hold (path -> content)."""
    child = manifest(registry, repo, digest).json()
    blobs, files = [], {}
    for d in [child["config"], *child["layers"]]:
        data = httpx.get(f"http://{registry}/v2/{repo}/blobs/{d['digest']}", follow_redirects=True, timeout=60).content
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        blobs.append(data)
        if d is not child["config"]:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for info in tar:
                    if info.isfile():
                        files[info.name.lstrip("./")] = tar.extractfile(info).read()
    return blobs, files


def _context(tmp_path: Path) -> tuple[Path, Path, dict[str, str], list[bytes], dict[str, str]]:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    value = "s3cr3t-file-" + _secrets.token_hex(16)
    env_value = "s3cr3t-env-" + _secrets.token_hex(16)
    src = tmp_path / "token.txt"
    src.write_text(value)
    src.chmod(0o600)
    want = {"token.sha256": hashlib.sha256(value.encode()).hexdigest() + "\n",
            "envtok.sha256": hashlib.sha256(env_value.encode()).hexdigest() + "\n"}
    return ctx, src, {"AFTEST_ENVTOK": env_value}, [value.encode(), env_value.encode()], want


def _secret_dirs() -> list[str]:
    roots = [Path("/dev/shm"), *Path("/run/user").glob("*")] if Path("/run/user").is_dir() else [Path("/dev/shm")]
    return [str(p) for root in roots for p in root.glob("archfleet-secrets.*")]


def _check(lab, proc, tmp_path, registry, repo, tag, needles, want, samples, roots, started, watched):
    assert proc.returncode == 0, proc.stderr[-4000:]
    digest = proc.stdout.strip()
    index = manifest(registry, repo, tag)
    assert index.status_code == 200 and index.headers["docker-content-digest"] == digest
    (entry,) = index.json()["manifests"]
    blobs, files = _layers_and_files(registry, repo, entry["digest"])
    # the RUN step saw both values (their hashes), and kept nothing else of them
    assert {k: files[k].decode() for k in want} == want
    assert [n[:12] for n in needles for b in blobs if n in b] == []
    # while it ran: no argv anywhere, no environment of the watched processes
    seen = {name for _, names in samples for name in names}
    assert len(samples) > 10 and any(watched in name for name in seen), seen
    # (archfleet's own initial environment holds the env= variable: the user put it there; archfleet
    # takes it out before starting anything, so no process it starts inherits it)
    hits = sorted({hit[:120] for hits, _ in samples for hit in hits if "archfleet.cli" not in hit})
    assert hits == [], hits
    # afterwards: no file, no private directory left; not in the logs, metadata, report, history
    assert files_holding(roots, needles, started, skip=tmp_path) == []
    assert _secret_dirs() == []
    text = proc.stdout + proc.stderr + (tmp_path / "meta.json").read_text() + (tmp_path / "report.json").read_text()
    assert [n[:12] for n in needles if n.decode() in text] == []
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["containerimage.digest"] == digest


def test_secrets_on_this_machine_reach_the_run_step_and_nothing_else(lab, tmp_path, own_cache):
    """docs/cli.md: on the local node a src= secret is the CLI's own --secret src=PATH; an env=
    one is handed over through a tmpfs file removed before the CLI starts."""
    ctx, src, env, needles, want = _context(tmp_path)
    repo, tag = "features/secret-local", unique("t")
    started = time.time()
    netns = os.stat("/proc/self/ns/net").st_ino
    with sampled(lambda: look(needles, netns), every=0.05) as samples:
        proc = lab.archfleet("build", "--progress", "plain", "--node", "local", "--platform", "linux/amd64",
                             "--build-arg", f"BASE={lab.base}", "--build-arg", f"N={unique('n')}",
                             "--secret", f"id=token,src={src}", "--secret", "id=envtok,env=AFTEST_ENVTOK",
                             "--metadata-file", str(tmp_path / "meta.json"), "--report", str(tmp_path / "report.json"),
                             "-t", f"{lab.registry}/{repo}:{tag}", "--push", str(ctx), env=env)
    _check(lab, proc, tmp_path, lab.registry, repo, tag, needles, want, samples,
           [Path("/dev/shm"), Path("/tmp"), own_cache], started, "docker")


def test_secrets_on_an_ssh_node_travel_on_the_channel_into_a_removed_tmpfs_file(lab, nodes, tmp_path, own_cache):
    """docs/cli.md: on an SSH node every value goes over the SSH channel's stdin into a 0600 file
    in a private tmpfs directory that is removed before the engine CLI starts (it reads the
    value through a descriptor): not in n1's argv or environment, not in its home afterwards."""
    ctx, src, env, needles, want = _context(tmp_path)
    repo, tag = "features/secret-ssh", unique("t")
    home = nodes.toml.parent / "nodes" / "n1" / "home"
    started = time.time()
    netns = netns_inode("af-n1")
    with sampled(lambda: look(needles, netns), every=0.05) as samples:
        proc = lab.archfleet("build", "--progress", "plain", *nodes.args("--no-local", "--node", "n1"),
                             "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}",
                             "--build-arg", f"N={unique('n')}",
                             "--secret", f"id=token,src={src}", "--secret", "id=envtok,env=AFTEST_ENVTOK",
                             "--metadata-file", str(tmp_path / "meta.json"), "--report", str(tmp_path / "report.json"),
                             "-t", f"{nodes.registry}/{repo}:{tag}", "--push", str(ctx), env=env)
    assert "[linux/amd64@n1] building" in proc.stderr, proc.stderr[-3000:]
    _check(lab, proc, tmp_path, lab.registry, repo, tag, needles, want, samples,
           [home, Path("/dev/shm"), Path("/tmp"), own_cache], started, "dockerd")


def test_a_required_secret_not_given_is_refused_before_anything_is_built(cli, tmp_path):
    """BuildKit fails a step whose required secret is missing; archfleet says so first: one
    line naming the Dockerfile line and the flag to add, exit 2."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    proc = cli.archfleet("build", "--platform", "linux/amd64", "--secret", "id=envtok,env=HOME", str(ctx))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "Dockerfile:4" in proc.stderr and "secret 'token' is required" in proc.stderr
    assert "--secret id=token" in proc.stderr


def test_secrets_on_a_podman_node_reach_the_run_step_and_nothing_else(lab, tmp_path, own_cache):
    """docs/cli.md: podman takes the same --secret; this machine as a podman node (its own store)
    gets the src= file as given and the env= value handed over through the tmpfs script."""
    d = tmp_path / "podman"
    d.mkdir()
    (d / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{d}/storage"\nrunroot = "{d}/run"\n')
    (d / "registries.conf").write_text('[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n')
    nodes = tmp_path / "nodes.toml"
    nodes.write_text('[nodes.local]\nengine = "podman"\n')
    nodes.chmod(0o600)
    ctx, src, env, needles, want = _context(tmp_path)
    env.update({"CONTAINERS_STORAGE_CONF": str(d / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(d / "registries.conf")})
    repo, tag = "features/secret-podman", unique("t")
    started = time.time()
    netns = os.stat("/proc/self/ns/net").st_ino
    with sampled(lambda: look(needles, netns), every=0.05) as samples:
        proc = lab.archfleet("build", "--progress", "plain", "--nodes", str(nodes), "--platform", "linux/amd64",
                             "--build-arg", f"BASE={lab.base}", "--build-arg", f"N={unique('n')}",
                             "--secret", f"id=token,src={src}", "--secret", "id=envtok,env=AFTEST_ENVTOK",
                             "--metadata-file", str(tmp_path / "meta.json"), "--report", str(tmp_path / "report.json"),
                             "-t", f"{lab.registry}/{repo}:{tag}", "--push", str(ctx), env=env)
    assert "[linux/amd64@local] STEP 1/" in proc.stderr, proc.stderr[-3000:]  # podman's output
    _check(lab, proc, tmp_path, lab.registry, repo, tag, needles, want, samples,
           [Path("/dev/shm"), own_cache], started, "podman")
