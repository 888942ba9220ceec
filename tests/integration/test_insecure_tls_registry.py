"""An insecure registry that speaks HTTPS with a self-signed certificate (finding 15): a
loopback registry is insecure for dockerd (127.0.0.0/8) and for archfleet, and dockerd then
uses HTTPS without verifying the certificate. archfleet's own client must do the same (it used
to fall back to plain HTTP and fail with "Client sent an HTTP request to an HTTPS server"), so
the whole build works: archfleet's client pushes the children (by digest) and the index."""

from __future__ import annotations

import uuid

import httpx
import pytest

import pki
from conftest import extra_registry
from labtools import manifest

HOST = "127.0.0.1:5052"


@pytest.fixture(scope="module")
def self_signed_registry(lab, tmp_path_factory):
    d = tmp_path_factory.mktemp("selfsigned")
    pki.server(d, ips=("127.0.0.1",))
    with extra_registry(d, HOST, http_extra=pki.tls_config(d), scheme="https", verify=False):
        yield d


def test_build_and_push_to_a_self_signed_insecure_registry_over_https(lab, self_signed_registry, tmp_path):
    assert httpx.get(f"http://{HOST}/v2/").status_code == 400  # it really does not speak plain HTTP
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nARG N\nRUN echo $N > /n\nCMD [\"uname\", \"-m\"]\n")
    tag = uuid.uuid4().hex[:8]
    proc = lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{HOST}/registry/app:{tag}",
                         "--push", "--build-arg", f"N={uuid.uuid4().hex}", str(ctx))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resp = manifest(HOST, "registry/app", tag, scheme="https", verify=False)
    assert resp.headers["docker-content-digest"] == proc.stdout.strip()
    assert sorted(m["platform"]["architecture"] for m in resp.json()["manifests"]) == ["amd64", "arm64"]


def test_doctor_says_the_certificate_is_not_verified(lab, self_signed_registry):
    proc = lab.archfleet("doctor", "--registry", HOST)
    line = next(l for l in proc.stdout.splitlines() if f"registry {HOST}" in l)
    assert "certificate not verified" in line and "ok" in line.lower(), proc.stdout
