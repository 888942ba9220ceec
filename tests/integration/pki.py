"""Certificates for the integration tests' registries and token services (not a test module).

- :func:`ca` a CA (``ca.crt``), for registries trusted the way dockerd trusts them (certs.d);
- :func:`server` a server certificate and key (``server.crt``, ``server.key``), signed by a CA
  or self-signed (an insecure registry that speaks HTTPS);
- :func:`client` a client certificate and key (``client.cert``, ``client.key``: the names
  dockerd's certs.d uses), for a registry that asks for one;
- :func:`signing` a token-signing key and its certificate (``token.crt``), the
  ``rootcertbundle`` a registry with token auth verifies JWTs against.

All are ECDSA P-256, valid from five minutes ago for one day.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import attrs


@attrs.frozen
class Issuer:
    key: object
    name: object  # x509.Name


def _window():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ca(d: Path, common_name: str) -> Issuer:
    """A CA certificate written to ``d/ca.crt``; returns what signs with it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    start, end = _window()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(_pem(cert))
    return Issuer(key, name)


def server(d: Path, *, ips: tuple[str, ...] = (), dns: tuple[str, ...] = (), issuer: Issuer | None = None) -> None:
    """``d/server.crt`` and ``d/server.key`` for ``ips`` and ``dns`` names, signed by ``issuer``
    (self-signed without one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    start, end = _window()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns or ips)[0])])
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.name if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.SubjectAlternativeName(sans), critical=False))
    if issuer:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    (d / "server.crt").write_bytes(_pem(cert))
    (d / "server.key").write_bytes(_key_pem(key))


def client(d: Path, issuer: Issuer, common_name: str = "archfleet test client") -> None:
    """``d/client.cert`` and ``d/client.key``, a TLS client certificate signed by ``issuer``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    start, end = _window()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(issuer.key, hashes.SHA256()))
    (d / "client.cert").write_bytes(_pem(cert))
    (d / "client.key").write_bytes(_key_pem(key))


def signing(d: Path, issuer_name: str):
    """A token-signing key and its self-signed certificate, written to ``d/token.crt``;
    returns (private key, certificate DER) for :class:`tokens.TokenService`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    start, end = _window()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (d / "token.crt").write_bytes(_pem(cert))
    return key, cert.public_bytes(serialization.Encoding.DER)


def tls_config(d: Path) -> str:
    """The ``http:`` lines that make a docker-registry serve ``d/server.crt``."""
    return f"  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n"
