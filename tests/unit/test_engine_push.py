"""engine.push: the Engine API's push errors get their type at the adapter boundary, from the
registry's error code dockerd relays and from a ping of the engine (finding 7): a registry
refusal ends the build with one line; only a dropped engine connection or an engine that no
longer answers is the node's fault (retried elsewhere). Plus the Docker Hub credentials the
engine is handed (finding 2)."""

import asyncio
import base64
import json

import docker.errors
import pytest
import requests

from archfleet import engine
from archfleet.errors import InfrastructureError, RegistryError, RegistryRefused
from archfleet.reference import parse_reference


class FakeAPI:
    def __init__(self, events=(), raises=None):
        self.events, self.raises, self.calls = list(events), raises, []

    def push(self, repository, tag=None, stream=False, decode=False, auth_config=None):
        self.calls.append((repository, tag, auth_config))
        for event in self.events:
            yield event
        if self.raises is not None:
            raise self.raises


class FakeDocker:
    def __init__(self, api, alive=True):
        self.api, self.alive = api, alive

    def ping(self):
        if not self.alive:
            raise requests.exceptions.ConnectionError("engine gone")
        return True


class FakeTransport:
    node = "pi4"

    def __init__(self, client):
        self.client = client

    def docker_client(self):
        return self.client


REF = parse_reference("docker.io/someone/app:1-linux-arm64")
PREFIX = [{"status": "The push refers to repository [docker.io/someone/app]"}, {"status": "Preparing", "id": "abc"}]


def push(events=(), raises=None, alive=True):
    transport = FakeTransport(FakeDocker(FakeAPI([*PREFIX, *events], raises), alive))
    return asyncio.run(engine.push(transport, REF, {"username": "u", "password": "p"}))


def error(message, **detail):
    return {"errorDetail": {"message": message, **detail}, "error": message}


def test_a_successful_push_returns_the_digest():
    digest = "sha256:" + "a" * 64
    assert push([{"status": "1-linux-arm64: digest: ...", "aux": {"Tag": "1-linux-arm64", "Digest": digest}}]) == digest


def test_denied_is_a_refusal_exit_3_with_the_docker_login_hint_not_retried():
    with pytest.raises(RegistryRefused) as err:
        push([error("denied: requested access to the resource is denied")])
    assert err.value.exit_code == 3 and not err.value.retry_elsewhere
    assert "`docker login`" in str(err.value) and "docker.io/someone/app:1-linux-arm64" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("message", [
    "toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating",
    "received unexpected HTTP status: 429 Too Many Requests",
])
def test_a_rate_limit_is_a_refusal_exit_3(message):
    with pytest.raises(RegistryRefused, match="rate limit") as err:
        push([error(message)])
    assert err.value.exit_code == 3 and not err.value.retry_elsewhere


def test_an_http_status_in_error_detail_code_is_used():
    with pytest.raises(RegistryRefused):
        push([error("quota exceeded for this namespace", code=429)])


@pytest.mark.parametrize("message", [
    "manifest invalid: manifest invalid",
    "name unknown: repository name not known to registry",
    "unknown: storage quota exceeded",
    "received unexpected HTTP status: 500 Internal Server Error",
])
def test_other_registry_errors_are_registry_errors_exit_1_not_retried(message):
    with pytest.raises(RegistryError) as err:
        push([error(message)])
    assert err.value.exit_code == 1 and not err.value.retry_elsewhere


def test_an_unauthorized_api_error_from_the_engine_is_a_refusal():
    exc = docker.errors.APIError("500 Server Error", explanation="unauthorized: authentication required")
    with pytest.raises(RegistryRefused, match="docker login"):
        push(raises=exc)


def test_a_dropped_engine_connection_is_infrastructure():
    with pytest.raises(InfrastructureError) as err:
        push(raises=requests.exceptions.ConnectionError("Connection aborted."))
    assert err.value.retry_elsewhere and err.value.node == "pi4"


def test_an_unclassified_error_with_the_engine_gone_is_infrastructure():
    with pytest.raises(InfrastructureError, match="engine gone") as err:
        push([error("write unix @->/run/docker.sock: broken pipe")], alive=False)
    assert err.value.retry_elsewhere


def test_an_unclassified_error_while_the_engine_answers_is_a_registry_error_naming_the_node():
    with pytest.raises(RegistryError, match="from node pi4") as err:
        push([error("Get \"https://registry-1.docker.io/v2/\": dial tcp: i/o timeout")], alive=True)
    assert not err.value.retry_elsewhere


def test_a_registry_refusal_is_classified_without_asking_the_engine():
    transport = FakeTransport(FakeDocker(FakeAPI([error("denied: no")]), alive=True))
    transport.client.ping = lambda: pytest.fail("a refusal by the registry needs no ping")
    with pytest.raises(RegistryRefused):
        asyncio.run(engine.push(transport, REF))


def test_auth_config_for_docker_hub_uses_the_index_entry_docker_login_writes(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(
        {"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    expected = {"username": "alice", "password": "s3cret", "serveraddress": "https://index.docker.io/v1/"}
    assert engine.auth_config_for("docker.io") == expected
    assert engine.auth_config_for("registry-1.docker.io") == expected
    assert engine.auth_config_for("registry.test") is None
