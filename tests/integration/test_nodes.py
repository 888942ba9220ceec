"""SSH nodes end to end: three network-namespace nodes, each with sshd and its own dockerd."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest

from labtools import child_labels, ls as ls_json, manifest, one_line_error, sampled, unique

FIVE = ["linux/amd64", "linux/386", "linux/arm64", "linux/arm/v7", "linux/s390x"]


def ls(lab, nodes, *extra):
    return ls_json(lab, nodes.toml, *extra)


def test_ls_lists_the_nodes_with_platforms(lab, nodes):
    got = ls(lab, nodes)
    assert set(got) == {"local", "n1", "n2", "n3"}
    for name in ("n1", "n2", "n3"):
        n = got[name]
        assert n["reachable"] and n["builder"] == "buildkit", n
        assert "linux/amd64" in n["native"] and "linux/arm64" in n["emulated"]
        assert n["score"] and n["max_builds"] == 2
        assert n["cpus"] >= 1 and n["memory"] > 1 << 28 and n["load"] >= 0, n  # the probe's machine facts
    table = lab.archfleet("ls", "--nodes", str(nodes.toml), check=True).stdout.splitlines()
    for name in ("n1", "n2", "n3"):
        (row,) = [line for line in table if line.split()[:1] == [name]]
        assert row.split()[1] == "ready", row


def test_ls_shows_labels_a_node_without_builder_and_a_relative_identity(lab, nodes, tmp_path):
    """nodes.md: ``labels`` are shown by ``ls --format json``; a node whose engine CLI cannot
    build is reachable but 'no builder', saying why; a relative ``identity`` is relative to the
    nodes file (here a copy of the lab key beside a copy of the file, run from elsewhere)."""
    import shutil

    shutil.copy(nodes.toml.parent / "id_ed25519", tmp_path / "lab-key")
    (tmp_path / "lab-key").chmod(0o600)
    text = nodes.toml.read_text().replace(f'identity = "{nodes.toml.parent / "id_ed25519"}"', 'identity = "lab-key"')
    assert 'identity = "lab-key"' in text
    text = text.replace("[nodes.n2]\n", '[nodes.n2]\nlabels = { site = "lab", rack = "b 2" }\n')
    # n3 once more, under another name, with an engine CLI that does not exist
    text += (f'\n[nodes.n3b]\nhost = "10.231.0.13"\nuser = "afn3"\nidentity = "lab-key"\n'
             f'known_hosts = "{nodes.toml.parent / "known_hosts"}"\n'
             'docker_host = "unix:///var/run/af-n3/docker.sock"\nengine_cli = "/nonexistent/docker"\n')
    toml = tmp_path / "nodes.toml"
    toml.write_text(text)
    got = ls_json(lab, toml)
    assert all(got[n]["reachable"] for n in ("n1", "n2", "n3")), got  # the relative key worked
    assert got["n2"]["labels"] == {"site": "lab", "rack": "b 2"} and got["n1"]["labels"] == {}
    assert got["n3b"]["reachable"] and got["n3b"]["builder"] is None, got["n3b"]
    assert "no engine CLI with BuildKit" in got["n3b"]["error"] and "/nonexistent/docker" in got["n3b"]["error"]
    table = lab.archfleet("ls", "--nodes", str(toml), check=True).stdout.splitlines()
    (row,) = [line for line in table if line.split()[:1] == ["n3b"]]
    assert row.split()[1:3] == ["no", "builder"], row


def test_ls_shows_an_unreachable_node_and_the_others(lab, nodes):
    nodes.fault("n2", "sshd-stop")
    try:
        got = ls(lab, nodes)
        assert not got["n2"]["reachable"] and "10.231.0.12" in got["n2"]["error"]
        assert got["n1"]["reachable"] and got["n3"]["reachable"]
        table = lab.archfleet("ls", "--nodes", str(nodes.toml), check=True).stdout
        assert "unreachable" in table
    finally:
        nodes.fault("n2", "sshd-start")


def test_build_across_three_nodes_without_local(lab, nodes, tmp_path):
    tag = f"{nodes.registry}/promises/arch-nodes:{unique('t')}"
    meta = tmp_path / "meta.json"
    proc = lab.archfleet("build", *nodes.args("--no-local", "--platform", ",".join(FIVE), "-t", tag, "--push",
                                              "--build-arg", f"BASE={nodes.base}", "--metadata-file", str(meta)),
                         "examples/arch-test", check=True)
    digest = proc.stdout.strip()
    doc = json.loads(meta.read_text())
    assert doc["containerimage.digest"] == digest
    placed = {p: (e["node"], e["strategy"]) for p, e in doc["archfleet.platforms"].items()}
    assert set(placed) == set(FIVE)
    assert {node for node, _ in placed.values()} == {"n1", "n2", "n3"}, placed
    assert placed["linux/amd64"][1] == "native" and placed["linux/arm64"][1] == "qemu"
    resp = manifest(nodes.registry, "promises/arch-nodes", tag.rsplit(":", 1)[1])
    assert resp.headers["docker-content-digest"] == digest
    assert len(resp.json()["manifests"]) == 5


def test_every_platform_starts_building_at_once(lab, nodes, tmp_path):
    """README: builds every platform at once. Five platforms on three nodes of two slots each:
    every one started building before the first image was written (each takes 3 s or more)."""
    (tmp_path / "Dockerfile").write_text(f"FROM {nodes.base}\nARG N\nRUN echo $N && sleep 3\n")
    proc = lab.archfleet("build", "--progress", "plain", *nodes.args("--no-local", "--platform", ",".join(FIVE),
                                                                   "--build-arg", f"N={uuid.uuid4().hex}"),
                         str(tmp_path), check=True)
    lines = proc.stderr.splitlines()
    started = [i for i, l in enumerate(lines) if "] building (" in l]
    first_built = next(i for i, l in enumerate(lines) if "writing image sha256:" in l)
    assert len(started) == 5 and max(started) < first_built, "\n".join(lines)[-3000:]


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_changed_host_key_is_refused_naming_node_and_fingerprint(lab, nodes, tmp_path, policy):
    """nodes.md: a host whose entry holds a different key is refused under either policy; the
    node is unreachable, so a build pinned to it cannot run there, and an unpinned build goes
    elsewhere."""
    lab_dir = nodes.toml.parent
    n1_key = (lab_dir / "nodes" / "n1" / "ssh_host_ed25519_key.pub").read_text().split()
    n2_key = (lab_dir / "nodes" / "n2" / "ssh_host_ed25519_key.pub").read_text().split()
    assert n1_key[:2] != n2_key[:2]  # precondition: claiming n2's key for n1 is a changed key
    bad = tmp_path / "known_hosts"
    lines = [l for l in (lab_dir / "known_hosts").read_text().splitlines() if not l.startswith("10.231.0.11 ")]
    bad.write_text("\n".join(lines + [f"10.231.0.11 {n2_key[0]} {n2_key[1]}"]) + "\n")  # n2's key claimed for n1
    text = nodes.toml.read_text().replace(str(lab_dir / "known_hosts"), str(bad))
    toml = tmp_path / "nodes.toml"
    toml.write_text(text.replace("[nodes.n1]\n", f'[nodes.n1]\nhost_key_policy = "{policy}"\n'))
    known_before = bad.read_text()
    got = ls_json(lab, toml)
    err = got["n1"]["error"]
    assert not got["n1"]["reachable"] and got["n2"]["reachable"]
    assert "node n1" in err and "does not match" in err and "SHA256:" in err and "refusing" in err
    assert bad.read_text() == known_before  # accept-new never replaces a key it has

    pinned = lab.archfleet("build", "--progress", "plain", "--nodes", str(toml), "--insecure-registry",
                           nodes.registry, "--no-local", "--node", "n1", "--platform", "linux/amd64",
                           "--build-arg", f"BASE={nodes.base}", "examples/arch-test")
    assert pinned.returncode == 3, pinned.stderr[-2000:]
    line = one_line_error(pinned)
    assert "linux/amd64" in line and "n1: unreachable" in line and "does not match" in line, line

    tag = f"{nodes.registry}/promises/arch-hostkey:{unique('t')}"
    lab.archfleet("build", "--nodes", str(toml), "--insecure-registry", nodes.registry, "--no-local",
                  "--platform", "linux/amd64", "-t", tag, "--push", "--metadata-file", str(tmp_path / "m.json"),
                  "--build-arg", f"BASE={nodes.base}", "examples/arch-test", check=True)
    used = json.loads((tmp_path / "m.json").read_text())["archfleet.platforms"]["linux/amd64"]["node"]
    assert used in ("n2", "n3")


def test_shell_metacharacters_never_run_on_a_node(lab, nodes, tmp_path):
    marker = Path(f"/tmp/archfleet-pwned-{uuid.uuid4().hex[:8]}")
    payloads = [f"$(touch {marker}-a)", f"`touch {marker}-b`", f"; touch {marker}-c", f"' ; touch {marker}-d '",
                f'" ; touch {marker}-e "', f"x\ntouch {marker}-f"]
    rel = marker.name  # names cannot hold "/": these would land in the cwd of whatever ran them
    ctx = tmp_path / f"ctx $(touch {rel}-g); `touch {rel}-h`"
    ctx.mkdir()
    (ctx / f"file;$(touch {rel}-i)").write_text("data\n")
    names = [f"P{i}" for i in range(len(payloads))]
    (ctx / "Dockerfile").write_text(f"FROM {nodes.base}\n" + "".join(f"ARG {n}\n" for n in names)
                                    + "LABEL " + " ".join(f'{n.lower()}="${{{n}}}"' for n in names)
                                    + "\nCOPY . /ctx/\nCMD [\"uname\", \"-m\"]\n")
    args = []
    for name, p in zip(names, payloads):
        args += ["--build-arg", f"{name}={p}"]
    repo, t = "promises/arch-meta", unique("t")
    platforms = ["linux/amd64", "linux/arm64"]
    lab.archfleet("build", *nodes.args("--no-local", "--platform", ",".join(platforms), "-t",
                                       f"{nodes.registry}/{repo}:{t}", "--push", *args), str(ctx), check=True)
    homes = list((nodes.toml.parent / "nodes").glob("n*/home"))
    places = [Path("/tmp"), Path.cwd(), Path.home(), tmp_path, *homes]
    leftovers = sorted(str(p) for place in places for p in place.glob(marker.name + "*"))
    assert leftovers == []
    # ...and every value arrived literally, in every child
    labels = child_labels(nodes.registry, repo, t)
    assert sorted(labels) == platforms
    for platform, got in labels.items():
        assert [got[n.lower()] for n in names] == payloads, platform
    # tags and node names with metacharacters are refused by validation
    bad_tag = lab.archfleet("build", *nodes.args("--platform", "linux/amd64", "-t", f"{nodes.registry}/x:$(id)",
                                                 "--push"), str(ctx))
    assert bad_tag.returncode == 2
    bad_nodes = tmp_path / "bad.toml"
    bad_nodes.write_text('[nodes."n1;touch /tmp/x"]\nhost = "10.231.0.11"\n')
    proc = lab.archfleet("ls", "--nodes", str(bad_nodes))
    assert proc.returncode == 2 and f"{bad_nodes}:1:" in one_line_error(proc)


def test_malformed_nodes_file_is_one_line_exit_2(cli, tmp_path):
    bad = tmp_path / "nodes.toml"
    bad.write_text('[nodes.a]\nhost = "h"\nport = "twenty-two"\n')
    proc = cli.archfleet("ls", "--nodes", str(bad))
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert f"{bad}:3:" in line and "port" in line


def test_node_arch_must_agree_with_the_probe(lab, nodes, tmp_path):
    text = nodes.toml.read_text().replace('[nodes.n3]\n', '[nodes.n3]\narch = "linux/s390x"\n')
    toml = tmp_path / "nodes.toml"
    toml.write_text(text)
    got = ls_json(lab, toml)
    assert not got["n3"]["reachable"]
    assert "linux/s390x" in got["n3"]["error"] and "linux/amd64" in got["n3"]["error"]


def test_two_syncs_of_one_context_at_once_leave_one_complete_tree(lab, nodes, tmp_path):
    """Two coordinators (two connections) syncing the same new context to one node at once:
    both get the same tree, and that tree, read back right after the racing syncs, holds every
    file with its mode and exact contents; no staging directory is left behind."""
    import asyncio

    from archfleet.context import CACHE
    from archfleet.inventory import load_nodes_file
    from archfleet.plugins.ssh import KEYS as SSH_KEYS
    from archfleet.model import BuildRequest
    from archfleet.platforms import parse
    from archfleet.plugins.ssh import _connect

    for i in range(30):
        (tmp_path / f"f{i}").write_bytes(os.urandom(20000))
    (tmp_path / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "tool.sh").chmod(0o755)
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    node = next(n for n in load_nodes_file(nodes.toml, {"ssh": SSH_KEYS}) if n.name == "n2")
    req = BuildRequest(tmp_path, tmp_path / "Dockerfile", [parse("linux/amd64")])
    expected = sorted(f"{p.stat().st_mode & 0o777:o} {hashlib.sha256(p.read_bytes()).hexdigest()} ./{p.name}"
                      for p in tmp_path.iterdir())

    async def race():
        a, b = await _connect(node), await _connect(node)
        try:
            results = await asyncio.gather(a.prepare_context(req), b.prepare_context(req))
            tree: list[str] = []
            done = await a.run(["sh", "-c", '(cd "$1" && for f in $(find . -type f); do '
                                'printf "%s %s\\n" "$(stat -c %a "$f")" "$(sha256sum < "$f" | cut -c1-64) $f"; done); '
                                'ls -A "$2" | sed "s/^/staged: /"', "sh", results[0][0], f"{CACHE}/stage"],
                               on_line=tree.append)
            assert done.ok, done.tail
            return results, tree
        finally:
            await a.close()
            await b.close()

    ((ctx_a, df_a, _), (ctx_b, df_b, _)), tree = asyncio.run(race())
    assert ctx_a == ctx_b and df_a == df_b
    # no file missing, short or changed, and nothing left staged
    assert sorted(line for line in tree if line.strip()) == expected


def test_a_sync_measures_the_link_and_the_plan_uses_it(lab, nodes, tmp_path):
    """A context sync big enough to time records the rate to that node; the next plan's transfer
    estimate for a new context to it says it is measured."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}  # no rate measured before this test
    contexts = []
    for name in ("first", "second"):
        ctx = tmp_path / name
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nCOPY blob /blob\nCMD [\"uname\", \"-m\"]\n")
        (ctx / "blob").write_bytes(os.urandom(6 << 20))
        contexts.append(ctx)

    def n2_basis(ctx):
        proc = lab.archfleet("plan", "--format", "json", *nodes.args("--no-local", "--node", "n2", "--platform",
                                                                    "linux/amd64", "--build-arg", f"BASE={nodes.base}"),
                             str(ctx), env=env, check=True)
        return json.loads(proc.stdout)["platforms"][0]["estimate_basis"]

    assert "(assumed)" in n2_basis(contexts[0])
    lab.archfleet("build", "-q", *nodes.args("--no-local", "--node", "n2", "--platform", "linux/amd64",
                                             "--build-arg", f"BASE={nodes.base}"), str(contexts[0]), env=env, check=True)
    rates = json.loads((tmp_path / "cache" / "archfleet" / "links.json").read_text())
    assert [k for k in rates if k.startswith("n2|")] and all(v["rate"] > 1e6 for v in rates.values()), rates
    assert "(measured)" in n2_basis(contexts[1])


def _ssh_connections(netns: str) -> int:
    """Established TCP connections to the node's sshd, seen from inside its namespace."""
    import subprocess

    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htn", "state", "established", "( sport = :22 )"],
                         capture_output=True, text=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def test_one_ssh_connection_per_node_for_the_whole_command(lab, nodes, tmp_path):
    """nodes.md: one SSH connection per node for the whole command (probe, sync, builds): two
    builds, their leases and pushes on n1 never open a second one."""
    assert _ssh_connections("af-n1") == 0  # precondition: nobody else is on n1
    (tmp_path / "Dockerfile").write_text(f"FROM {nodes.base}\nARG N\nRUN echo $N > /n && sleep 3\n")
    with sampled(lambda: _ssh_connections("af-n1"), every=0.1) as seen:
        proc = lab.archfleet("build", "--progress", "plain", *nodes.args("--no-local", "--node", "n1"),
                             "--platform", "linux/amd64,linux/386", "--build-arg", f"N={uuid.uuid4().hex}",
                             "-t", f"{nodes.registry}/promises/one-conn:{unique('t')}", "--push", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[linux/386@n1] building" in proc.stderr and "[linux/amd64@n1] building" in proc.stderr
    assert max(seen) == 1, seen


def test_a_node_whose_link_is_down_is_given_up_after_the_connect_timeout(lab, nodes):
    """nodes.md: a 10 s connect timeout: a node that does not answer at all is reported
    unreachable within it, and the others are listed as usual."""
    import time

    nodes.fault("n3", "link-down")
    try:
        started = time.monotonic()
        got = ls(lab, nodes)
        took = time.monotonic() - started
    finally:
        nodes.fault("n3", "link-up")
    assert not got["n3"]["reachable"] and "10.231.0.13" in got["n3"]["error"], got["n3"]
    assert got["n1"]["reachable"] and got["n2"]["reachable"]
    assert 9 < took < 25, f"ls took {took:.1f}s with n3's link down"  # the timeout, not forever or at once
