"""Credentials never reach a build node's disk or process list (docs/nodes.md: archfleet reads
the image back from the node's engine and "pushes the child by digest itself, from this machine
... registry credentials for the push never reach the node").

A registry with htpasswd auth and its own CA on the lab bridge (10.231.0.1:5060, trusted
through /etc/docker/certs.d as dockerd trusts it, so lab node n1's dockerd can push there) gets
a build pinned to n1. While it runs, every process's argv on this machine (n1 is a network
namespace of it: its sshd sessions, its engine CLI and dockerd are processes here) and the
environment of n1's processes are sampled; afterwards the node user's home and /tmp are
searched. The password, and the base64 ``user:password`` Docker stores, appear nowhere.
"""

from __future__ import annotations

import base64
import secrets
import ssl
import time
from pathlib import Path

import pytest

import pki
from conftest import extra_registry, htpasswd_auth, placed
from labtools import basic_entry, docker_config, files_holding, look, manifest, netns_inode, sampled, unique

HOST = "10.231.0.1:5060"
USER = "alice"


@pytest.fixture(scope="module")
def htpasswd_registry(lab, nodes, tmp_path_factory):
    d = tmp_path_factory.mktemp("credreg")
    password = "pw-" + secrets.token_hex(16)
    issuer = pki.ca(d, "archfleet credentials test CA")
    pki.server(d, ips=("10.231.0.1",), issuer=issuer)
    verify = ssl.create_default_context(cafile=str(d / "ca.crt"))
    with placed(Path("/etc/docker/certs.d") / HOST / "ca.crt", (d / "ca.crt").read_bytes()), \
            extra_registry(d, HOST, http_extra=pki.tls_config(d), scheme="https", ready_status=401, verify=verify,
                           auth=htpasswd_auth(d, USER, password)):
        yield type("Registry", (), {"password": password, "verify": verify})()


def test_registry_credentials_reach_no_argv_environment_or_file_on_the_node(lab, nodes, htpasswd_registry, tmp_path):
    password = htpasswd_registry.password
    needles = [password.encode(), base64.b64encode(f"{USER}:{password}".encode())]
    home = nodes.toml.parent / "nodes" / "n1" / "home"
    # the search finds what is there: a control file in the node user's home
    control = home / f"control-{unique('c')}"
    control.write_text(f"auth={needles[1].decode()}\n")
    assert files_holding([home], needles, time.time() - 60) == [f"{control} holds {needles[1][:6]!r}..."]
    control.unlink()

    env = docker_config(tmp_path, {HOST: basic_entry(USER, password)})
    t = unique("t")
    started = time.time()
    netns = netns_inode("af-n1")
    with sampled(lambda: look(needles, netns)) as samples:
        proc = lab.archfleet("build", "--progress", "plain", *nodes.args("--no-local", "--node", "n1"),
                             "--platform", "linux/amd64,linux/arm64", "--build-arg", f"BASE={nodes.base}",
                             "--build-arg", f"N={unique('n')}", "-t", f"{HOST}/promises/creds:{t}", "--push",
                             "examples/arch-test", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # n1 built both; archfleet's client pushed them (from n1's export), with the password
    assert "[linux/arm64@n1] pushing" in proc.stderr and "[linux/amd64@n1] pushing" in proc.stderr
    index = manifest(HOST, "promises/creds", t, scheme="https", verify=htpasswd_registry.verify,
                     auth=(USER, password))
    assert index.status_code == 200 and index.headers["docker-content-digest"] == proc.stdout.strip()
    seen_in_n1 = {name for _, names in samples for name in names}
    assert len(samples) > 10 and "dockerd" in " ".join(seen_in_n1), seen_in_n1  # it watched n1
    assert [hit for hits, _ in samples for hit in hits] == []
    # (the coordinator's own Docker config, where docker login put them, is the one place they are)
    assert files_holding([home, Path("/tmp")], needles, started, skip=Path(env["DOCKER_CONFIG"])) == []
    assert password not in proc.stderr + proc.stdout
