"""A plugin written as pluggy documents it, installed as a package, works in `plan` and `build`:
archfleet calls every hook through pluggy's HookCaller, so new-style wrappers
(`@hookimpl(wrapper=True)`) see and change what the other plugins answer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest

PLUGIN = '''
import os

from archfleet.api import hookimpl


@hookimpl(wrapper=True)
def archfleet_estimate(option):
    answer = yield
    seconds, basis = answer if answer is not None else (option.estimate, "the offer's prior")
    return seconds, basis + " (seen by the wrapper)"


@hookimpl(wrapper=True)
def archfleet_run(option, request, job):
    running = yield  # the strategy's awaitable

    async def observed():
        result = await running
        with open(os.environ["ARCHFLEET_TEST_WRAPPER_LOG"], "a") as log:
            log.write(f"{result.platform} {result.option.strategy}@{result.option.node}\\n")
        return result

    return observed()
'''


@pytest.fixture(scope="module")
def wrapper_installed(tmp_path_factory):
    pkg = tmp_path_factory.mktemp("wrapper-plugin")
    (pkg / "archfleet_test_wrapper.py").write_text(textwrap.dedent(PLUGIN))
    (pkg / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "archfleet-test-wrapper"
        version = "0.1.0"
        [project.entry-points.archfleet]
        test-wrapper = "archfleet_test_wrapper"
        [tool.setuptools]
        py-modules = ["archfleet_test_wrapper"]
    '''))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(pkg)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    try:
        yield
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "archfleet-test-wrapper"],
                       capture_output=True)


def test_a_wrapper_changes_every_estimate_in_plan(lab, wrapper_installed):
    proc = lab.archfleet("plan", "--format", "json", "--platform", "linux/amd64,linux/arm64",
                         "--build-arg", f"BASE={lab.base}", "examples/arch-test", check=True)
    doc = json.loads(proc.stdout)
    bases = [p["estimate_basis"] for p in doc["platforms"]]
    bases += [a["estimate_basis"] for p in doc["platforms"] for a in p["alternatives"]]
    assert bases and all(b.endswith(" (seen by the wrapper)") for b in bases), bases


def test_a_wrapper_sees_every_platform_built_in_build(lab, wrapper_installed, tmp_path):
    log = tmp_path / "wrapper.log"
    tag = f"{lab.registry}/wrapper:{uuid.uuid4().hex[:8]}"
    lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "--build-arg", f"BASE={lab.base}",
                  "-t", tag, "--push", "examples/arch-test", env={"ARCHFLEET_TEST_WRAPPER_LOG": str(log)}, check=True)
    seen = sorted(line.split()[0] for line in log.read_text().splitlines())
    assert seen == ["linux/amd64", "linux/arm64"]
