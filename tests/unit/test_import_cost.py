"""What a command imports before it needs it (issue 17: fixed cost per run). Each case runs a
fresh interpreter, since this test process has long imported everything."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize("module", ["archfleet.cli", "archfleet.pipeline", "archfleet.api", "archfleet.plugins.ssh"])
def test_importing_archfleet_loads_neither_docker_py_nor_httpx(module):
    """Rule: docker-py (~45 ms) and httpx (~60 ms) load when first used (archfleet.dockerlib,
    archfleet.httpxlib's LazyLoader): `archfleet ls` of SSH nodes uses neither."""
    got = imported_after(f"import {module}")
    assert "docker" not in got and "httpx._client" not in got and "requests" not in got


def test_a_registry_client_does_not_load_httpx_s_command_line():
    """Rule: httpx imports its CLI (click, rich, pygments: ~39 ms) with the package; archfleet's
    process puts a stub in its place (archfleet.httpxlib) and never runs it."""
    got = imported_after("import archfleet.registry as r\nr.RegistryClient()._http")
    assert "httpx._client" in got
    assert "rich" not in got and "pygments" not in got


def test_making_a_registry_client_loads_httpx_only_at_its_first_request():
    """Rule (issue 17): a build makes its client before planning; httpx (~40 ms of CPU) loads at
    the first request, after the probe's engine CLIs started, so the two overlap."""
    got = imported_after("import archfleet.registry as r\nr.RegistryClient()")
    assert "httpx._client" not in got


def test_buildkit_s_parser_is_imported_with_sigint_blocked(tmp_path):
    """Rule (archfleet.dockerfile._import_parser): the ``dockerfile`` package is a Go shared
    library, and a Ctrl-C while its runtime started crashed archfleet with SIGSEGV (11 of 400
    interrupted imports here); it is imported with SIGINT blocked, and unblocked after. A stand-in
    package records the signal mask its import ran under."""
    fake = tmp_path / "dockerfile"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import signal\nMASK_AT_IMPORT = signal.pthread_sigmask(signal.SIG_BLOCK, [])\n"
        "def all_cmds():\n    return ('from', 'run')\n")
    code = (f"import sys, signal\nsys.path.insert(0, {str(tmp_path)!r})\n"
            "from archfleet.dockerfile import _buildkit\n"
            "assert _buildkit.__file__.startswith(sys.path[0]), _buildkit.__file__\n"
            "print(signal.SIGINT in _buildkit.MASK_AT_IMPORT, signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
