"""The registry client against an in-process fake (httpx.MockTransport): auth flows, retries,
media types and digests. The real registry is exercised by the integration tests."""

import asyncio
import base64
import json

import httpx
import pytest

from archfleet import mediatypes
from archfleet.errors import EnvironmentProblem, RegistryError
from archfleet.reference import parse_reference
from archfleet.registry import RegistryClient, parse_challenge, sha256_digest

HOST = "registry.test"
CONFIG = {"auths": {HOST: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}


def run(coro):
    return asyncio.run(coro)


class FakeRegistry:
    """Bearer-token registry: /v2 answers 401 with a challenge, /token hands out tokens."""

    def __init__(self, fail_first=0, user="alice", password="s3cret"):
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.requests: list[httpx.Request] = []
        self.fail_first = fail_first
        self.creds = (user, password)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.scheme != "https":
            return httpx.Response(400)
        if self.fail_first:
            self.fail_first -= 1
            return httpx.Response(503)
        if request.url.path == "/token":
            auth = request.headers.get("authorization", "")
            expected = "Basic " + base64.b64encode(":".join(self.creds).encode()).decode()
            if auth != expected:
                return httpx.Response(401)
            scope = request.url.params.get("scope")
            return httpx.Response(200, json={"token": f"tok:{scope}"})
        if not request.headers.get("authorization", "").startswith("Bearer tok:"):
            return httpx.Response(401, headers={"WWW-Authenticate":
                                                f'Bearer realm="https://{HOST}/token",service="{HOST}",scope="repository:app:pull,push"'})
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200)
        if "/manifests/" in path:
            ref = path.rsplit("/", 1)[1]
            if request.method == "PUT":
                body = request.content
                digest = sha256_digest(body)
                self.manifests[ref] = self.manifests[digest] = (body, request.headers["content-type"])
                return httpx.Response(201, headers={"Docker-Content-Digest": digest})
            if ref not in self.manifests:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]})
            body, mt = self.manifests[ref]
            return httpx.Response(200, content=body, headers={"Content-Type": mt, "Docker-Content-Digest": sha256_digest(body)})
        return httpx.Response(404)


def client(fake, config=CONFIG):
    return RegistryClient(transport=httpx.MockTransport(fake), docker_config=config)


def test_bearer_flow_with_basic_credentials_and_put_get_round_trip():
    fake = FakeRegistry()
    body = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}).encode()

    async def go():
        async with client(fake) as c:
            ref = parse_reference(f"{HOST}/app:1")
            digest = await c.put_manifest(ref, body)
            got = await c.get_manifest(ref)
            return digest, got

    digest, got = run(go())
    assert digest == sha256_digest(body)
    assert got.body == body and got.media_type == mediatypes.OCI_INDEX and got.digest == digest
    put = next(r for r in fake.requests if r.method == "PUT" and "authorization" in r.headers)
    assert put.headers["content-type"] == mediatypes.OCI_INDEX
    get = [r for r in fake.requests if r.method == "GET" and "/manifests/" in r.url.path][-1]
    for mt in (mediatypes.OCI_INDEX, mediatypes.DOCKER_LIST, mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST):
        assert mt in get.headers["accept"]
    token_req = next(r for r in fake.requests if r.url.path == "/token")
    assert token_req.url.params["service"] == HOST


def test_wrong_credentials_are_one_clear_error():
    fake = FakeRegistry(password="other")
    with pytest.raises(EnvironmentProblem, match="refused the credentials"):
        run(client(fake).check_access(parse_reference(f"{HOST}/app:1")))


def test_missing_credentials_say_docker_login():
    fake = FakeRegistry()
    with pytest.raises(EnvironmentProblem, match="docker login registry.test"):
        run(client(fake, config={}).check_access(parse_reference(f"{HOST}/app:1")))


def test_retries_5xx_with_backoff(monkeypatch):
    monkeypatch.setattr("archfleet.registry.BACKOFF", 0.001)
    fake = FakeRegistry(fail_first=2)
    run(client(fake).check_access(parse_reference(f"{HOST}/app:1")))
    assert sum(1 for r in fake.requests if r.url.path == "/v2/") >= 3


def test_digest_mismatch_is_refused():
    def handler(request):
        return httpx.Response(200, content=b'{"mediaType":"x"}', headers={"Docker-Content-Digest": "sha256:" + "0" * 64})

    async def go():
        async with RegistryClient(transport=httpx.MockTransport(handler), docker_config={}) as c:
            await c.get_manifest(parse_reference(f"{HOST}/app:1"))

    with pytest.raises(RegistryError, match="does not match"):
        run(go())


def test_plain_http_only_for_loopback_and_insecure():
    c = RegistryClient(["lab.registry:5000"], docker_config={})
    assert c.plain_http_allowed("127.0.0.1:5000")
    assert c.plain_http_allowed("lab.registry:5000")
    assert not c.plain_http_allowed("registry.test")
    run(c.aclose())


def test_parse_challenge():
    kind, params = parse_challenge('Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull,push"')
    assert kind == "bearer"
    assert params == {"realm": "https://auth.io/token", "service": "registry.io", "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
