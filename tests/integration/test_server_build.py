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
    """Rule: by default (ARCHFLEET_SERVER unset) the first ``archfleet build --push`` runs in its
    own process and starts a server as it ends; the second runs in that server (it counts one
    served) and ends as alone: exit 0, the index digest the tag points at on stdout."""
    runtime = Path(tempfile.mkdtemp(prefix="afs-", dir="/tmp"))
    runtime.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if k != "ARCHFLEET_SERVER"}
    env.update(XDG_RUNTIME_DIR=str(runtime), DOCKER_BUILDKIT="1")
    try:
        for n in range(2):
            tag = f"{lab.registry}/promises/server:{unique('srv')}"
            done = subprocess.run([ARCHFLEET, "build", "-q", "--platform", "linux/amd64", "--build-arg",
                                   f"BASE={lab.base}", "--build-arg", f"ROUND={tag}", "-t", tag, "--push",
                                   "bench/contexts/tiny"], env=env, cwd=REPO, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, done.stderr
            digest = done.stdout.strip()
            assert lab.manifest("promises/server", tag.rsplit(":", 1)[1]).headers["docker-content-digest"] == digest
            deadline = time.monotonic() + 60
            while True:
                status = subprocess.run([ARCHFLEET, "server", "status"], env=env, capture_output=True, text=True,
                                        timeout=30)
                if status.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert f"{n} command(s) served" in status.stdout, (status.stdout, status.stderr)
    finally:
        subprocess.run([ARCHFLEET, "server", "stop"], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while any(runtime.glob("archfleet/*.sock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(runtime, ignore_errors=True)
