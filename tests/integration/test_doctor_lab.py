"""`archfleet doctor` on the lab, for the checks test_seeing's doctor test does not reach
(docs/cli.md): a node whose host key changed, a registry refusing the credentials, a QEMU
handler without the fix-binary flag, and --no-local. (Clock skew is not tested: the lab's
nodes share this machine's clock.)"""

from __future__ import annotations

import pytest

from conftest import extra_registry, htpasswd_auth, register_without_f
from labtools import basic_entry, docker_config

REGISTRY = "127.0.0.1:5062"


@pytest.fixture(scope="module")
def htpasswd_registry(lab, tmp_path_factory):
    d = tmp_path_factory.mktemp("doctorreg")
    with extra_registry(d, REGISTRY, ready_status=401, auth=htpasswd_auth(d, "alice", "right")):
        yield REGISTRY


def checks(stdout: str) -> dict[str, str]:
    """doctor's lines by what they check ('node n1', 'registry HOST', 'binfmt', ...)."""
    return {l[6:].split(": ", 1)[0]: l for l in stdout.splitlines() if l[:4] in ("ok  ", "warn", "FAIL")}


@pytest.mark.parametrize("emulators_removed", ["linux/s390x"], indirect=True)
def test_doctor_names_a_changed_host_key_refused_credentials_and_a_handler_without_f(
        lab, nodes, htpasswd_registry, emulators_removed, tmp_path):
    lab_dir = nodes.toml.parent
    n2_key = (lab_dir / "nodes" / "n2" / "ssh_host_ed25519_key.pub").read_text().split()
    known = [l for l in (lab_dir / "known_hosts").read_text().splitlines() if not l.startswith("10.231.0.11 ")]
    (tmp_path / "known_hosts").write_text("\n".join(known + [f"10.231.0.11 {n2_key[0]} {n2_key[1]}"]) + "\n")
    toml = tmp_path / "nodes.toml"
    toml.write_text(nodes.toml.read_text().replace(str(lab_dir / "known_hosts"), str(tmp_path / "known_hosts")))
    register_without_f("qemu-s390x")
    env = docker_config(tmp_path, {htpasswd_registry: basic_entry("alice", "wrong")})

    proc = lab.archfleet("doctor", "--nodes", str(toml), "--registry", htpasswd_registry, env=env)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    got = checks(proc.stdout)
    assert got["node n1"].startswith("FAIL") and "does not match" in got["node n1"], got["node n1"]
    assert "check that the node really is who it claims" in got["node n1"]
    assert got["node n2"].startswith("ok") and got["node n3"].startswith("ok")
    registry = got[f"registry {htpasswd_registry}"]
    assert registry.startswith("FAIL") and "refused the credentials" in registry, registry
    assert f"docker login {htpasswd_registry}" in registry and "wrong" not in proc.stdout + proc.stderr
    assert got["binfmt"].startswith("warn") and "qemu-s390x" in got["binfmt"] and "fix-binary flag F" in got["binfmt"]
    assert got["local engine"].startswith("ok")
    # the nodes share this kernel's handlers: without F none of them runs s390x either, so the
    # platform check fails it by name (the rule: a platform no node can build is FAIL)
    no_local = lab.archfleet("doctor", "--no-local", "--nodes", str(toml), env=env)
    s390x = checks(no_local.stdout).get("linux/s390x on n2", "")
    assert no_local.returncode == 3 and s390x.startswith("FAIL") , no_local.stdout


def test_doctor_no_local_reports_only_the_nodes_and_the_platforms_each_builds(lab, nodes):
    """--no-local: nothing about this machine (no local engine, binfmt or registry line); each
    node, then the platforms each builds; exit 0 when all are ok."""
    no_local = lab.archfleet("doctor", "--no-local", "--nodes", str(nodes.toml), check=True)
    got = checks(no_local.stdout)
    # nothing about this machine: each node, then the platforms each builds (issue 16)
    assert set(got) == {"node n1", "node n2", "node n3", "platforms on n1", "platforms on n2", "platforms on n3"}, \
        no_local.stdout
    assert all(v.startswith("ok") for v in got.values())
