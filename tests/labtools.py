"""Helpers the integration tests share (plain functions; the fixtures are in conftest.py).

Every helper here used to be copied between test modules, with small differences, so a fix to
one copy did not reach the others:

- :func:`unique` names a tag or repository no other test (or earlier run) used;
- :func:`one_line_error` is the CLI's error rule: one ``archfleet: error:`` line, no traceback;
- :func:`manifest`, :func:`child_configs`, :func:`child_labels`, :func:`tags_of` read what a
  registry serves;
- :func:`docker_config` writes a Docker config with credentials for a registry;
- :func:`ls` is ``archfleet ls --format json`` by node name;
- :func:`engine_images` lists the local engine's images carrying a label (nothing built?);
- :func:`background` starts a command in its own process group and never leaves it running;
- :func:`sampled` calls a function over and over while a block runs (what ran meanwhile?);
- :func:`look` and :func:`files_holding` search processes (argv, a namespace's environments) and
  files for a secret.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx

DOCKER = "/usr/bin/docker"
ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def unique(name: str) -> str:
    """``name`` plus 8 random hex digits: a tag or repository no other run has used."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The rule for every failure of the CLI (README, cli.md): exactly one non-empty line on
    stderr, ``archfleet: error: ...``, and no traceback. Returns that line."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("archfleet: error: "), lines[0]
    return lines[0]


def manifest(registry: str, repo: str, ref: str, *, scheme: str = "http", verify=True,
             headers: dict | None = None, auth=None) -> httpx.Response:
    """GET ``/v2/<repo>/manifests/<ref>`` accepting every image and index media type."""
    return httpx.get(f"{scheme}://{registry}/v2/{repo}/manifests/{ref}", verify=verify, auth=auth,
                     headers={"Accept": ACCEPT, **(headers or {})}, timeout=30)


def tags_of(registry: str, repo: str, *, scheme: str = "http", verify=True, auth=None) -> list[str]:
    """``/v2/<repo>/tags/list``, sorted; [] when the registry knows no tag there (distribution
    answers NAME_UNKNOWN for a repository that holds only untagged manifests)."""
    resp = httpx.get(f"{scheme}://{registry}/v2/{repo}/tags/list", verify=verify, auth=auth, timeout=30)
    if resp.status_code == 404:
        return []
    resp.raise_for_status()
    return sorted(resp.json().get("tags") or [])


def child_configs(registry: str, repo: str, ref: str, **kw) -> dict[str, dict]:
    """The config blob of every child of the index at ``ref``, by the platform the index lists
    it under (``os/arch[/variant]``)."""
    index = manifest(registry, repo, ref, **kw)
    assert index.status_code == 200, f"{registry}/{repo}:{ref}: {index.status_code}"
    scheme = kw.get("scheme", "http")
    out = {}
    for entry in index.json()["manifests"]:
        p = entry["platform"]
        name = "/".join(filter(None, [p["os"], p["architecture"], p.get("variant")]))
        child = manifest(registry, repo, entry["digest"], **kw).json()
        blob = httpx.get(f"{scheme}://{registry}/v2/{repo}/blobs/{child['config']['digest']}",
                         verify=kw.get("verify", True), auth=kw.get("auth"), headers=kw.get("headers"),
                         follow_redirects=True, timeout=30)
        out[name] = blob.json()
    return out


def child_labels(registry: str, repo: str, ref: str, **kw) -> dict[str, dict[str, str]]:
    """The image labels of every child of the index at ``ref``, by platform."""
    return {p: (c.get("config") or {}).get("Labels") or {} for p, c in child_configs(registry, repo, ref, **kw).items()}


def basic_entry(user: str, password: str) -> dict:
    """A Docker config ``auths`` entry as ``docker login`` writes it."""
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def docker_config(d: Path, auths: dict[str, dict], **extra) -> dict[str, str]:
    """Write ``d/docker-config/config.json`` with ``auths`` (registry -> entry, see
    :func:`basic_entry`) and any other top-level keys (``credsStore``, ``credHelpers``); return
    the environment that points the docker CLI and archfleet at it."""
    cfg = d / "docker-config"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "config.json").write_text(json.dumps({"auths": auths, **extra}))
    return {"DOCKER_CONFIG": str(cfg)}


def ls(lab, toml: Path | None, *extra: str, env: dict | None = None) -> dict[str, dict]:
    """``archfleet ls --format json`` (with ``--nodes toml`` if given), by node name."""
    args = ["ls", "--format", "json", *(["--nodes", str(toml)] if toml else []), *extra]
    proc = lab.archfleet(*args, check=True, env=env)
    return {n["name"]: n for n in json.loads(proc.stdout)}


def engine_images(label: str, docker_host: str | None = None) -> list[str]:
    """Ids of the images in an engine (the local one by default) that carry ``label``
    (``key=value``): a build that gave every image a label of its own finds out whether
    anything was built."""
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    proc = subprocess.run([DOCKER, "images", "-q", "--filter", f"label={label}"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@contextlib.contextmanager
def background(argv: list[str], **popen):
    """``subprocess.Popen(argv)`` in a new session; on leaving the block, whatever happened
    (a wait timed out, an assertion failed), the whole process group is killed, so no build is
    left running behind a failed test."""
    proc = subprocess.Popen(argv, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


@contextlib.contextmanager
def sampled(sample, every: float = 0.02):
    """Call ``sample()`` every ``every`` seconds in a thread while the block runs; yields the
    list of what it returned (complete once the block is left). For what can only be seen
    while it happens: processes, connections."""
    seen: list = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            seen.append(sample())
            time.sleep(every)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def netns_inode(name: str) -> int:
    """The inode of network namespace ``name`` (``ip netns``): what its processes' ns/net link to."""
    return os.stat(f"/var/run/netns/{name}").st_ino


def look(needles: list[bytes], netns: int) -> tuple[list[str], set[str]]:
    """Every process's argv, and the environment of the processes in network namespace
    ``netns``: (where a needle was found, what runs in the namespace)."""
    hits, in_netns = [], set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
            ours = os.stat(entry / "ns" / "net").st_ino == netns
            environ = (entry / "environ").read_bytes() if ours else b""
        except OSError:
            continue
        if ours and argv:
            in_netns.add(argv.split(b"\0")[0].decode(errors="replace"))
        for needle in needles:
            if needle in argv:
                hits.append(f"argv of pid {entry.name}: {argv[:200]!r}")
            if needle in environ:
                hits.append(f"environment of pid {entry.name} ({argv[:80]!r})")
    return hits, in_netns


def files_holding(roots: list[Path], needles: list[bytes], since: float, skip: Path | None = None) -> list[str]:
    """Regular files under ``roots`` (not under ``skip``) changed since ``since`` (at most
    64 MiB each) that hold a needle."""
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            if skip is not None and Path(dirpath) == skip:
                dirnames.clear()
                continue
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                    if not path.is_file() or path.is_symlink() or st.st_size > 64 << 20 or \
                            max(st.st_mtime, st.st_ctime) < since:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                found += [f"{path} holds {n[:6]!r}..." for n in needles if n in data]
    return found
