"""archfleet.engineinfos: a local CLI's ``docker info`` answer is kept while everything it
depends on is as it was (the CLI's file, the daemon's socket file and that something listens
on it, the CLI's config and plugins), and never for a daemon reached another way."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading

import pytest

from archfleet import engineinfos
from archfleet.model import EngineInfo

PROGRAM = os.path.realpath(sys.executable)  # an ELF program whose path names itself


class FakeDaemon:
    """A Unix socket answering ``GET /_ping`` as dockerd does (its version in ``Server``)."""

    def __init__(self, path, version="20.10.24+dfsg1"):
        self.version = version
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(8)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(f"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nServer: Docker/{self.version} (linux)\r\n"
                             "Content-Length: 2\r\nContent-Type: text/plain\r\n\r\nOK".encode())

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone leaves it listening)
        except OSError:
            pass
        self.listener.close()


@pytest.fixture
def daemon(tmp_path):
    """A fake dockerd's socket (:class:`FakeDaemon`), and an environment naming it."""
    path = tmp_path / "docker.sock"
    fake = FakeDaemon(path)
    env = {"DOCKER_HOST": f"unix://{path}", "DOCKER_CONFIG": str(tmp_path / "config")}
    yield path, fake, env
    fake.close()


def test_the_same_daemon_cli_config_and_plugins_give_the_same_identity(daemon):
    _, _, env = daemon
    assert engineinfos.identity(PROGRAM, environ=env) == engineinfos.identity(PROGRAM, environ=env) is not None


def test_a_restarted_daemon_is_another_identity(daemon, tmp_path):
    """Rule: dockerd makes its socket file anew at each start: a new inode is a new identity."""
    path, fake, env = daemon
    before = engineinfos.identity(PROGRAM, environ=env)
    fake.close()
    path.unlink()
    again = FakeDaemon(path)
    try:
        assert engineinfos.identity(PROGRAM, environ=env) not in (None, before)
    finally:
        again.close()


def test_a_daemon_upgraded_behind_the_same_socket_file_is_another_identity(daemon):
    """Rule: with socket activation systemd keeps the socket file across a restart; what the
    daemon answers to /_ping (its version) is part of the identity."""
    _, fake, env = daemon
    before = engineinfos.identity(PROGRAM, environ=env)
    fake.version = "24.0.7"
    assert engineinfos.identity(PROGRAM, environ=env) not in (None, before)


def test_the_clis_environment_is_part_of_the_identity(daemon):
    """Rule: ``docker info``'s answer depends on what the CLI reads from its environment
    (``DOCKER_API_VERSION=1.99`` makes it fail)."""
    _, _, env = daemon
    assert engineinfos.identity(PROGRAM, environ=dict(env, DOCKER_API_VERSION="1.99")) != \
        engineinfos.identity(PROGRAM, environ=env)


def test_a_socket_nobody_listens_on_is_never_kept(daemon):
    """Rule: a stopped daemon leaves its socket file; the CLI must be asked (it says why)."""
    _, fake, env = daemon
    fake.close()
    assert engineinfos.identity(PROGRAM, environ=env) is None


@pytest.mark.parametrize("env", [{"DOCKER_HOST": "tcp://127.0.0.1:2375"}, {"DOCKER_HOST": "ssh://me@host"},
                                 {"DOCKER_CONTEXT": "remote"}, {"DOCKER_HOST": "unix://docker.sock"}])
def test_a_daemon_reached_otherwise_than_by_a_unix_socket_is_never_kept(env, daemon):
    """Rule: only a Unix socket's file, named by an absolute path, says which daemon it is."""
    assert engineinfos.identity(PROGRAM, environ=dict(daemon[2], **env)) is None


def test_a_cli_context_in_config_json_is_never_kept(daemon, tmp_path):
    _, _, env = daemon
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"currentContext": "remote"}))
    assert engineinfos.identity(PROGRAM, environ={k: v for k, v in env.items() if k != "DOCKER_HOST"}) is None


def test_a_plugin_added_or_the_config_changed_is_another_identity(daemon, tmp_path):
    """Rule: ``docker info`` lists the CLI's plugins (buildx) and reads its config."""
    _, _, env = daemon
    before = engineinfos.identity(PROGRAM, environ=env)
    plugins = tmp_path / "config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-buildx").write_bytes(b"\x7fELF")
    with_plugin = engineinfos.identity(PROGRAM, environ=env)
    assert with_plugin != before
    (tmp_path / "config" / "config.json").write_text("{}")
    assert engineinfos.identity(PROGRAM, environ=env) not in (before, with_plugin)


def test_a_script_is_never_kept(daemon, tmp_path):
    """Rule (as cliversions): a script's answer is whatever the program it runs says."""
    script = tmp_path / "docker"
    script.write_text("#!/bin/sh\nexec /usr/bin/docker \"$@\"\n")
    script.chmod(0o755)
    assert engineinfos.identity(str(script), environ=daemon[2]) is None


def test_an_answer_is_recalled_only_under_the_identity_it_was_kept_with(daemon, monkeypatch):
    _, _, env = daemon
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    now = engineinfos.identity(PROGRAM)
    engineinfos.store([EngineInfo(PROGRAM, json.dumps(now), ("client={}", "version=20.10.24 security="))])
    assert engineinfos.recall(PROGRAM, now).tail == ("client={}", "version=20.10.24 security=")
    other = json.loads(json.dumps(now))
    other[2][1] += 1  # another socket inode
    assert engineinfos.recall(PROGRAM, other) is None
    assert engineinfos.recall(PROGRAM, None) is None
