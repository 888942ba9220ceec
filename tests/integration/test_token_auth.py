"""Bearer-token auth against a real registry: Debian's docker-registry configured for token
auth (as Docker Hub, GHCR, Harbor and Quay are), with a small token service here that signs
ES256 JWTs the registry verifies against our certificate (tests/integration/tokens.py).
archfleet's registry client, which pushes the children (by digest) and the index, goes through
the token dance: with a username and password, and with an identity token (the OAuth2
refresh-token grant, what ``docker login`` stores for registries that issue one)."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest

import tokens
from labtools import basic_entry, docker_config, engine_images, manifest, one_line_error
from tokens import TokenService

REGISTRY = "127.0.0.1:5002"
TOKEN_PORT = 5003
USER, PASSWORD = "bob", "t0ken-s3cret"


@pytest.fixture(scope="module")
def token_registry(lab, tmp_path_factory):
    with tokens.token_registry(tmp_path_factory.mktemp("tokenreg"), REGISTRY, TOKEN_PORT,
                               issuer="archfleet-lab-issuer", service="archfleet-lab", user=USER,
                               password=PASSWORD) as service:
        yield service


def fetch_index(service: TokenService, repo: str, tag: str) -> httpx.Response:
    token = service.jwt(USER, [f"repository:{repo}:pull"])
    return manifest(REGISTRY, repo, tag, headers={"Authorization": f"Bearer {token}"})


def test_the_registry_really_wants_tokens(token_registry):
    resp = httpx.get(f"http://{REGISTRY}/v2/")
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer realm=")
    forged = token_registry.jwt(USER, ["repository:x:pull"])[:-4] + "AAAA"
    assert httpx.get(f"http://{REGISTRY}/v2/", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


@pytest.mark.parametrize("login", ["password", "identity-token"])
def test_build_and_push_through_bearer_tokens(lab, token_registry, tmp_path, login):
    if login == "password":
        entry = basic_entry(USER, PASSWORD)
    else:
        entry = {"auth": base64.b64encode(b"<token>:").decode(), "identitytoken": token_registry.refresh_token}
    env = docker_config(tmp_path, {REGISTRY: entry})
    tag = uuid.uuid4().hex[:8]
    before = len(token_registry.requests)
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{REGISTRY}/app:{tag}",
                         "--push", "--build-arg", f"N={uuid.uuid4().hex}", "examples/arch-test", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digest = proc.stdout.strip()
    resp = fetch_index(token_registry, "app", tag)
    assert resp.headers["docker-content-digest"] == digest
    assert sorted(m["platform"]["architecture"] for m in resp.json()["manifests"]) == ["amd64", "arm64"]
    grants = {a.grant for a in token_registry.requests[before:]}
    assert grants == ({"basic"} if login == "password" else {"refresh_token"}), grants
    for secret in (PASSWORD, token_registry.refresh_token):
        assert secret not in proc.stderr and secret not in proc.stdout  # never log secrets


def test_a_revoked_identity_token_is_one_line_before_building(lab, token_registry, tmp_path):
    env = docker_config(tmp_path, {REGISTRY: {"auth": base64.b64encode(b"<token>:").decode(),
                                              "identitytoken": "revoked"}})
    run = uuid.uuid4().hex
    proc = lab.archfleet("build", "--progress", "plain", "--platform", "linux/arm64", "--label", f"run={run}",
                         "-t", f"{REGISTRY}/app:no", "--push", "examples/arch-test", env=env)
    assert proc.returncode == 3, proc.stderr
    assert f"docker login {REGISTRY}" in one_line_error(proc)  # under plain progress: no build line either
    assert engine_images(f"run={run}") == []  # nothing was built
