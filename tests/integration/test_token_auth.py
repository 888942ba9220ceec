"""Bearer-token auth against a real registry: Debian's docker-registry configured for token
auth (as Docker Hub, GHCR, Harbor and Quay are), with a small token service here that signs
ES256 JWTs the registry verifies against our certificate. Both archfleet's registry client and
the engine (pushing with the ``auth_config`` archfleet hands it) go through the token dance:
with a username and password, and with an identity token (the OAuth2 refresh-token grant,
what ``docker login`` stores for registries that issue one)."""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import extra_registry

REGISTRY = "127.0.0.1:5002"
TOKEN_PORT = 5003
SERVICE, ISSUER = "archfleet-lab", "archfleet-lab-issuer"
USER, PASSWORD = "bob", "t0ken-s3cret"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Issues registry tokens for Basic credentials (GET) and for the refresh-token and password
    grants (POST), like the token services real registries run."""

    def __init__(self, key, cert_der: bytes):
        self.key, self.cert_der = key, cert_der
        self.refresh_token = secrets.token_hex(16)
        self.requests: list[tuple[str, str]] = []  # (method, grant or "basic")

    def jwt(self, subject: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name:
                access.append({"type": "repository", "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                service.requests.append(("GET", "basic" if auth else "anonymous"))
                if auth != expected:
                    return self.answer(401, {"details": "bad credentials"})
                token = service.jwt(USER, query.get("scope", []))
                self.answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                grant = form.get("grant_type", [""])[0]
                service.requests.append(("POST", grant))
                ok = (grant == "refresh_token" and form.get("refresh_token") == [service.refresh_token]) or (
                    grant == "password" and form.get("username") == [USER] and form.get("password") == [PASSWORD])
                if not ok:
                    return self.answer(401, {"error": "invalid_grant"})
                scopes = " ".join(form.get("scope", [])).split()
                self.answer(200, {"access_token": service.jwt(USER, scopes), "refresh_token": service.refresh_token,
                                  "expires_in": 300})

        return Handler


@pytest.fixture(scope="module")
def token_registry(lab, tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tokenreg")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    service = TokenService(key, cert.public_bytes(serialization.Encoding.DER))
    server = ThreadingHTTPServer(("127.0.0.1", TOKEN_PORT), service.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    auth = (f"  token:\n    realm: http://127.0.0.1:{TOKEN_PORT}/token\n    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n    rootcertbundle: {d}/cert.pem\n")
    try:
        with extra_registry(d, REGISTRY, auth=auth, ready_status=401):
            yield service
    finally:
        server.shutdown()


def docker_config(tmp_path, entry: dict) -> dict:
    cfg = tmp_path / "docker-config"
    cfg.mkdir(exist_ok=True)
    (cfg / "config.json").write_text(json.dumps({"auths": {REGISTRY: entry}}))
    return {"DOCKER_CONFIG": str(cfg)}


def fetch_index(service: TokenService, repo: str, tag: str) -> httpx.Response:
    token = service.jwt(USER, [f"repository:{repo}:pull"])
    return httpx.get(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}", headers={
        "Authorization": f"Bearer {token}", "Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})


def test_the_registry_really_wants_tokens(token_registry):
    resp = httpx.get(f"http://{REGISTRY}/v2/")
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer realm=")
    forged = token_registry.jwt(USER, ["repository:x:pull"])[:-4] + "AAAA"
    assert httpx.get(f"http://{REGISTRY}/v2/", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


@pytest.mark.parametrize("login", ["password", "identity-token"])
def test_build_and_push_through_bearer_tokens(lab, token_registry, tmp_path, login):
    if login == "password":
        entry = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    else:
        entry = {"auth": base64.b64encode(b"<token>:").decode(), "identitytoken": token_registry.refresh_token}
    env = docker_config(tmp_path, entry)
    tag = uuid.uuid4().hex[:8]
    before = len(token_registry.requests)
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{REGISTRY}/app:{tag}",
                         "--push", "--build-arg", f"N={uuid.uuid4().hex}", "examples/arch-test", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digest = proc.stdout.strip()
    resp = fetch_index(token_registry, "app", tag)
    assert resp.headers["docker-content-digest"] == digest
    assert sorted(m["platform"]["architecture"] for m in resp.json()["manifests"]) == ["amd64", "arm64"]
    grants = {g for _, g in token_registry.requests[before:]}
    assert grants == ({"basic"} if login == "password" else {"refresh_token"}), grants
    for secret in (PASSWORD, token_registry.refresh_token):
        assert secret not in proc.stderr and secret not in proc.stdout  # never log secrets


def test_a_revoked_identity_token_is_one_line_before_building(lab, token_registry, tmp_path):
    env = docker_config(tmp_path, {"auth": base64.b64encode(b"<token>:").decode(), "identitytoken": "revoked"})
    proc = lab.archfleet("build", "--platform", "linux/arm64", "-t", f"{REGISTRY}/app:no", "--push",
                         "examples/arch-test", env=env)
    assert proc.returncode == 3, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and f"docker login {REGISTRY}" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
