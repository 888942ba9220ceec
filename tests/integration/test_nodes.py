"""SSH nodes end to end: three network-namespace nodes, each with sshd and its own dockerd."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import httpx
import pytest

FIVE = ["linux/amd64", "linux/386", "linux/arm64", "linux/arm/v7", "linux/s390x"]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def ls(lab, nodes, *extra):
    proc = lab.archfleet("ls", "--format", "json", "--nodes", str(nodes.toml), *extra, check=True)
    return {n["name"]: n for n in json.loads(proc.stdout)}


def test_ls_lists_the_nodes_with_platforms(lab, nodes):
    got = ls(lab, nodes)
    assert set(got) == {"local", "n1", "n2", "n3"}
    for name in ("n1", "n2", "n3"):
        n = got[name]
        assert n["reachable"] and n["builder"] == "buildkit", n
        assert "linux/amd64" in n["native"] and "linux/arm64" in n["emulated"]
        assert n["score"] and n["max_builds"] == 2
    table = lab.archfleet("ls", "--nodes", str(nodes.toml), check=True).stdout
    assert "n1" in table and "ready" in table


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
    tag = f"{nodes.registry}/arch-nodes:{unique('t')}"
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
    resp = httpx.get(f"http://{nodes.registry}/v2/arch-nodes/manifests/{tag.rsplit(':', 1)[1]}",
                     headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})
    assert resp.headers["docker-content-digest"] == digest
    assert len(resp.json()["manifests"]) == 5


def test_changed_host_key_is_refused_naming_node_and_fingerprint(lab, nodes, tmp_path):
    lab_dir = nodes.toml.parent
    n1_key = (lab_dir / "nodes" / "n1" / "ssh_host_ed25519_key.pub").read_text().split()
    n2_key = (lab_dir / "nodes" / "n2" / "ssh_host_ed25519_key.pub").read_text().split()
    bad = tmp_path / "known_hosts"
    lines = [l for l in (lab_dir / "known_hosts").read_text().splitlines() if not l.startswith("10.231.0.11 ")]
    bad.write_text("\n".join(lines + [f"10.231.0.11 {n2_key[0]} {n2_key[1]}"]) + "\n")  # n2's key claimed for n1
    text = nodes.toml.read_text().replace(str(lab_dir / "known_hosts"), str(bad))
    toml = tmp_path / "nodes.toml"
    toml.write_text(text)
    got = {n["name"]: n for n in json.loads(lab.archfleet("ls", "--format", "json", "--nodes", str(toml),
                                                          check=True).stdout)}
    err = got["n1"]["error"]
    assert not got["n1"]["reachable"]
    assert "node n1" in err and "does not match" in err and "SHA256:" in err and "refusing" in err
    tag = f"{nodes.registry}/arch-hostkey:{unique('t')}"
    proc = lab.archfleet("build", "--nodes", str(toml), "--insecure-registry", nodes.registry, "--no-local",
                         "--platform", "linux/amd64", "-t", tag, "--push", "--metadata-file", str(tmp_path / "m.json"),
                         "--build-arg", f"BASE={nodes.base}", "examples/arch-test", check=True)
    used = json.loads((tmp_path / "m.json").read_text())["archfleet.platforms"]["linux/amd64"]["node"]
    assert used != "n1"
    assert n1_key != n2_key


def test_shell_metacharacters_never_run_on_a_node(lab, nodes, tmp_path):
    marker = Path(f"/tmp/archfleet-pwned-{uuid.uuid4().hex[:8]}")
    payloads = [f"$(touch {marker}-a)", f"`touch {marker}-b`", f"; touch {marker}-c", f"' ; touch {marker}-d '",
                f'" ; touch {marker}-e "', f"x\ntouch {marker}-f"]
    rel = marker.name  # names cannot hold "/": these would land in the cwd of whatever ran them
    ctx = tmp_path / f"ctx $(touch {rel}-g); `touch {rel}-h`"
    ctx.mkdir()
    (ctx / f"file;$(touch {rel}-i)").write_text("data\n")
    (ctx / "Dockerfile").write_text(f"FROM {nodes.base}\nARG P0\nARG P1\nARG P2\nARG P3\nARG P4\nARG P5\n"
                                    "LABEL p0=$P0 p1=$P1 p2=$P2 p3=$P3 p4=$P4\nCOPY . /ctx/\nCMD [\"uname\", \"-m\"]\n")
    args = []
    for i, p in enumerate(payloads):
        args += ["--build-arg", f"P{i}={p}"]
    tag = f"{nodes.registry}/arch-meta:{unique('t')}"
    proc = lab.archfleet("build", *nodes.args("--no-local", "--platform", "linux/amd64,linux/arm64", "-t", tag,
                                              "--push", *args), str(ctx), check=True)
    assert proc.returncode == 0
    homes = list((nodes.toml.parent / "nodes").glob("n*/home"))
    places = [Path("/tmp"), Path.cwd(), Path.home(), tmp_path, *homes]
    leftovers = sorted(str(p) for place in places for p in place.glob(marker.name + "*"))
    assert leftovers == []
    # ...and the values arrived literally
    index = httpx.get(f"http://{nodes.registry}/v2/arch-meta/manifests/{tag.rsplit(':', 1)[1]}",
                      headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json"}).json()
    child = httpx.get(f"http://{nodes.registry}/v2/arch-meta/manifests/{index['manifests'][0]['digest']}",
                      headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}).json()
    config = httpx.get(f"http://{nodes.registry}/v2/arch-meta/blobs/{child['config']['digest']}").json()
    labels = config["config"]["Labels"]
    assert labels["p0"] == payloads[0] and labels["p1"] == payloads[1] and labels["p3"] == payloads[3]
    # tags and node names with metacharacters are refused by validation
    bad_tag = lab.archfleet("build", *nodes.args("--platform", "linux/amd64", "-t", f"{nodes.registry}/x:$(id)",
                                                 "--push"), str(ctx))
    assert bad_tag.returncode == 2
    bad_nodes = tmp_path / "bad.toml"
    bad_nodes.write_text('[nodes."n1;touch /tmp/x"]\nhost = "10.231.0.11"\n')
    proc = lab.archfleet("ls", "--nodes", str(bad_nodes))
    assert proc.returncode == 2 and f"{bad_nodes}:1:" in proc.stderr


def test_malformed_nodes_file_is_one_line_exit_2(lab, tmp_path):
    bad = tmp_path / "nodes.toml"
    bad.write_text('[nodes.a]\nhost = "h"\nport = "twenty-two"\n')
    proc = lab.archfleet("ls", "--nodes", str(bad))
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and f"{bad}:3:" in lines[0] and "port" in lines[0]


def test_node_arch_must_agree_with_the_probe(lab, nodes, tmp_path):
    text = nodes.toml.read_text().replace('[nodes.n3]\n', '[nodes.n3]\narch = "linux/s390x"\n')
    toml = tmp_path / "nodes.toml"
    toml.write_text(text)
    got = ls(lab, type("N", (), {"toml": toml})())
    assert not got["n3"]["reachable"]
    assert "linux/s390x" in got["n3"]["error"] and "linux/amd64" in got["n3"]["error"]


def test_two_syncs_of_one_context_at_once_leave_one_complete_tree(lab, nodes, tmp_path):
    """Two coordinators (two connections) syncing the same new context to one node at once."""
    import asyncio

    from archfleet.context import CACHE
    from archfleet.inventory import load_nodes_file
    from archfleet.plugins.ssh import KEYS as SSH_KEYS
    from archfleet.model import BuildRequest
    from archfleet.platforms import parse
    from archfleet.plugins.ssh import _connect

    for i in range(30):
        (tmp_path / f"f{i}").write_bytes(os.urandom(20000))
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    node = next(n for n in load_nodes_file(nodes.toml, {"ssh": SSH_KEYS}) if n.name == "n2")
    req = BuildRequest(tmp_path, tmp_path / "Dockerfile", [parse("linux/amd64")])

    async def go():
        a, b = await _connect(node), await _connect(node)
        try:
            results = await asyncio.gather(a.prepare_context(req), b.prepare_context(req))
            listing = await a.run(["sh", "-c", 'ls "$1" | wc -l; ls "$2" | wc -l', "sh", results[0][0],
                                   f"{CACHE}/stage"])
            return results, listing
        finally:
            await a.close()
            await b.close()

    (ctx_a, df_a, _), (ctx_b, df_b, _) = asyncio.run(go())[0]
    assert ctx_a == ctx_b and df_a == df_b
    _, listing = asyncio.run(go())
    counts = [l for l in listing.tail if l.strip()]
    assert counts == ["31", "0"], listing.tail  # 30 files + Dockerfile in the tree; no stage left behind


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
