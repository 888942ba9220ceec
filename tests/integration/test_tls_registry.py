"""A registry with its own CA, as a lab or company registry has: Debian's docker-registry serving
TLS on the lab bridge (10.231.0.1:5443, not a loopback address, so nobody may fall back to plain
HTTP) with a certificate from a CA made here. Trusted the way dockerd trusts it, through
/etc/docker/certs.d/<host:port>/ca.crt: the engine pushes the children, archfleet's own client
verifies them and pushes the index."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import extra_registry

HOST = "10.231.0.1:5443"
CERTS_D = Path("/etc/docker/certs.d") / HOST


def _certs(d: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archfleet lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "10.231.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.231.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))


@pytest.fixture(scope="module")
def tls_registry(lab, nodes, tmp_path_factory):
    """The registry, and the CA in /etc/docker/certs.d for the test's duration (removed after)."""
    d = tmp_path_factory.mktemp("tlsreg")
    _certs(d)
    placed = not CERTS_D.exists()
    CERTS_D.mkdir(parents=True, exist_ok=True)
    shutil.copy(d / "ca.crt", CERTS_D / "ca.crt")
    tls = f"  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n"
    try:
        with extra_registry(d, HOST, http_extra=tls, scheme="https",
                            verify=ssl.create_default_context(cafile=str(d / "ca.crt"))):
            yield d
    finally:
        if placed:
            shutil.rmtree(CERTS_D, ignore_errors=True)


def test_an_untrusted_certificate_is_one_line_naming_where_the_ca_goes(lab, tls_registry, tmp_path):
    env = {"ARCHFLEET_CERTS_D": str(tmp_path / "empty")}
    proc = lab.archfleet("build", "--platform", "linux/amd64", "-t", f"{HOST}/app:no", "--push", "examples/arch-test",
                         env=env)
    assert proc.returncode == 3, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "certificate is not trusted" in lines[0], proc.stderr
    assert str(tmp_path / "empty" / HOST / "ca.crt") in lines[0]
    assert "--insecure-registry" not in lines[0]  # it does speak HTTPS; plain HTTP is not the fix


def test_build_and_push_trusting_the_registry_ca_like_dockerd(lab, tls_registry):
    tag = uuid.uuid4().hex[:8]
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{HOST}/app:{tag}", "--push",
                         "--build-arg", f"N={uuid.uuid4().hex}", "examples/arch-test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resp = httpx.get(f"https://{HOST}/v2/app/manifests/{tag}", verify=ssl.create_default_context(cafile=str(tls_registry / "ca.crt")),
                     headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})
    assert resp.headers["docker-content-digest"] == proc.stdout.strip()
    assert sorted(m["platform"]["architecture"] for m in resp.json()["manifests"]) == ["amd64", "arm64"]
