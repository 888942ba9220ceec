"""Getting started on a user's own machine (docs/index.md): archfleet installed as a tool from a
clean clone, the two ways the page gives, each into an environment of its own:

- a wheel from ``python -m build`` (isolated, as a packager builds it) installed into a fresh venv;
- ``pipx install .``.

Each installed ``archfleet`` must run from outside the checkout and carry every built-in plugin
(a wheel holds only the packages pyproject.toml lists: the SSH transport's subpackage was missing
once, which an editable install hides), and its ``doctor`` must answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, missing

BUILTINS = {"local", "ssh", "native", "qemu", "cross", "estimates"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The committed tree, as CI and a user get it (nothing the working tree has beside it)."""
    d = tmp_path_factory.mktemp("clone") / "archfleet"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(d)], check=True, timeout=120)
    return d


def installed_works(archfleet: Path, cwd: Path) -> None:
    """``archfleet`` runs from ``cwd`` (not the checkout: nothing is imported from the source tree)
    and has every built-in plugin; ``doctor --no-local`` answers without a traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ARCHFLEET_NODES")}
    version = subprocess.run([str(archfleet), "--version"], capture_output=True, text=True, cwd=cwd, env=env,
                             timeout=60)
    assert version.returncode == 0 and "0.1.0" in version.stdout, version.stderr
    plugins = subprocess.run([str(archfleet), "plugins", "--format", "json"], capture_output=True, text=True,
                             cwd=cwd, env=env, timeout=60)
    assert plugins.returncode == 0, plugins.stderr
    doc = json.loads(plugins.stdout)
    names = {p["name"] for p in (doc["plugins"] if isinstance(doc, dict) else doc)}
    assert BUILTINS <= names, names
    doctor = subprocess.run([str(archfleet), "doctor", "--no-local", "--platform", "linux/amd64"], capture_output=True,
                            text=True, cwd=cwd, env=env, timeout=120)
    assert "Traceback" not in doctor.stderr and doctor.stdout.strip().splitlines()[-1].endswith("warnings"), \
        doctor.stdout + doctor.stderr


def test_a_wheel_built_from_a_clean_clone_installs_into_a_fresh_venv_and_runs(clone, tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(clone)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("archfleet-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    installed_works(venv / "bin" / "archfleet", tmp_path)


def test_pipx_installs_archfleet_from_a_clean_clone_as_a_tool(clone, tmp_path):
    pipx = shutil.which("pipx")
    if pipx is None:
        missing("pipx is not installed (tests/lab/bootstrap.sh installs Debian's)")
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin"),
           "PIPX_MAN_DIR": str(tmp_path / "man")}
    proc = subprocess.run([pipx, "install", str(clone)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    installed_works(tmp_path / "bin" / "archfleet", tmp_path)
