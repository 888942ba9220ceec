"""Helpers for the token-auth registries of the integration tests: a CA and server certificate
for the Docker Hub names, and a token service with Docker Hub's rules in small (a user may push
only under their own namespace). Not a test module."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

HUB_NAMES = ("registry-1.docker.io", "index.docker.io")
SERVICE, ISSUER = "registry.docker.io", "archfleet-fake-hub"
USER, PASSWORD = "alice", "hunter2-" + secrets.token_hex(4)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pki(d: Path):
    """A CA, and a server certificate for the Hub names and 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archfleet fake Hub CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in HUB_NAMES] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HUB_NAMES[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    # the token signing key: its certificate is the registry's rootcertbundle
    sign_key = ec.generate_private_key(ec.SECP256R1())
    sign_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    sign_cert = (x509.CertificateBuilder().subject_name(sign_name).issuer_name(sign_name)
                 .public_key(sign_key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                 .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                 .sign(sign_key, hashes.SHA256()))
    (d / "token.crt").write_bytes(sign_cert.public_bytes(serialization.Encoding.PEM))
    return sign_key, sign_cert.public_bytes(serialization.Encoding.DER)


class HubTokenService:
    """Hub's token rules in small: a user with the right Basic credentials gets what they ask
    for in their own namespace and pull elsewhere; nobody else gets anything."""

    def __init__(self, key, cert_der: bytes):
        self.key, self.cert_der = key, cert_der
        self.requests: list[tuple[str, list[str]]] = []  # (who, scopes asked)

    def jwt(self, subject: str, access: list[dict]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def grant(self, user: str | None, scopes: list[str]) -> list[dict]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name or user is None:
                continue
            allowed = [a for a in actions.split(",") if a == "pull" or name.startswith(f"{user}/")]
            if allowed:
                access.append({"type": "repository", "name": name, "actions": allowed})
        return access

    def handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                scopes = query.get("scope", [])
                user = None
                if auth == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode():
                    user = USER
                elif auth:
                    service.requests.append(("wrong credentials", scopes))
                    return self.answer(401, {"details": "incorrect username or password"})
                service.requests.append((user or "anonymous", scopes))
                token = service.jwt(user or "", service.grant(user, scopes))
                self.answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def answer(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
