"""The SSH transport against a real sshd (a throwaway one on 127.0.0.1:2250, whose engine is this
machine's dockerd), for users whose login shell is not POSIX (fish, tcsh):

- argv and environment values reach the node byte for byte, and no shell ever runs them;
- a run that ends early (timeout, cancel, a failing callback) leaves no process on the node;
- 12 sessions at once on a node whose sshd allows 10 per connection all run;
- a node named by an ~/.ssh/config alias with its own Port: accept-new records an entry OpenSSH
  accepts, builds work over it, a changed key is refused naming the real port (case 09);
- a bare ``--build-arg NPM_TOKEN`` reaches the build on the local node and on the SSH node while
  its value never appears in any process's argv on this machine (which is also the node).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import sshlab
from conftest import missing
from labtools import sampled

PORT = 2250
FISH = "/usr/bin/fish"
TCSH = "/usr/bin/tcsh"

HOSTILE = [b"'", b"\\", b";", b"C:\\", b"; touch %(m)s-a; #", b"$(touch %(m)s-b)", b"`touch %(m)s-c`",
           b"\\'; touch %(m)s-d; echo '", b"a\nb", b"trailing\n", b"caf\xe9\xff", b"(touch %(m)s-e)",
           b"{touch,%(m)s-f}", b"!!", b"$status", b"x" * 10240, b""]
ECHO = ('for a in "$@"; do printf %s "$a" | od -An -v -tx1 | tr -d " \\n"; echo; done; '
        'printf %s "$SECRET" | od -An -v -tx1 | tr -d " \\n"; echo')


@pytest.fixture(scope="module")
def sshd():
    why = sshlab.available()
    if why:
        missing(why)
    for shell in (FISH, TCSH):
        if not os.path.exists(shell):
            missing(f"{shell} is not installed (tests/lab/bootstrap.sh installs fish and tcsh)")
    # under /tmp, world-traversable: the throwaway users' homes live here
    d = Path(tempfile.mkdtemp(prefix="archfleet-sshd-", dir="/tmp"))
    os.chmod(d, 0o755)
    server = sshlab.start(d / "sshd", PORT)
    users = []
    try:
        homes = d / "homes"
        homes.mkdir(mode=0o755)
        fish = sshlab.add_user("affish", FISH, homes, docker=True)
        users.append(fish)
        tcsh = sshlab.add_user("aftcsh", TCSH, homes)
        users.append(tcsh)
        known = d / "known_hosts"
        known.write_text(server.known_hosts_line)
        yield type("Lab", (), {"dir": d, "server": server, "fish": fish, "tcsh": tcsh, "known_hosts": known,
                               "port": PORT})()
    finally:
        server.stop()
        for u in users:
            sshlab.remove_user(u)
        shutil.rmtree(d, ignore_errors=True)


def spec(sshd, user, **kw):
    from archfleet.model import NodeSpec

    settings = {"host": "127.0.0.1", "port": sshd.port, "user": user, "identity": str(sshd.server.key),
                "known_hosts": str(sshd.known_hosts)}
    settings.update({k: kw.pop(k) for k in list(kw) if k in settings or k == "host_key_policy"})
    return NodeSpec(**{"name": "box", "transport": "ssh", "settings": settings, **kw})


async def transport(node):
    from archfleet.plugins.ssh import _connect

    return await _connect(node)


@pytest.mark.parametrize("shell", ["fish", "tcsh"])
def test_hostile_values_reach_a_non_posix_login_shell_user_byte_for_byte(sshd, shell):
    marker = f"/tmp/archfleet-pwned-{uuid.uuid4().hex[:8]}"
    values = [v.replace(b"%(m)s", marker.encode()) for v in HOSTILE]
    secret = b"tok'en\\\n$(touch " + marker.encode() + b"-g)"

    async def go():
        t = await transport(spec(sshd, getattr(sshd, shell)))
        try:
            lines = []
            done = await t.run(["/bin/sh", "-c", ECHO, "sh", *values], env={"SECRET": secret}, on_line=lines.append)
            return done, lines
        finally:
            await t.close()

    done, lines = asyncio.run(go())
    assert done.ok, done.tail
    got = [bytes.fromhex(l) for l in lines[:len(values) + 1]]
    assert got[:-1] == values
    assert got[-1] == secret
    assert not list(Path("/tmp").glob(Path(marker).name + "*"))  # nothing ran


def _running(needle: bytes) -> list[int]:
    return [pid for pid, argv in sshlab.cmdlines().items() if needle in argv.split(b"\0")]


def test_a_remote_command_ended_early_leaves_no_process_on_the_node(sshd):
    # rule: timeout, cancel or a failing on_line callback kill the remote process group
    stamps = {k: str(3000 + i) + str(uuid.uuid4().int % 1000) for i, k in enumerate(("timeout", "cancel", "raise"))}

    async def go():
        t = await transport(spec(sshd, sshd.fish))
        try:
            with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                await t.run(["sh", "-c", 'sleep "$1" & wait', "sh", stamps["timeout"]], timeout=1)
            task = asyncio.ensure_future(t.run(["sleep", stamps["cancel"]]))
            await asyncio.sleep(1)
            assert _running(stamps["cancel"].encode())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            def boom(line):
                raise RuntimeError("reporter failed")

            with pytest.raises(RuntimeError):
                await t.run(["sh", "-c", 'echo go; exec sleep "$1"', "sh", stamps["raise"]], on_line=boom)
        finally:
            await t.close()

    asyncio.run(go())
    deadline = time.time() + 5
    while time.time() < deadline and any(_running(s.encode()) for s in stamps.values()):
        time.sleep(0.1)
    assert {k: _running(s.encode()) for k, s in stamps.items()} == {k: [] for k in stamps}


def test_twelve_sessions_at_once_on_a_node_whose_sshd_allows_ten(sshd):
    # max_builds = 12 on one node: 12 sessions at once; sshd's MaxSessions is 10 per connection
    async def go():
        t = await transport(spec(sshd, sshd.fish, max_builds=12))
        try:
            started = time.monotonic()
            done = await asyncio.gather(*(t.run(["sleep", "2"]) for _ in range(12)))
            return done, time.monotonic() - started, len(t._conns), t.peak_sessions
        finally:
            await t.close()

    done, took, conns, peak = asyncio.run(go())
    assert [d.returncode for d in done] == [0] * 12
    assert peak <= 8 and conns == 2
    assert took < 2 * 2  # all at once, not in two rounds


# -- an ~/.ssh/config alias with its own Port, accept-new (case 09) -----------------------------


@pytest.fixture
def alias_home(sshd, tmp_path):
    d = Path(tempfile.mkdtemp(prefix="archfleet-alias-", dir="/tmp"))
    (d / "home" / ".ssh").mkdir(parents=True)
    (d / "home" / ".ssh" / "config").write_text(
        f"Host t2box\n    HostName 127.0.0.1\n    Port {sshd.port}\n    User {sshd.fish}\n"
        f"    IdentityFile {sshd.server.key}\n    IdentitiesOnly yes\n")
    (d / "nodes.toml").write_text(f'[nodes.box]\nhost = "t2box"\nknown_hosts = "{d}/known_hosts"\n'
                                  'host_key_policy = "accept-new"\nengine_cli = "/usr/bin/docker"\nmax_builds = 2\n')
    env = {"HOME": str(d / "home"), "XDG_CONFIG_HOME": str(d / "config"), "SSH_AUTH_SOCK": ""}
    yield d, env
    shutil.rmtree(d, ignore_errors=True)


def _ls(lab, d, env) -> dict:
    proc = lab.archfleet("ls", "--no-local", "--nodes", str(d / "nodes.toml"), "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    return next(n for n in json.loads(proc.stdout) if n["name"] == "box")


def test_alias_with_its_own_port_accept_new_build_and_changed_key(lab, sshd, alias_home):
    d, env = alias_home
    first = _ls(lab, d, env)
    assert first["reachable"] and first["builder"], first
    known = (d / "known_hosts").read_text()
    assert known == sshd.server.known_hosts_line  # [127.0.0.1]:2250 <key>: not the alias, not port 22
    # OpenSSH itself accepts the entry for the alias
    ssh = subprocess.run(["ssh", "-F", str(d / "home" / ".ssh" / "config"), "-o", f"UserKnownHostsFile={d}/known_hosts",
                          "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o",
                          "BatchMode=yes", "t2box", "true"], capture_output=True, text=True, env={**os.environ, **env},
                         timeout=30)
    assert ssh.returncode == 0, ssh.stderr
    assert _ls(lab, d, env)["reachable"] and (d / "known_hosts").read_text() == known  # no growth

    tag = f"{lab.registry}/ssh/alias:{uuid.uuid4().hex[:8]}"
    proc = lab.archfleet("build", "--no-local", "--nodes", str(d / "nodes.toml"), "--progress", "plain",
                         "--platform", "linux/amd64,linux/arm64", "--build-arg", f"BASE={lab.base}", "-t", tag,
                         "--push", "examples/arch-test", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert lab.manifest("ssh/alias", tag.rsplit(":", 1)[1]).status_code == 200

    other = sshlab._keygen(d / "other", "other")
    (d / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {other}\nt2box {other}\n")
    refused = _ls(lab, d, env)
    assert not refused["reachable"]
    err = refused["error"]
    assert f"node box at 127.0.0.1:{sshd.port}" in err and "does not match" in err and "SHA256:" in err
    assert ":22 " not in err and not err.endswith(":22")


# -- a bare --build-arg NAME: the value is in no process's argv ------------------------------------


def test_a_bare_secret_build_arg_is_in_no_argv_on_the_coordinator_or_the_node(lab, sshd, tmp_path):
    import hashlib

    secret = f"npm_{uuid.uuid4().hex}"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    # the build proves the value arrived (the hash matches) without putting it in any argv: echo
    # is a shell builtin, sha256sum reads it on stdin; the sleep gives the sampler time
    (ctx / "Dockerfile").write_text(
        f"ARG BASE\nFROM $BASE\nARG NPM_TOKEN\n"
        f'RUN test "$(printf %s "$NPM_TOKEN" | sha256sum | cut -c1-64)" = '
        f'"{hashlib.sha256(secret.encode()).hexdigest()}" && sleep 3\n')
    nodes = tmp_path / "nodes.toml"
    nodes.write_text(f'[nodes.fishbox]\nhost = "127.0.0.1"\nport = {sshd.port}\nuser = "{sshd.fish}"\n'
                     f'identity = "{sshd.server.key}"\nknown_hosts = "{sshd.known_hosts}"\n'
                     'engine_cli = "/usr/bin/docker"\n')
    needle = secret.encode()
    with sampled(lambda: [pid for pid, argv in sshlab.cmdlines().items() if needle in argv]) as samples:
        proc = lab.archfleet("build", "--nodes", str(nodes), "--progress", "plain", "--no-cache",
                             "--platform", "linux/amd64,linux/arm64", "--node", "linux/amd64=local",
                             "--node", "linux/arm64=fishbox", "--build-arg", f"BASE={lab.base}",
                             "--build-arg", "NPM_TOKEN", str(ctx), env={"NPM_TOKEN": secret})
    seen = [pid for pids in samples for pid in pids]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[linux/arm64@fishbox]" in proc.stderr and "[linux/amd64@local]" in proc.stderr
    assert "warning: --build-arg NPM_TOKEN" in proc.stderr
    # (BuildKit itself shows the RUN step with build args expanded in its progress output: that is
    # what the warning is about; the rule here is about command lines)
    assert seen == []


def test_the_bootstrap_reads_the_frame_under_busybox_sh(lab):
    # a node whose /bin/sh is busybox ash (Alpine, small boards): run by digest, so no tag in the
    # engine's image store changes
    index = lab.manifest("archfleet/busybox", "latest").json()
    digest = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    image = f"{lab.registry}/archfleet/busybox@{digest}"
    from archfleet.plugins.ssh.transport import REMOTE_COMMAND, frame

    values = [v.replace(b"%(m)s", b"/tmp/x") for v in HOSTILE]
    out = subprocess.run([lab.docker, "run", "-i", "--rm", image, "sh", "-c", REMOTE_COMMAND],
                         input=frame(["/bin/sh", "-c", ECHO, "sh", *values], {"SECRET": b"s'\\\n"}),
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = [bytes.fromhex(l) for l in out.stdout.decode().split("\n")[:len(values) + 1]]
    assert got == [*values, b"s'\\\n"]


def test_a_streamed_output_arrives_as_bytes_its_stderr_apart_and_an_abandoned_one_leaves_no_process(sshd):
    """Rule (Transport.stream, an image export over SSH): stdout arrives byte for byte (every
    byte value, through a fish login shell), stderr is the result's tail, the exit status is
    the command's; a reader that stops early (an export abandoned) leaves no process on the node."""
    from archfleet.transport import stream_output

    stamp = str(4000 + uuid.uuid4().int % 1000)
    block = bytes(range(256)) * 256 + os.urandom(777)  # its base64 fits one argv word (< 128 KiB)

    async def go():
        t = await transport(spec(sshd, sshd.fish))
        try:
            pieces = []

            async def sink(piece):
                pieces.append(piece)

            script = ('b=$(mktemp); printf %s "$1" | base64 -d > "$b"; for i in 1 2 3 4 5 6 7 8; do cat "$b"; done; '
                      'rm -f "$b"; echo "a warning" >&2; exit 4')
            done = await t.stream(["sh", "-c", script, "sh", base64.b64encode(block).decode()], sink)
            data = block * 8
            assert b"".join(pieces) == data
            assert done.returncode == 4 and done.tail == ("a warning",)
            # a consumer slower than the link (an export spooled to a slow disk) still gets
            # every byte: asyncssh's wait() once took what was buffered for its own result
            got = 0
            async for piece in stream_output(t, ["head", "-c", "5000000", "/dev/zero"]):
                got += len(piece)
                await asyncio.sleep(0.01)
            assert got == 5000000
            it = stream_output(t, ["sh", "-c", 'yes "$1"', "sh", stamp])
            async for _ in it:
                break
            await it.aclose()
        finally:
            await t.close()

    asyncio.run(go())
    deadline = time.time() + 5
    while time.time() < deadline and _running(stamp.encode()):
        time.sleep(0.1)
    assert _running(stamp.encode()) == []
