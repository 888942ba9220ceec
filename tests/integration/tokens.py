"""A registry token service for the integration tests' token-auth registries (not a test module).

Debian's docker-registry verifies Bearer tokens but issues none (Docker Hub, GHCR, Harbor and
Quay run a separate token service), so the tests run this small one: ES256 JWTs the registry
verifies against the signing certificate (:func:`pki.signing`).

- GET with Basic credentials: Docker's token flow. Wrong credentials get 401; an anonymous
  request gets 401 too, unless ``hub_rules`` (Docker Hub gives anyone a token).
- POST with the OAuth2 ``refresh_token`` or ``password`` grant: what a client with an identity
  token from ``docker login`` uses.
- What a token grants: every scope asked for, or with ``hub_rules`` Docker Hub's rule in small:
  push only in the user's own namespace (``alice/...``), pull anywhere, nothing when anonymous.

Every request is recorded in :attr:`TokenService.requests` (:class:`Asked`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attrs


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@attrs.frozen
class Asked:
    method: str  # "GET" | "POST"
    who: str  # the user, "anonymous" or "wrong credentials"
    grant: str  # "basic" | "anonymous" (GET), "refresh_token" | "password" (POST)
    scopes: tuple[str, ...]


class TokenService:
    def __init__(self, key, cert_der: bytes, *, issuer: str, service: str, user: str, password: str,
                 hub_rules: bool = False):
        self.key, self.cert_der = key, cert_der
        self.issuer, self.service, self.user, self.password = issuer, service, user, password
        self.hub_rules = hub_rules
        self.refresh_token = secrets.token_hex(16)
        self.requests: list[Asked] = []

    def jwt(self, subject: str, scopes) -> str:
        """A token for ``subject`` granting ``scopes`` (``repository:NAME:ACTIONS``) by this
        service's rules, signed as the registry expects."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": self.grant(subject or None, scopes)}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def grant(self, user: str | None, scopes) -> list[dict]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name or (self.hub_rules and user is None):
                continue
            allowed = actions.split(",")
            if self.hub_rules:
                allowed = [a for a in allowed if a == "pull" or name.startswith(f"{user}/")]
            if allowed:
                access.append({"type": "repository", "name": name, "actions": allowed})
        return access

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
                scopes = tuple(urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query).get("scope", []))
                auth = self.headers.get("Authorization", "")
                right = "Basic " + base64.b64encode(f"{service.user}:{service.password}".encode()).decode()
                who = service.user if auth == right else ("wrong credentials" if auth else "anonymous")
                service.requests.append(Asked("GET", who, "basic" if auth else "anonymous", scopes))
                if who == "wrong credentials" or (who == "anonymous" and not service.hub_rules):
                    return self.answer(401, {"details": "incorrect username or password"})
                token = service.jwt(service.user if who == service.user else "", scopes)
                self.answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                grant = form.get("grant_type", [""])[0]
                scopes = tuple(" ".join(form.get("scope", [])).split())
                ok = (grant == "refresh_token" and form.get("refresh_token") == [service.refresh_token]) or (
                    grant == "password" and form.get("username") == [service.user]
                    and form.get("password") == [service.password])
                service.requests.append(Asked("POST", service.user if ok else "wrong credentials", grant, scopes))
                if not ok:
                    return self.answer(401, {"error": "invalid_grant"})
                self.answer(200, {"access_token": service.jwt(service.user, scopes),
                                  "refresh_token": service.refresh_token, "expires_in": 300})

        return Handler


@contextlib.contextmanager
def serving(service: TokenService, port: int, tls: ssl.SSLContext | None = None):
    """``service`` on 127.0.0.1:``port`` (HTTPS with ``tls``) while the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", port), service.handler())
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()


def registry_auth(realm: str, service: TokenService, bundle) -> str:
    """The ``auth:`` section of a docker-registry that trusts ``service``'s tokens (``bundle``:
    the signing certificate, ``token.crt``)."""
    return (f"  token:\n    realm: {realm}\n    service: {service.service}\n"
            f"    issuer: {service.issuer}\n    rootcertbundle: {bundle}\n")


@contextlib.contextmanager
def token_registry(d, addr: str, token_port: int, **service):
    """A docker-registry on ``addr`` (storage under ``d``) that trusts only tokens from a
    :class:`TokenService` (``service``: its keyword arguments but the key) serving on
    127.0.0.1:``token_port`` over plain HTTP; yields the service."""
    import pki
    from conftest import extra_registry

    key, der = pki.signing(d, service["issuer"])
    tokens = TokenService(key, der, **service)
    with serving(tokens, token_port), extra_registry(
            d, addr, ready_status=401,
            auth=registry_auth(f"http://127.0.0.1:{token_port}/token", tokens, d / "token.crt")):
        yield tokens
