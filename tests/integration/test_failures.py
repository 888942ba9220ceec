"""Failures and interrupts end to end on the lab's local node (Docker 20.10, its BuildKit, the
registry on 127.0.0.1:5000; repositories exec/...): a build that fails is the build's failure
(not the node's), stops the other platforms and is one line; Ctrl-C leaves the tag untouched
or says plainly that the index was pushed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import REPO
from labtools import manifest as registry_manifest, unique

REPO_NAME = "exec/arch-test"


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [l for l in stderr.splitlines() if l.startswith("archfleet: error:")]


def left_running(session: int) -> list[str]:
    """Processes still in the session ``session`` (archfleet started as its leader)."""
    out = subprocess.run(["ps", "-eo", "sid=,pid=,args="], capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if l.split(None, 1)[0] == str(session)]


def test_run_step_printing_connection_refused_fails_once_and_is_not_replanned(lab, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        f'FROM {lab.base}\nRUN echo "Connection refused" && echo "connection reset by peer" && exit 1\n')
    plain = lab.archfleet("build", "--progress", "plain", "--no-cache", "--platform", "linux/amd64", str(tmp_path))
    assert plain.returncode == 1, plain.stderr
    (line,) = error_lines(plain.stderr)
    assert line.startswith("archfleet: error: linux/amd64 failed on native@local: build failed: executor failed running")
    assert "#" in plain.stderr and "Connection refused" in plain.stderr  # the step really printed it
    assert "re-planned" not in plain.stderr and "engine" not in line
    quiet = lab.archfleet("build", "-q", "--no-cache", "--platform", "linux/amd64", str(tmp_path))
    assert quiet.returncode == 1
    assert quiet.stderr.splitlines() == [line]  # one line, nothing else


def test_a_failing_platform_stops_the_others_at_once(lab, tmp_path):
    # amd64 fails after a second; arm64 (under QEMU) would take 60 s more
    (tmp_path / "Dockerfile").write_text(
        f"FROM {lab.base}\nRUN if [ \"$(uname -m)\" = x86_64 ]; then sleep 1; exit 3; fi; sleep 60\n")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "archfleet.cli", "build", "--progress", "plain", "--no-cache",
                             "--platform", "linux/amd64,linux/arm64", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - started
    assert proc.returncode == 1, err
    (line,) = error_lines(err)
    assert line.startswith("archfleet: error: linux/amd64 failed on ") and "exit code: 3" in line
    assert "linux/arm64" not in line
    assert "[linux/arm64@local] cancelled: linux/amd64 failed" in err
    assert took < 45, f"took {took:.0f}s: the arm64 build was not stopped"
    assert left_running(proc.pid) == []  # the arm64 engine CLI was killed, not left building


def manifest(tag: str) -> httpx.Response:
    return registry_manifest(lab_registry(), REPO_NAME, tag)


def lab_registry() -> str:
    return os.environ.get("ARCHFLEET_REGISTRY", "127.0.0.1:5000")


def interrupted_build(tmp_path, trigger: str, delay: float):
    """Start `archfleet build --push` of examples/arch-test for two platforms (a fresh tag), send
    SIGINT to its process group (as a terminal's Ctrl-C does: docker CLIs included) ``delay``
    seconds after ``trigger`` appears on stderr ("" = after start); return what happened."""
    tag = unique("int-" + (re.sub(r"[^a-z]", "", trigger) or "start"))
    ref = f"{lab_registry()}/{REPO_NAME}:{tag}"
    # the installed console script, as a user runs it: it, not `python -m archfleet.cli`, is
    # what must keep the Ctrl-C rule (it once called main() and skipped entrypoint()'s guard)
    script = Path(sys.executable).with_name("archfleet")
    assert script.exists(), f"{script}: the console script is not installed (pip install -e .)"
    proc = subprocess.Popen(
        [str(script), "build", "--progress", "plain", "--label", f"run={uuid.uuid4().hex}",
         "--platform", "linux/amd64,linux/arm64", "-t", ref, "--push", "examples/arch-test"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
        # jobs started in the background by a non-interactive shell ignore SIGINT, and an
        # ignored signal stays ignored across exec: give archfleet the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if trigger in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seen.wait(120)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            # where it is stuck, then the failure: every thread's stack (the console script's
            # SIGUSR1 handler, faulthandler) and what it printed
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(2)
            os.killpg(proc.pid, signal.SIGKILL)
            reader.join(10)
            raise AssertionError(f"archfleet did not end 120 s after SIGINT ({trigger!r} + {delay} s):\n"
                                 + "".join(lines)[-12000:]) from None
        reader.join(10)
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, "".join(lines), out, tag


POINTS = [("", 0.0), ("] building", 0.3), ("] pushing", 0.0), ("verifying", 0.0), ("verifying", 0.02),
          ("verifying", 0.05), ("verifying", 0.1), ("verifying", 0.2), ("verifying", 0.4), ("pushed ", 0.0)]


@pytest.mark.parametrize("trigger, delay", POINTS)
def test_ctrl_c_leaves_the_tag_untouched_or_says_it_was_pushed(lab, tmp_path, trigger, delay):
    proc, err, out, tag = interrupted_build(tmp_path, trigger, delay)
    assert "Traceback" not in err, err
    index = manifest(tag)
    if proc.returncode == 0:  # done before the signal came
        assert index.status_code == 200 and index.headers["docker-content-digest"] == out.strip().splitlines()[-1]
        return
    assert proc.returncode == 130, err[-3000:]
    (line,) = error_lines(err)
    published = re.match(r"archfleet: error: interrupted after the index (sha256:[0-9a-f]{64}) was pushed to (\S+)$",
                         line)
    if published:
        assert published.group(2).endswith(f":{tag}")
        assert index.status_code == 200 and index.headers["docker-content-digest"] == published.group(1)
    else:
        assert line == "archfleet: error: interrupted", line
        assert index.status_code == 404, f"the tag moved although the run said only 'interrupted': {err[-2000:]}"
    assert left_running(proc.pid) == []


def test_allow_partial_leaves_out_a_child_that_fails_verification(lab, tmp_path):
    # the final stage is pinned to amd64: the "arm64" child runs an amd64 program (Docker
    # 20.10 still writes arm64 into its config), so its verification fails
    (tmp_path / "Dockerfile").write_text(f'FROM --platform=linux/amd64 {lab.base}\nCMD ["uname", "-m"]\n')
    tag = unique("partial-verify")
    ref = f"{lab_registry()}/{REPO_NAME}:{tag}"
    proc = lab.archfleet("build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", ref, "--push",
                         "--allow-partial", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (warning,) = [l for l in proc.stderr.splitlines() if "warning: left out" in l]
    assert "linux/arm64 failed on " in warning and "built for linux/amd64" in warning and "linux/amd64 failed" not in warning
    index = manifest(tag).json()
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64"]
    without = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{ref}-strict", "--push",
                            str(tmp_path))
    assert without.returncode == 1
    (line,) = without.stderr.splitlines()
    assert line.startswith("archfleet: error: linux/arm64 failed on ") and line.endswith("nothing was pushed to the tags")
    assert manifest(f"{tag}-strict").status_code == 404


def test_sigterm_stops_the_run_as_ctrl_c_does_engine_cli_and_lease_included(lab, tmp_path):
    """Rule (cli._run): SIGTERM to archfleet alone (a CI job cancelled, `timeout`) is handled as
    Ctrl-C: the engine CLI it started is stopped, its build-slot lease removed, the tag left
    untouched, one line ("terminated (SIGTERM)"), exit 130. The fresh-user helper saw a killed
    run leave `docker build` running (PPID 1) and its lease blocking the node for 75 s."""
    leases_root = tmp_path / "leases"
    marker = uuid.uuid4().hex
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nARG M\nRUN echo $M && sleep 30\n")
    tag = unique("sigterm")
    ref = f"{lab_registry()}/{REPO_NAME}:{tag}"
    script = Path(sys.executable).with_name("archfleet")
    proc = subprocess.Popen(
        [str(script), "build", "--progress", "plain", "--no-cache", "--build-arg", f"M={marker}",
         "--platform", "linux/amd64", "-t", ref, "--push", str(ctx)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
        env=dict(os.environ, ARCHFLEET_LEASE_ROOT=str(leases_root)))
    lines: list[str] = []
    building = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if marker in line and "RUN" not in line:  # the step's own output: it is running
                building.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert building.wait(120), "".join(lines)[-3000:]
        assert list(leases_root.glob("*/*")), "no lease while building"
        proc.send_signal(signal.SIGTERM)  # the process alone, not its group
        proc.wait(60)
        reader.join(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = "".join(lines)
    assert proc.returncode == 130, err[-3000:]
    assert error_lines(err) == ["archfleet: error: terminated (SIGTERM)"]
    assert [l for l in left_running(proc.pid) if marker in l] == []  # no engine CLI left building
    assert [p.name for p in leases_root.glob("*/*")] == []
    assert manifest(tag).status_code == 404
