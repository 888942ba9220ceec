"""A registry with its own CA, as a lab or company registry has: Debian's docker-registry serving
TLS on the lab bridge (10.231.0.1:5443, not a loopback address, so nobody may fall back to plain
HTTP) with a certificate from a CA made here. Trusted the way dockerd trusts it, through
/etc/docker/certs.d/<host:port>/ca.crt: archfleet's own client pushes the children (by digest),
verifies them and pushes the index."""

from __future__ import annotations

import contextlib
import ssl
import uuid
from pathlib import Path

import httpx
import pytest

import pki
from conftest import extra_registry, placed
from labtools import manifest, one_line_error

HOST = "10.231.0.1:5443"
CLIENT_CERT_HOST = "10.231.0.1:5063"


@pytest.fixture(scope="module")
def tls_registry(lab, nodes, tmp_path_factory):
    """The registry, and its CA in /etc/docker/certs.d for the module's duration (put back as it
    was afterwards, even after a crash: conftest.placed)."""
    d = tmp_path_factory.mktemp("tlsreg")
    pki.server(d, ips=("10.231.0.1",), issuer=pki.ca(d, "archfleet lab CA"))
    with placed(Path("/etc/docker/certs.d") / HOST / "ca.crt", (d / "ca.crt").read_bytes()), \
            extra_registry(d, HOST, http_extra=pki.tls_config(d), scheme="https",
                           verify=ssl.create_default_context(cafile=str(d / "ca.crt"))):
        yield d


def test_an_untrusted_certificate_is_one_line_naming_where_the_ca_goes(lab, tls_registry, tmp_path):
    env = {"ARCHFLEET_CERTS_D": str(tmp_path / "empty")}
    proc = lab.archfleet("build", "--platform", "linux/amd64", "-t", f"{HOST}/app:no", "--push", "examples/arch-test",
                         env=env)
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc)
    assert "certificate is not trusted" in line and str(tmp_path / "empty" / HOST / "ca.crt") in line
    assert "--insecure-registry" not in line  # it does speak HTTPS; plain HTTP is not the fix


def test_build_and_push_trusting_the_registry_ca_like_dockerd(lab, tls_registry):
    tag = uuid.uuid4().hex[:8]
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{HOST}/app:{tag}", "--push",
                         "--build-arg", f"N={uuid.uuid4().hex}", "examples/arch-test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resp = manifest(HOST, "app", tag, scheme="https",
                    verify=ssl.create_default_context(cafile=str(tls_registry / "ca.crt")))
    assert resp.headers["docker-content-digest"] == proc.stdout.strip()
    assert sorted(m["platform"]["architecture"] for m in resp.json()["manifests"]) == ["amd64", "arm64"]


def test_a_ca_in_the_system_store_is_trusted_as_dockerd_trusts_it(lab, tls_registry, tmp_path):
    """Rule (dockerd: Go's SystemCertPool plus certs.d): a company CA installed in the system's
    store is trusted with no certs.d entry. archfleet trusted only certifi's bundle (httpx's
    default), so a CA added with update-ca-certificates worked for docker and failed here. The
    store here is the system's bundle with the lab CA appended, bind-mounted over the system's
    file in a mount namespace of archfleet's process alone."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    # a user's environment names no store: this machine's sets SSL_CERT_FILE to the system
    # bundle, which httpx honoured, hiding the rule
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env["ARCHFLEET_CERTS_D"] = str(tmp_path / "empty")
    store = Path(ssl.get_default_verify_paths().openssl_cafile)
    store = store.resolve() if store.exists() else Path("/etc/ssl/certs/ca-certificates.crt")
    tag = uuid.uuid4().hex[:8]
    bundle = tmp_path / "store.pem"
    bundle.write_bytes(store.read_bytes() + (tls_registry / "ca.crt").read_bytes())
    # the bundle replaced for archfleet's process only: a private mount namespace, a bind mount
    # over the system's file (the machine's own store is never changed, not even for a moment)
    over = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", over, "sh", str(bundle),
                           str(store), sys.executable, "-m", "archfleet.cli", "build", "-q", "--platform",
                           "linux/amd64", "-t", f"{HOST}/app:{tag}", "--push", "--build-arg", f"N={uuid.uuid4().hex}",
                           "examples/arch-test"], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert manifest(HOST, "app", tag, scheme="https", verify=ssl.create_default_context(
        cafile=str(tls_registry / "ca.crt"))).headers["docker-content-digest"] == proc.stdout.strip()


@pytest.fixture(scope="module")
def client_cert_registry(lab, nodes, tmp_path_factory):
    """A registry that asks every client for a certificate from its CA (clientcas), with the CA
    and a client certificate in /etc/docker/certs.d/HOST/ as ca.crt, client.cert and client.key."""
    d = tmp_path_factory.mktemp("clientcert")
    issuer = pki.ca(d, "archfleet client-certificate CA")
    pki.server(d, ips=("10.231.0.1",), issuer=issuer)
    pki.client(d, issuer)
    with_client = ssl.create_default_context(cafile=str(d / "ca.crt"))
    with_client.load_cert_chain(str(d / "client.cert"), str(d / "client.key"))
    certs_d = Path("/etc/docker/certs.d") / CLIENT_CERT_HOST
    with contextlib.ExitStack() as stack:
        for name in ("ca.crt", "client.cert", "client.key"):
            stack.enter_context(placed(certs_d / name, (d / name).read_bytes()))
        stack.enter_context(extra_registry(d, CLIENT_CERT_HOST, scheme="https", verify=with_client,
                                           http_extra=pki.tls_config(d) + f"    clientcas:\n      - {d}/ca.crt\n"))
        yield d, with_client


def test_a_client_certificate_in_certs_d_is_presented_by_archfleet_on_every_push(lab, client_cert_registry):
    """cli.md: `*.cert`/`*.key` in certs.d are a client certificate, as for dockerd (archfleet's
    client pushes the children and the index, and presents it each time)."""
    d, with_client = client_cert_registry
    without = ssl.create_default_context(cafile=str(d / "ca.crt"))
    with pytest.raises(httpx.HTTPError):  # precondition: the registry refuses a client without one
        httpx.get(f"https://{CLIENT_CERT_HOST}/v2/", verify=without)
    tag = uuid.uuid4().hex[:8]
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t",
                         f"{CLIENT_CERT_HOST}/promises/clientcert:{tag}", "--push", "--build-arg",
                         f"N={uuid.uuid4().hex}", "examples/arch-test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resp = manifest(CLIENT_CERT_HOST, "promises/clientcert", tag, scheme="https", verify=with_client)
    assert resp.headers["docker-content-digest"] == proc.stdout.strip()
    assert sorted(m["platform"]["architecture"] for m in resp.json()["manifests"]) == ["amd64", "arm64"]
