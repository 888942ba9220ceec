"""Issue 15 on the lab's real dockerd (20.10), QEMU handlers and registry (repositories publish/...):
children pushed by digest, no stray tags, an unchanged build is a no-op, annotations.

Rules, each from the issue's "Done when" or docs/concepts.md:
- after a five-platform ``build --push -t reg/app:1`` the repository's tag list is exactly
  ``["1"]``; with ``--child-tags`` it also holds the five seed-style tags, each the index's child;
- a rebuild of an unchanged context reuses every platform (the plan shows ``reuse``, nothing is
  built, the index digest is the same); ``--no-cache`` builds; changing only the base image's
  digest rebuilds every platform;
- pushing the second tag in another repository of the same registry moves no layer bytes (the
  blobs are mounted), counted by a proxy in front of the registry;
- ``--annotation`` lands where buildx puts it, and the children become OCI manifests;
- a child built on an SSH node is exported through that node's engine (its CLI's `docker save`, streamed over SSH).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socketserver
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from conftest import missing
from labtools import manifest, one_line_error, tags_of, unique

FIVE = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x", "linux/ppc64le"]
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def platform_of(entry: dict) -> str:
    p = entry["platform"]
    return "/".join(filter(None, [p["os"], p["architecture"], p.get("variant")]))


def strategies(meta: Path) -> dict[str, str]:
    return {p: e["strategy"] for p, e in json.loads(meta.read_text())["archfleet.platforms"].items()}


def test_five_platforms_leave_exactly_the_requested_tag_and_child_tags_add_the_seed_style(lab, tmp_path):
    """Done when: tag list exactly ["1"]; with --child-tags also the five seed-style tags
    (<tag>-<os>-<arch>[-<variant>]), each pointing at the index's child for its platform; a
    template names them as asked ({tag}-{arch}{variant} -> 1-armv7)."""
    repo = f"publish/{unique('tags')}"
    spool = tmp_path / "spool"
    spool.mkdir()
    proc = lab.archfleet("build", "-q", "--platform", ",".join(FIVE), "-t", f"{lab.registry}/{repo}:1", "--push",
                         "examples/arch-test", env={"TMPDIR": str(spool)}, check=True)
    assert tags_of(lab.registry, repo) == ["1"]
    assert list(spool.iterdir()) == []  # each child's export was spooled there, and removed after its push
    index = lab.manifest(repo, "1")
    assert index.headers["docker-content-digest"] == proc.stdout.strip()
    assert sorted(platform_of(e) for e in index.json()["manifests"]) == sorted(FIVE)
    assert lab.run_image(f"{lab.registry}/{repo}:1", "linux/arm/v7") == "armv7l"

    seeded = f"publish/{unique('seed')}"
    lab.archfleet("build", "-q", "--child-tags", "--platform", ",".join(FIVE), "-t", f"{lab.registry}/{seeded}:1",
                  "--push", "examples/arch-test", check=True)
    seed_tags = ["1-" + p.replace("/", "-") for p in FIVE]
    assert tags_of(lab.registry, seeded) == sorted(["1", *seed_tags])
    children = {platform_of(e): e["digest"] for e in lab.manifest(seeded, "1").json()["manifests"]}
    for p, t in zip(FIVE, seed_tags):
        assert lab.manifest(seeded, t).headers["docker-content-digest"] == children[p]

    templated = f"publish/{unique('tmpl')}"
    lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm/v7", "-t", f"{lab.registry}/{templated}:1",
                  "--push", "--child-tags={tag}-{arch}{variant}", "examples/arch-test", check=True)
    assert tags_of(lab.registry, templated) == ["1", "1-amd64", "1-armv7"]


@pytest.fixture
def own_base(lab, tmp_path):
    """A multi-arch base image of the test's own (publish/<unique>-base:latest, the lab's busybox
    with a label, built by archfleet), and a function that changes only its digest (a new label
    value on every child)."""
    ref = f"{lab.registry}/publish/{unique('base')}:latest"
    d = tmp_path / "base"
    d.mkdir()

    def make(version: str) -> str:
        (d / "Dockerfile").write_text(f"FROM {lab.base}\nLABEL publish.test.base={version}\n")
        return lab.archfleet("build", "-q", "--platform", ",".join(FIVE), "-t", ref, "--push", str(d),
                             check=True).stdout.strip()

    make("1")
    return ref, make


def test_an_unchanged_rebuild_is_reused_and_a_new_base_digest_rebuilds_every_platform(lab, own_base, tmp_path):
    """Done when (no-op): the unchanged context is not rebuilt (plan and build say reuse, nothing
    is built, the index is the same); --no-cache builds; changing only the base image's digest
    rebuilds every platform."""
    base, remake_base = own_base
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("ARG BASE\nFROM $BASE\nRUN uname -m > /arch\nCMD [\"cat\", \"/arch\"]\n")
    tag = f"{lab.registry}/publish/{unique('noop')}:1"
    args = ["--platform", ",".join(FIVE), "--build-arg", f"BASE={base}", "-t", tag, "--push", str(ctx)]
    m = tmp_path / "m.json"
    first = lab.archfleet("build", "-q", "--metadata-file", str(m), *args, check=True).stdout.strip()
    assert "reuse" not in strategies(m).values()

    plan = json.loads(lab.archfleet("plan", "--format", "json", *args, check=True).stdout)
    assert {p["strategy"] for p in plan["platforms"]} == {"reuse"}
    assert all(p["estimate_seconds"] == 0 for p in plan["platforms"])

    again = lab.archfleet("build", "--progress", "plain", "--metadata-file", str(m), *args, check=True)
    assert set(strategies(m).values()) == {"reuse"}
    assert "] building" not in again.stderr and "] pushing" not in again.stderr  # nothing built or pushed
    assert again.stdout.strip().splitlines()[-1] == first  # the very same index

    forced = lab.archfleet("build", "-q", "--no-cache", "--metadata-file", str(m), *args, check=True).stdout.strip()
    assert "reuse" not in strategies(m).values()  # built again (a RUN gives a new layer: a new index)

    remake_base("2")  # nothing in the context changed, only what $BASE resolves to
    changed = lab.archfleet("build", "-q", "--metadata-file", str(m), *args, check=True).stdout.strip()
    assert "reuse" not in strategies(m).values() and len(strategies(m)) == 5
    assert changed not in (first, forced)


class _Counting(http.server.BaseHTTPRequestHandler):
    """Forwards every request to the lab registry, counting the body bytes of blob uploads by
    repository (PATCH and PUT under /v2/<repo>/blobs/uploads/; a stream upload's chunked body
    decoded) and the mounts it answered."""

    protocol_version = "HTTP/1.1"
    upstream = ("127.0.0.1", 5000)
    uploaded: dict[str, int] = {}
    mounted: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():  # a stream upload
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self):
        body = self._body()
        path = self.path
        if "/blobs/uploads/" in path and self.command in ("PATCH", "PUT"):
            repo = path[len("/v2/"):].split("/blobs/uploads/")[0]
            with self.lock:
                self.uploaded[repo] = self.uploaded.get(repo, 0) + len(body)
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("connection", "content-length", "transfer-encoding")}
        conn.request(self.command, path, body=body if body or self.command in ("PUT", "PATCH", "POST") else None,
                     headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if self.command == "POST" and "mount=" in path and resp.status == 201:
            repo = path[len("/v2/"):].split("/blobs/uploads/")[0]
            with self.lock:
                self.mounted[repo] = self.mounted.get(repo, 0) + 1
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "content-length", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


@pytest.fixture
def counting_proxy(lab):
    host, port = lab.registry.rsplit(":", 1)
    _Counting.upstream = (host, int(port))
    _Counting.uploaded, _Counting.mounted = {}, {}
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Counting)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", _Counting
    finally:
        server.shutdown()
        server.server_close()


def test_the_second_repository_of_a_registry_gets_every_blob_by_mount_no_layer_bytes(lab, counting_proxy, tmp_path):
    """Done when: pushing a second tag in another repository of the same registry moves no layer
    bytes: every blob of every child reaches it by a cross-repository mount. Counted by a proxy
    in front of the registry (the build pushes through it)."""
    proxy, counts = counting_proxy
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nRUN head -c 300000 /dev/urandom > /noise\n"
                                    "CMD [\"uname\", \"-m\"]\n")
    first, second = f"publish/{unique('one')}", f"publish/{unique('two')}"
    lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{proxy}/{first}:1",
                  "-t", f"{proxy}/{second}:1", "--push", str(ctx), check=True)
    assert counts.uploaded.get(first, 0) > 2 * 300000  # the two noise layers (and the rest) went up once...
    assert counts.uploaded.get(second, 0) == 0  # ...and not a byte of them to the second repository
    assert counts.mounted.get(second, 0) >= 2 * 3  # config, base layer(s) and the noise layer, per child
    assert manifest(lab.registry, second, "1").status_code == 200
    assert tags_of(lab.registry, first) == tags_of(lab.registry, second) == ["1"]


def test_annotations_go_where_buildx_puts_them_and_make_the_index_oci(lab):
    """--annotation (buildx's syntax): index: on the index, manifest-descriptor[P]: on P's entry,
    a bare KEY=VALUE on every child manifest; OCI media types then, and the image still runs."""
    repo = f"publish/{unique('notes')}"
    lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", f"{lab.registry}/{repo}:1", "--push",
                  "--annotation", "index:org.opencontainers.image.description=two platforms",
                  "--annotation", "manifest-descriptor[linux/arm64]:org.example.lane=slow",
                  "--annotation", "org.example.bare=yes", "examples/arch-test", check=True)
    index = lab.manifest(repo, "1").json()
    assert index["mediaType"] == OCI_INDEX
    assert index["annotations"] == {"org.opencontainers.image.description": "two platforms"}
    by_platform = {platform_of(e): e for e in index["manifests"]}
    assert by_platform["linux/arm64"]["annotations"] == {"org.example.lane": "slow"}
    assert "annotations" not in by_platform["linux/amd64"]
    for entry in index["manifests"]:
        child = lab.manifest(repo, entry["digest"]).json()
        assert entry["mediaType"] == child["mediaType"] == OCI_MANIFEST
        assert child["annotations"] == {"org.example.bare": "yes"}
    assert lab.run_image(f"{lab.registry}/{repo}:1", "linux/arm64") == "aarch64"


@pytest.mark.parametrize("args,needle", [
    (["--child-tags", "{tag}-{arch}", "--platform", "linux/arm/v6,linux/arm/v7"],
     "linux/arm/v6 and linux/arm/v7 would both be tagged '1-arm'"),
    (["--child-tags", "{tag}-{cpu}"], "unknown placeholder {cpu}"),
    (["--annotation", "index-descriptor:a=b"], "index-descriptor annotations exist only in an OCI layout"),
    (["--annotation", "manifest[linux/s390x]:a=b"], "linux/s390x is not a platform being built"),
    (["--annotation", "index[linux/amd64]:a=b"], "drop the [PLATFORM]"),
    (["--annotation", "nokeyvalue"], "expected [TYPE:]KEY=VALUE"),
])
def test_bad_child_tags_and_annotations_are_one_line_exit_2_before_anything(cli, args, needle):
    """cli.md: bad input is one line naming the flag, exit 2, checked before anything is built."""
    platforms = [] if "--platform" in args else ["--platform", "linux/amd64"]
    proc = cli.archfleet("build", *platforms, *args, "-t", "127.0.0.1:5000/publish/never:1", "--push",
                         "examples/arch-test")
    assert proc.returncode == 2, proc.stderr
    assert needle in one_line_error(proc)


def test_child_tags_need_push(cli):
    proc = cli.archfleet("build", "--child-tags", "--platform", "linux/amd64", "examples/arch-test")
    assert proc.returncode == 2 and "--child-tags: child tags are pushed; add --push" in one_line_error(proc)


# -- an SSH node: the export travels through the node's forwarded engine socket ----------------------

SSH_PORT = 2270


@pytest.fixture(scope="module")
def ssh_node(lab):
    import sshlab

    why = sshlab.available()
    if why:
        missing(why)
    d = Path(tempfile.mkdtemp(prefix="archfleet-publish-sshd-", dir="/tmp"))
    os.chmod(d, 0o755)
    server = sshlab.start(d / "sshd", SSH_PORT)
    user = None
    try:
        homes = d / "homes"
        homes.mkdir(mode=0o755)
        user = sshlab.add_user("afpub", "/bin/sh", homes, docker=True)
        (d / "known_hosts").write_text(server.known_hosts_line)
        (d / "nodes.toml").write_text(
            f'[nodes.box]\nhost = "127.0.0.1"\nport = {SSH_PORT}\nuser = "{user}"\nidentity = "{server.key}"\n'
            f'known_hosts = "{d}/known_hosts"\nengine_cli = "/usr/bin/docker"\nmax_builds = 2\n')
        yield d / "nodes.toml"
    finally:
        server.stop()
        if user:
            sshlab.remove_user(user)
        shutil.rmtree(d, ignore_errors=True)


def test_a_child_built_on_an_ssh_node_is_exported_through_its_engine_and_pushed_by_digest(lab, ssh_node, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    nonce = uuid.uuid4().hex
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nRUN echo {nonce} > /nonce\nCMD [\"uname\", \"-m\"]\n")
    repo = f"publish/{unique('ssh')}"
    meta = tmp_path / "m.json"
    proc = lab.archfleet("build", "--no-local", "--nodes", str(ssh_node), "--progress", "plain",
                         "--metadata-file", str(meta), "--platform", "linux/amd64,linux/arm64",
                         "-t", f"{lab.registry}/{repo}:1", "--push", str(ctx))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {e["node"] for e in json.loads(meta.read_text())["archfleet.platforms"].values()} == {"box"}
    assert "uploaded" in proc.stderr  # the children's own layers went up from the export
    assert tags_of(lab.registry, repo) == ["1"]
    assert lab.run_image(f"{lab.registry}/{repo}:1", "linux/arm64") == "aarch64"


def two_builds(lab, proxy: str, counts, ctx: Path, repo: str) -> list[str]:
    """Build ``ctx`` for linux/amd64 twice, pushing through the counting ``proxy`` to ``repo``:1
    and :2, each with a new NONCE build arg; the push's line of each (``pushed ... (blobs: ...)``).
    ``counts.uploaded["build N"]``: the bytes each build uploaded."""
    lines = []
    for n in (1, 2):
        before = counts.uploaded.get(repo, 0)
        proc = lab.archfleet("build", "--progress", "plain", "--platform", "linux/amd64", "--build-arg",
                             f"NONCE={uuid.uuid4().hex}", "-t", f"{proxy}/{repo}:{n}", "--push", str(ctx), check=True)
        lines.append(next(line for line in (proc.stdout + proc.stderr).splitlines() if " pushed " in line
                          and "blobs:" in line))
        counts.uploaded[f"build {n}"] = counts.uploaded.get(repo, 0) - before
    return lines


def test_a_rebuild_finds_its_cached_layer_in_the_registry_by_diff_id_and_does_not_compress_it(lab, counting_proxy,
                                                                                              tmp_path):
    """Rule (issue 17, fixed cost; dockerd's push does the same with the blobs it pushed): a layer
    of the platform's last child that BuildKit built again unchanged (a cached COPY) is found in
    the registry by its diff_id: neither compressed nor sent; only the new RUN layer is. Counted
    by the push's own line and by a proxy in front of the registry."""
    proxy, counts = counting_proxy
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "data").write_bytes(os.urandom(400000))
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nCOPY data /data\nARG NONCE\nRUN echo $NONCE > /nonce\n"
                                    "CMD [\"uname\", \"-m\"]\n")
    repo = f"publish/{unique('cached')}"
    lines = two_builds(lab, proxy, counts, ctx, repo)
    # the first: the COPY and RUN layers, and the base's (its registry is not the proxy's host)
    assert int(lines[0].rsplit("; ", 1)[1].split()[0]) >= 3, lines[0]
    assert lines[1].endswith("; 1 layer compressed)"), lines[1]  # the RUN layer: the rest found by diff_id
    assert counts.uploaded["build 1"] > 400000
    assert counts.uploaded["build 2"] < 100000  # the new RUN layer and the config, not the data


def test_the_last_platform_uploads_its_new_layer_while_the_export_is_read_once(lab, counting_proxy, tmp_path):
    """Rule (issue 17, fixed cost; Docker's own push streams compression into the upload too): a
    platform whose push gate is open when its build ends sends each new layer while the engine's
    export is read, as it is compressed: the push's line says so, the layer's bytes go up once
    (counted by a proxy in front of the registry), and the image runs. On the second build the
    layers of the last child are told apart by their prints and not sent again."""
    proxy, counts = counting_proxy
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nARG NONCE\n"
                                    "RUN echo $NONCE > /nonce && head -c 3000000 /dev/urandom > /blob\n"
                                    "CMD [\"uname\", \"-m\"]\n")
    repo = f"publish/{unique('streamed')}"
    lines = two_builds(lab, proxy, counts, ctx, repo)
    assert "sent as the export was read" in lines[0], lines[0]  # nothing known: the base's layer and mine
    assert lines[1].endswith("; 1 layer compressed, 1 sent as the export was read)"), lines[1]
    assert 3_000_000 < counts.uploaded["build 2"] < 3_300_000  # the new layer once, and the config
    assert lab.run_image(f"{proxy}/{repo}:2", "linux/amd64") == "x86_64"
