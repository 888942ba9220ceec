"""The build flags README.md and docs/cli.md promise, each shown to take effect on the lab's
local node (repositories promises/flags-...): ``--label``, ``--no-cache``, ``--pull`` (the
default) and ``--no-pull``, ``-f`` with ``--target``, ``--engine-cli`` and
``$ARCHFLEET_ENGINE_CLI``, and ``DOCKER_HOST`` for the local engine."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from labtools import DOCKER, child_labels, ls, one_line_error, unique


def test_every_label_is_on_every_child(lab):
    repo, t = "promises/flags-label", unique("t")
    platforms = ["linux/amd64", "linux/arm64", "linux/s390x"]
    lab.archfleet("build", "-q", "--platform", ",".join(platforms), "--label", "team=platforms",
                  "--label", "note=two words; and $(no expansion)", "-t", f"{lab.registry}/{repo}:{t}", "--push",
                  "examples/arch-test", check=True)
    labels = child_labels(lab.registry, repo, t)
    assert sorted(labels) == sorted(platforms)
    for platform, got in labels.items():
        assert got["team"] == "platforms" and got["note"] == "two words; and $(no expansion)", (platform, got)
        assert got["org.archfleet.platform"] == platform  # archfleet's own labels stay beside them


def _cached_runs(stderr: str) -> list[str]:
    """The RUN steps BuildKit's plain output marks ``CACHED`` (``#N [i/n] RUN ...``, then ``#N CACHED``)."""
    titles, cached = {}, []
    for line in stderr.splitlines():
        if m := re.search(r"\] #(\d+) \[\d+/\d+\] (RUN .*)$", line):
            titles[m.group(1)] = m.group(2)
        elif m := re.search(r"\] #(\d+) CACHED$", line):
            cached.append(m.group(1))
    return [titles[n] for n in cached if n in titles]


def test_no_cache_runs_every_step_again(lab, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        f"FROM {lab.base}\nRUN echo {uuid.uuid4().hex} > /a\nRUN cat /a > /b\nCMD [\"cat\", \"/b\"]\n")
    args = ["build", "--progress", "plain", "--platform", "linux/amd64", str(tmp_path)]
    lab.archfleet(*args, check=True)
    again = lab.archfleet(*args, check=True)
    assert len(_cached_runs(again.stderr)) == 2, again.stderr  # control: both RUNs come from the cache
    fresh = lab.archfleet(*args[:1], "--no-cache", *args[1:], check=True)
    assert _cached_runs(fresh.stderr) == [], fresh.stderr


@pytest.fixture
def shadowed_base(lab, tmp_path):
    """A base image whose registry copy says ``registry`` in /origin, and an image of the same
    name in the local engine's store (built, never pushed) that says ``local``."""
    name = f"{lab.registry}/promises/flags-pullbase:{unique('b')}"
    ctx = tmp_path / "base"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nARG ORIGIN\nRUN echo $ORIGIN > /origin\n")
    lab.archfleet("build", "-q", "--platform", "linux/amd64", "--build-arg", "ORIGIN=registry", "-t", name, "--push",
                  str(ctx), check=True)
    local = subprocess.run([DOCKER, "build", "--platform", "linux/amd64", "--build-arg", "ORIGIN=local", "-t", name,
                            str(ctx)], capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    assert local.returncode == 0, local.stderr[-2000:]
    try:
        yield name
    finally:
        subprocess.run([DOCKER, "rmi", name], capture_output=True)


def test_bases_are_pulled_by_default_and_taken_from_the_engine_only_with_no_pull(lab, tmp_path, shadowed_base):
    (tmp_path / "Dockerfile").write_text("ARG BASE\nFROM $BASE\nRUN cat /origin > /seen\nCMD [\"cat\", \"/seen\"]\n")
    repo = "promises/flags-pull"
    seen = {}
    for how, extra in (("default", []), ("--pull", ["--pull"]), ("--no-pull", ["--no-pull"])):
        tag = f"{lab.registry}/{repo}:{unique(how.strip('-'))}"
        lab.archfleet("build", "-q", "--platform", "linux/amd64", "--build-arg", f"BASE={shadowed_base}", *extra,
                      "-t", tag, "--push", str(tmp_path), check=True)
        seen[how] = lab.run_image(tag, "linux/amd64")
    assert seen == {"default": "registry", "--pull": "registry", "--no-pull": "local"}


def test_file_and_target_choose_the_dockerfile_and_the_stage(lab, tmp_path):
    (tmp_path / "other.Dockerfile").write_text(
        f"FROM {lab.base} AS first\nRUN echo first > /stage\nCMD [\"cat\", \"/stage\"]\n"
        f"FROM {lab.base} AS second\nRUN echo second > /stage\nCMD [\"cat\", \"/stage\"]\n")
    (tmp_path / "Dockerfile").write_text(f"FROM {lab.base}\nCMD [\"echo\", \"the default Dockerfile\"]\n")
    tag = f"{lab.registry}/promises/flags-target:{unique('t')}"
    lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-f", str(tmp_path / "other.Dockerfile"),
                  "--target", "first", "-t", tag, "--push", str(tmp_path), check=True)
    assert lab.run_image(tag, "linux/arm64") == "first"


@pytest.fixture
def recording_cli(tmp_path) -> tuple[Path, Path]:
    """An engine CLI that records each command line it runs, then runs /usr/bin/docker."""
    log = tmp_path / "ran.log"
    wrapper = tmp_path / "bin" / "recording-docker"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {DOCKER} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


@pytest.mark.parametrize("how", ["--engine-cli", "ARCHFLEET_ENGINE_CLI"])
def test_the_engine_cli_named_builds(lab, tmp_path, recording_cli, how):
    wrapper, log = recording_cli
    (tmp_path / "Dockerfile").write_text(f"FROM {lab.base}\nRUN echo {uuid.uuid4().hex} > /n\n")
    flag = ["--engine-cli", str(wrapper)] if how == "--engine-cli" else []
    env = {"ARCHFLEET_ENGINE_CLI": str(wrapper)} if how == "ARCHFLEET_ENGINE_CLI" else {}
    proc = lab.archfleet("build", "--progress", "plain", *flag, "--platform", "linux/amd64,linux/arm64",
                         str(tmp_path), env=env, check=True)
    builds = [line for line in log.read_text().splitlines() if line.startswith("build ")]
    assert sorted(re.search(r"--platform (\S+)", b).group(1) for b in builds) == ["linux/amd64", "linux/arm64"], \
        log.read_text()
    assert "[linux/arm64@local]" in proc.stderr


class Forwarder:
    """A Unix socket at ``path`` forwarding every connection to dockerd's socket, recording the
    HTTP requests the clients send (method and path)."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock"):
        self.path, self.target = path, target
        self.requests: list[str] = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src, dst, requests: bool):
        try:
            while data := src.recv(65536):
                if requests:
                    self.requests += [m.decode() for m in re.findall(rb"(?:GET|POST|HEAD|PUT|DELETE) /\S+", data)]
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.server.close()


def test_docker_host_names_the_local_engine_for_the_cli_and_the_api(lab, tmp_path):
    dead = f"unix://{tmp_path}/nobody-listens.sock"
    local = ls(lab, None, env={"DOCKER_HOST": dead})["local"]
    assert not local["reachable"] and "no Docker engine answers" in local["error"], local  # the API's client
    proxy = Forwarder(tmp_path / "docker.sock")
    try:
        tag = f"{lab.registry}/promises/flags-dockerhost:{unique('t')}"
        env = {"DOCKER_HOST": f"unix://{proxy.path}"}
        proc = lab.archfleet("build", "-q", "--platform", "linux/amd64", "-t", tag, "--push", "examples/arch-test",
                             env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        proxy.close()
    assert [r for r in proxy.requests if re.match(r"POST /v[\d.]+/build\?", r)], proxy.requests  # the engine CLI
    # the child's export (the CLI's docker save: GET /images/get?names=...), which archfleet's
    # client then pushes by digest
    assert [r for r in proxy.requests if re.match(r"GET /v[\d.]+/images/(\S+/)?get", r)], proxy.requests
    assert lab.manifest("promises/flags-dockerhost", tag.rsplit(":", 1)[1]).status_code == 200


def test_an_unreachable_docker_host_is_one_line_exit_3(lab, tmp_path):
    proc = lab.archfleet("build", "--platform", "linux/amd64", "examples/arch-test",
                         env={"DOCKER_HOST": f"unix://{tmp_path}/nobody-listens.sock"})
    assert proc.returncode == 3, proc.stderr
    assert "no Docker engine answers" in one_line_error(proc)
