"""A build handed to ``archfleet server`` (archfleet.server) against the lab's dockerd and
registry: the same result, said the same way, as the command in its own process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labtools import unique

ARCHFLEET = str(Path(sys.executable).with_name("archfleet"))
REPO = Path(__file__).resolve().parent.parent.parent


def test_a_build_through_the_server_pushes_and_says_the_digest_as_alone(lab):
    """Rule: with a server running, ``archfleet build --push`` runs in it (the server counts it)
    and ends as alone: exit 0, the index digest the tag points at on stdout."""
    runtime = Path(tempfile.mkdtemp(prefix="afs-", dir="/tmp"))
    runtime.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if k != "ARCHFLEET_SERVER"}
    env.update(XDG_RUNTIME_DIR=str(runtime), DOCKER_BUILDKIT="1")
    tag = f"{lab.registry}/promises/server:{unique('srv')}"
    try:
        started = subprocess.run([ARCHFLEET, "server", "start"], env=env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        done = subprocess.run([ARCHFLEET, "build", "-q", "--platform", "linux/amd64", "--build-arg",
                               f"BASE={lab.base}", "--build-arg", f"ROUND={tag}", "-t", tag, "--push",
                               "bench/contexts/tiny"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        digest = done.stdout.strip()
        assert lab.manifest("promises/server", tag.rsplit(":", 1)[1]).headers["docker-content-digest"] == digest
        status = subprocess.run([ARCHFLEET, "server", "status"], env=env, capture_output=True, text=True, timeout=30)
        assert "1 command(s) served" in status.stdout
    finally:
        subprocess.run([ARCHFLEET, "server", "stop"], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while any(runtime.glob("archfleet/*.sock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(runtime, ignore_errors=True)
