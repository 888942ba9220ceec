"""How engine.build classifies a failed build: from the exit path, a ping() and the CLI's own
error line, never from the build's output (the rules are in archfleet.engine's docstring)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from archfleet import engine
from archfleet.engine import EngineCLI
from archfleet.errors import BuildFailed, InfrastructureError
from archfleet.transport import LocalTransport

from stubs import AMD, StubTransport, fails, request

CLI = EngineCLI(("docker",), "buildkit")


def build(transport, on_line=None):
    return asyncio.run(engine.build(transport, CLI, platform=AMD, request=request(), tag="reg/app:1",
                                    on_line=on_line))


# What Docker 20.10 (DOCKER_BUILDKIT=1 docker build --progress plain) printed here for
# RUN echo "Connection refused" && exit 3: the step's output is prefixed "#5 ", the CLI's own
# error line is the last one.
RUN_PRINTS = ("#5 [2/2] RUN curl -fsS http://127.0.0.1:9/",
              "#5 0.162 curl: (7) Failed to connect to 127.0.0.1 port 9: Connection refused",
              "#5 0.170 read: connection reset by peer",
              "#5 0.171 write /data: no space left on device",
              "#5 ERROR: executor failed running [/bin/sh -c curl -fsS http://127.0.0.1:9/]: exit code: 7",
              "------",
              " > [2/2] RUN curl -fsS http://127.0.0.1:9/:",
              "------",
              "executor failed running [/bin/sh -c curl -fsS http://127.0.0.1:9/]: exit code: 7")


def test_run_step_printing_connection_refused_with_engine_alive_is_the_builds_failure():
    err = pytest.raises(BuildFailed, build, StubTransport("n1", fails(*RUN_PRINTS), alive=True)).value
    assert err.retry_elsewhere is False
    assert str(err) == "build failed: executor failed running [/bin/sh -c curl -fsS http://127.0.0.1:9/]: exit code: 7"


def test_process_exit_naming_an_errno_in_its_command_is_still_the_builds_failure():
    # the command itself ends in an errno text: the process exited, so it is the user's build
    line = 'executor failed running [/bin/sh -c echo "no space left on device" && exit 1]: exit code: 1'
    with pytest.raises(BuildFailed):
        build(StubTransport("n1", fails("#5 0.1 no space left on device", line)))


def test_buildkit_process_exit_form_is_the_builds_failure():
    line = 'ERROR: failed to solve: process "/bin/sh -c echo connection refused; exit 1" did not complete successfully: exit code: 1'
    err = pytest.raises(BuildFailed, build, StubTransport("n1", fails(line))).value
    assert str(err).startswith("build failed: failed to solve: process")


def test_engine_not_answering_ping_is_the_nodes_failure():
    err = pytest.raises(InfrastructureError, build, StubTransport("n1", fails(*RUN_PRINTS), alive=False)).value
    assert err.retry_elsewhere is True and err.node == "n1"
    assert "does not answer ping" in str(err)


@pytest.mark.parametrize("errno", ["no space left on device", "disk quota exceeded", "cannot allocate memory",
                                   "read-only file system", "input/output error", "too many open files"])
def test_node_resource_errno_ending_the_clis_own_line_is_the_nodes_failure(errno):
    line = f"failed to solve with frontend dockerfile.v0: failed to export: write /var/lib/docker/tmp/x: {errno}"
    err = pytest.raises(InfrastructureError, build, StubTransport("n1", fails("#7 exporting layers", line))).value
    assert str(err) == f"node n1: node out of resources: {line}"


def test_node_errno_only_in_the_builds_output_is_the_builds_failure():
    with pytest.raises(BuildFailed):
        build(StubTransport("n1", fails("#5 0.3 cp: write error: No space left on device",
                                        "#5 ERROR: executor failed running [/bin/sh -c cp a b]: exit code: 1")))


def test_errno_text_quoted_inside_a_clis_line_does_not_count():
    # a COPY source named after an errno: the line ends in "not found", the user's error
    line = 'failed to compute cache key: "/no space left on device" not found: not found'
    with pytest.raises(BuildFailed):
        build(StubTransport("n1", fails(line)))


@pytest.mark.parametrize("rc", [126, 127, -9])
def test_cli_not_runnable_or_killed_by_a_signal_is_the_nodes_failure(rc):
    with pytest.raises(InfrastructureError):
        build(StubTransport("n1", fails("docker: command not found", rc=rc)))


def test_base_image_registry_refusing_is_the_builds_failure_while_the_engine_answers():
    line = ('failed to solve with frontend dockerfile.v0: failed to create LLB definition: failed to do request: '
            'Head "http://127.0.0.1:9/v2/nosuch/img/manifests/latest": dial tcp 127.0.0.1:9: connect: connection refused')
    with pytest.raises(BuildFailed):
        build(StubTransport("n1", fails(line)))


def test_on_line_raising_kills_the_engine_cli_and_raises_its_error(tmp_path):
    # a real child process: the "engine CLI" writes its pid, prints a line, then sleeps 30 s
    pidfile = tmp_path / "pid"
    script = f'echo $$ > {pidfile}; echo "#1 [1/1] RUN [/]"; exec sleep 30'
    cli = EngineCLI(("sh", "-c", script, "sh"), "buildx")

    def on_line(line):
        raise RuntimeError(f"reporter broke on {line!r}")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="reporter broke"):
        asyncio.run(engine.build(LocalTransport("local"), cli, platform=AMD, request=request(), tag="",
                                 on_line=on_line))
    assert time.monotonic() - started < 10
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (killed and reaped), not left running
