"""A registry that refuses a push, with the real dockerd relaying it (finding 7): the refusal is
a RegistryRefused (exit 3, not retried on another node) read from the registry's error code in
dockerd's message, never an InfrastructureError. The registry is Debian's docker-registry with
token auth on 127.0.0.1:5053; its token service (127.0.0.1:5054) lets alice push only under
alice/, as Docker Hub does. And the build itself refuses before building anything."""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
import uuid

import pytest

from labtools import basic_entry, docker_config, one_line_error
from tokens import token_registry

REGISTRY = "127.0.0.1:5053"
TOKEN_PORT = 5054
USER, PASSWORD = "alice", "hunter2-refusals"


@pytest.fixture(scope="module")
def refusing_registry(lab, tmp_path_factory):
    with token_registry(tmp_path_factory.mktemp("refusing"), REGISTRY, TOKEN_PORT, issuer="archfleet-fake-hub",
                        service="registry.docker.io", user=USER, password=PASSWORD, hub_rules=True) as service:
        yield service


@pytest.fixture
def local_image(lab):
    """A one-file image imported into the local engine (no registry involved), removed after."""
    name = f"registry/refusal-test:{uuid.uuid4().hex[:8]}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = uuid.uuid4().hex.encode()
        info = tarfile.TarInfo("hello")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run([lab.docker, "import", "-", name], input=buf.getvalue(), check=True, capture_output=True)
    tags = [name]
    yield tags
    subprocess.run([lab.docker, "rmi", *tags], capture_output=True)


def push_as(lab, local_image, repo: str, password: str):
    from archfleet import engine
    from archfleet.reference import parse_reference
    from archfleet.transport import LocalTransport

    tag = f"{REGISTRY}/{repo}:1"
    subprocess.run([lab.docker, "tag", local_image[0], tag], check=True)
    local_image.append(tag)
    return asyncio.run(engine.push(LocalTransport("local"), parse_reference(tag),
                                   {"username": USER, "password": password}))


def test_dockerd_relaying_denied_is_a_refusal_exit_3_not_infrastructure(lab, refusing_registry, local_image):
    from archfleet.errors import RegistryRefused

    with pytest.raises(RegistryRefused) as err:
        push_as(lab, local_image, "bob/app", PASSWORD)
    assert err.value.exit_code == 3 and not err.value.retry_elsewhere
    assert "denied" in str(err.value) and f"docker login {REGISTRY}" in str(err.value)


def test_dockerd_relaying_wrong_credentials_is_a_refusal(lab, refusing_registry, local_image):
    from archfleet.errors import RegistryRefused

    with pytest.raises(RegistryRefused, match="unauthorized"):
        push_as(lab, local_image, f"{USER}/app", "wrong")


def test_a_push_the_registry_allows_returns_its_digest(lab, refusing_registry, local_image):
    assert push_as(lab, local_image, f"{USER}/app", PASSWORD).startswith("sha256:")


def test_a_repository_the_account_may_not_push_to_is_one_line_before_building(lab, refusing_registry, tmp_path):
    env = docker_config(tmp_path, {REGISTRY: basic_entry(USER, PASSWORD)})
    proc = lab.archfleet("build", "--progress", "plain", "--platform", "linux/amd64", "-t", f"{REGISTRY}/bob/app:1",
                         "--push", "examples/arch-test", env=env)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = one_line_error(proc)
    assert f"docker login {REGISTRY}" in line and "bob/app" in line
