"""Docker Hub, as far as credentials go, on loopback: `docker login` stores Hub credentials under
``https://index.docker.io/v1/`` while the API is ``registry-1.docker.io`` and tokens come from a
separate token service. Here ``registry-1.docker.io`` (and ``index.docker.io``) resolve to
127.0.0.1 for the module's duration (an /etc/hosts line, always removed), Debian's
docker-registry serves TLS on 127.0.0.1:443 with Bearer-token auth like Hub's, a token service
on https://registry-1.docker.io:5051 grants push only in the user's own namespace, and the CA is
trusted through ``$ARCHFLEET_CERTS_D`` (as dockerd's certs.d).

What this covers is archfleet's own registry client on the Hub names, which now does every push:
the push check before building, each child (by digest, from the engine's export), reading them
back (verification) and the index, all with the credentials ``docker login`` wrote. (The engine
itself could not have pushed here: dockerd 20.10 talks to ``registry-1.docker.io`` with the
system's CA roots only, ``registry.lookupV2Endpoints`` giving the official index
``tlsconfig.ServerDefault()``; certs.d is read for other registries.) A second build of the same
context is a no-op: the built-in ``reuse`` strategy finds every child under the tag."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import uuid
from pathlib import Path

import httpx
import pytest

import pki
from conftest import extra_registry, machine_change, missing
from labtools import ACCEPT, basic_entry, docker_config, one_line_error
from tokens import TokenService, registry_auth, serving

HUB_NAMES = ("registry-1.docker.io", "index.docker.io")
REGISTRY_ADDR = "127.0.0.1:443"
TOKEN_PORT = 5051
USER, PASSWORD = "alice", "hunter2-" + os.urandom(4).hex()
MARKER = f"# archfleet test_docker_hub_credentials {os.getpid()}"


@contextlib.contextmanager
def hub_names_on_loopback():
    """The Hub names resolve to 127.0.0.1 while the block runs: one /etc/hosts line, written in
    place (the file may be a bind mount) and removed again whatever happens (after a crash, by
    the next test session: conftest.machine_change)."""
    for name in HUB_NAMES:
        try:
            if socket.gethostbyname(name) == "127.0.0.1":
                missing(f"{name} already resolves to 127.0.0.1 (another test holding the names?)")
        except OSError:
            pass
    with machine_change("line", file="/etc/hosts", marker=MARKER):
        with open("/etc/hosts", "a") as f:
            f.write(f"127.0.0.1 {' '.join(HUB_NAMES)} {MARKER}\n")
        yield


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def fake_hub(lab, tmp_path_factory):
    if os.geteuid() != 0:
        missing("needs root: /etc/hosts and port 443")
    for port in (443, TOKEN_PORT):
        if not _port_free(port):
            missing(f"127.0.0.1:{port} is in use")
    d = tmp_path_factory.mktemp("fakehub")
    pki.server(d, dns=HUB_NAMES, ips=("127.0.0.1",), issuer=pki.ca(d, "archfleet fake Hub CA"))
    sign_key, sign_der = pki.signing(d, "archfleet-fake-hub")
    certs_d = d / "certs.d"
    for host in (HUB_NAMES[0], f"{HUB_NAMES[0]}:{TOKEN_PORT}"):
        (certs_d / host).mkdir(parents=True)
        (certs_d / host / "ca.crt").write_bytes((d / "ca.crt").read_bytes())
    tokens = TokenService(sign_key, sign_der, issuer="archfleet-fake-hub", service="registry.docker.io", user=USER,
                          password=PASSWORD, hub_rules=True)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(d / "server.crt"), str(d / "server.key"))
    verify = ssl.create_default_context(cafile=str(d / "ca.crt"))
    # exactly what `docker login -u alice` writes for Docker Hub
    env = docker_config(d, {"https://index.docker.io/v1/": basic_entry(USER, PASSWORD)})
    with serving(tokens, TOKEN_PORT, tls), hub_names_on_loopback(), extra_registry(
            d, REGISTRY_ADDR, http_extra=pki.tls_config(d), scheme="https", ready_status=401, verify=verify,
            auth=registry_auth(f"https://{HUB_NAMES[0]}:{TOKEN_PORT}/token", tokens, d / "token.crt")):
        yield type("Hub", (), {"dir": d, "tokens": tokens, "verify": verify,
                               "env": {"ARCHFLEET_CERTS_D": str(certs_d), **env}})()


def hub_get(hub, path: str, scope: str, accept: str = "") -> httpx.Response:
    """GET on the fake Hub with alice's credentials, the way any client does it."""
    token = httpx.get(f"https://{HUB_NAMES[0]}:{TOKEN_PORT}/token", params={"service": "registry.docker.io",
                                                                          "scope": scope},
                      auth=(USER, PASSWORD), verify=hub.verify).json()["token"]
    return httpx.get(f"https://{HUB_NAMES[0]}{path}", verify=hub.verify,
                     headers={"Authorization": f"Bearer {token}", "Accept": accept})


def _context(lab, tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nARG N\nRUN echo $N > /n\nCMD [\"uname\", \"-m\"]\n")
    return ctx


def test_push_to_docker_hub_uses_the_credentials_docker_login_stored(lab, fake_hub, tmp_path):
    ctx = _context(lab, tmp_path)
    tag, nonce = uuid.uuid4().hex[:8], uuid.uuid4().hex
    common = ["--platform", "linux/amd64,linux/arm64", "--build-arg", f"N={nonce}", str(ctx)]
    hub_tag = f"docker.io/{USER}/app:{tag}"
    before = len(fake_hub.tokens.requests)
    meta = tmp_path / "meta.json"
    first = lab.archfleet("build", "-q", "-t", hub_tag, "--push", *common, env=fake_hub.env)
    assert first.returncode == 0, first.stderr[-3000:]
    digest = first.stdout.strip()
    resp = hub_get(fake_hub, f"/v2/{USER}/app/manifests/{tag}", f"repository:{USER}/app:pull", ACCEPT)
    assert resp.status_code == 200 and resp.headers["docker-content-digest"] == digest
    assert sorted(m["platform"]["architecture"] for m in resp.json()["manifests"]) == ["amd64", "arm64"]
    for m in resp.json()["manifests"]:  # each child pushed by digest, by archfleet's client
        child = hub_get(fake_hub, f"/v2/{USER}/app/manifests/{m['digest']}", f"repository:{USER}/app:pull", ACCEPT)
        assert child.status_code == 200
    tags = hub_get(fake_hub, f"/v2/{USER}/app/tags/list", f"repository:{USER}/app:pull")
    assert tags.json()["tags"] == [tag]  # no working tags

    again = lab.archfleet("build", "--progress", "plain", "--metadata-file", str(meta), "-t", hub_tag, "--push",
                          *common, env=fake_hub.env)
    assert again.returncode == 0, again.stderr[-3000:]
    strategies = {p["strategy"] for p in json.loads(meta.read_text())["archfleet.platforms"].values()}
    assert strategies == {"reuse"} and again.stdout.strip() == digest  # nothing built: the same index
    asked = fake_hub.tokens.requests[before:]
    assert asked and {a.who for a in asked} == {USER}  # every token request carried alice's credentials
    assert PASSWORD not in first.stderr + first.stdout + again.stderr + again.stdout


def test_someone_elses_namespace_is_refused_before_building_in_one_line(lab, fake_hub, tmp_path):
    ctx = _context(lab, tmp_path)
    proc = lab.archfleet("build", "--progress", "plain", "-t", "docker.io/someone-else/app:1", "--push",
                         "--platform", "linux/amd64", "--build-arg", f"N={uuid.uuid4().hex}", str(ctx),
                         env=fake_hub.env)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = one_line_error(proc)
    assert "`docker login`" in line and "someone-else/app" in line


def test_credentials_stored_under_the_api_host_are_not_docker_hubs(lab, fake_hub, tmp_path):
    """Like the docker CLI: Hub's credentials live under the index name, not registry-1."""
    env = docker_config(tmp_path, {"registry-1.docker.io": basic_entry(USER, PASSWORD)})
    proc = lab.archfleet("build", "-t", f"docker.io/{USER}/app:x", "--push", "--platform", "linux/amd64",
                         str(_context(lab, tmp_path)), env={**fake_hub.env, **env})
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "run `docker login`" in one_line_error(proc)
