"""Input that can be checked before building is checked before building, end to end: the real CLI
in a subprocess against the lab's dockerd and registry (pushes go to 127.0.0.1:5000/cli/...)."""

from __future__ import annotations

import os

import pytest

from labtools import one_line_error, unique

DIGEST = "sha256:" + "0" * 64


@pytest.fixture
def derived_ctx(lab, tmp_path):
    """Case 06's context: a RUN step, so a build really runs (and would push) for each platform."""
    (tmp_path / "Dockerfile").write_text("ARG BASE\nFROM $BASE\nRUN uname -m > /arch\nCMD [\"cat\", \"/arch\"]\n")
    return tmp_path


@pytest.mark.parametrize("suffix,rule", [
    (f"@{DIGEST}", "a digest cannot be pushed to"),
    (f":v1@{DIGEST}", "a digest cannot be pushed to"),
    (":" + "a" * 128, "would be 140 characters, more than the registry's 128"),  # 128 + "-linux-arm64"
    (":v\u00e9", "printable ASCII"),
])
def test_tags_that_break_the_derived_child_refs_exit_2_before_building(lab, derived_ctx, suffix, rule):
    """Case 06 (podman farm #27587): each is refused at once, nothing pushed, not even a child."""
    repo = f"cli/{unique('derived')}"
    proc = lab.archfleet("build", "-t", f"{lab.registry}/{repo}{suffix}", "--platform", "linux/amd64,linux/arm64",
                         "--build-arg", f"BASE={lab.base}", "--push", str(derived_ctx), timeout=120)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert f"invalid --tag '{lab.registry}/{repo}" in line and rule in line
    assert lab.manifest(repo, "latest").status_code == 404
    assert lab.manifest(repo, "v1-linux-amd64").status_code == 404


def test_control_tag_builds_and_pushes_both_platforms(lab, derived_ctx):
    repo, tag = f"cli/{unique('derived')}", unique("ok")
    proc = lab.archfleet("build", "-q", "-t", f"{lab.registry}/{repo}:{tag}", "--platform", "linux/amd64,linux/arm64",
                         "--build-arg", f"BASE={lab.base}", "--push", str(derived_ctx), check=True)
    index = lab.manifest(repo, tag)
    assert index.headers["docker-content-digest"] == proc.stdout.strip()
    assert sorted(m["platform"]["architecture"] for m in index.json()["manifests"]) == ["amd64", "arm64"]


def test_a_checkouts_nodes_toml_runs_nothing(lab, tmp_path):
    """Finding 3: `archfleet plan` in a checkout whose nodes.toml names its own engine CLI."""
    marker = tmp_path / "ran"
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "docker").write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 1\n")
    (tools / "docker").chmod(0o755)
    (tmp_path / "nodes.toml").write_text('[nodes.local]\nengine_cli = "./tools/docker"\n'
                                         'docker_host = "tcp://127.0.0.1:9"\n')
    (tmp_path / "Dockerfile").write_text(f"FROM {lab.base}\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "ARCHFLEET_NODES": "", "PATH": "/usr/bin:" + os.environ["PATH"]}
    proc = lab.archfleet("plan", "--platform", "linux/amd64", ".", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert proc.stderr == ("archfleet: warning: ./nodes.toml is not read unless you name it (it can run programs): "
                           "pass --nodes nodes.toml or set $ARCHFLEET_NODES if you trust it\n")
    # named, it is trusted: its engine CLI is the one probed (relative to the file)
    named = lab.archfleet("plan", "--nodes", "nodes.toml", "--platform", "linux/amd64", ".", cwd=tmp_path, env=env)
    assert named.returncode == 3 and marker.exists()


@pytest.mark.parametrize("args,message", [
    (["--platform", "linux/arm64", "--node", "linux/arm64=nosuch"],
     "--node 'linux/arm64=nosuch': no node named 'nosuch' (known: local; see archfleet ls)"),
    (["--strategy", "bogus"], "--strategy 'bogus': no strategy named 'bogus' (known: cross, native, qemu; "
                              "see archfleet plugins)"),
    (["--platform", "linux/arm64", "--strategy", "cross"],
     "--strategy 'cross': Dockerfile cannot cross-compile: no stage it builds runs on $BUILDPLATFORM"),
])
def test_pins_naming_nothing_are_usage_errors(lab, args, message):
    proc = lab.archfleet("plan", *args, "examples/arch-test", env={"ARCHFLEET_DISABLE_PLUGINS": "reuse"})
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(f"archfleet: error: {message}")


def test_metadata_file_in_a_missing_directory_stops_before_building(lab, tmp_path):
    repo, tag = f"cli/{unique('meta')}", unique("t")
    proc = lab.archfleet("build", "--platform", "linux/amd64", "-t", f"{lab.registry}/{repo}:{tag}", "--push",
                         "--metadata-file", str(tmp_path / "no" / "meta.json"), "examples/arch-test")
    assert proc.returncode == 2
    assert "--metadata-file: directory" in one_line_error(proc)
    assert lab.manifest(repo, tag).status_code == 404
