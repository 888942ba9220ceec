"""--secret and --ssh: the flags (buildx's syntax, one-line refusals that never echo a value) and
the hand-over script, run for real with this machine's sh (archfleet.secrets)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import asyncssh
import pytest

from archfleet.errors import UsageError
from archfleet.model import BuildRequest, Secret, SshAgent
from archfleet.platforms import parse as parse_platform
from archfleet.secrets import (MAX_HANDED, MAX_SECRET, check_flags, check_mounts, mounted, parse_secret, parse_ssh,
                               script_failure)
from archfleet.transport import LocalTransport

VALUE = "hunter2-value-never-shown"


def test_secret_src_env_and_buildkit_default_rule(tmp_path):
    """buildx: src=PATH or env=VAR (type=file|env too); with neither, the variable named ID when
    set, else the file named ID (BuildKit's secretsprovider rule)."""
    f = tmp_path / "npmrc"
    f.write_text(VALUE)
    assert parse_secret(f"id=npmrc,src={f}", {}) == Secret("npmrc", src=str(f))
    assert parse_secret("id=tok,env=TOKEN", {"TOKEN": VALUE}) == Secret("tok", env="TOKEN")
    assert parse_secret("type=env,id=tok,src=TOKEN", {"TOKEN": VALUE}) == Secret("tok", env="TOKEN")
    assert parse_secret("id=TOKEN", {"TOKEN": VALUE}) == Secret("TOKEN", env="TOKEN")
    os.chdir(tmp_path)
    assert parse_secret("id=npmrc", {}) == Secret("npmrc", src=str(f))


@pytest.mark.parametrize("text, env, says", [
    ("id=a,bogus=1", {}, "unknown key 'bogus'"),
    ("src=/etc/hostname", {}, "name the secret with id=ID"),
    ("id=a,env=NOPE", {}, "$NOPE is not set"),
    ("id=a,src=/no/such/file", {}, "cannot read '/no/such/file'"),
    ("id=a,src=/etc", {}, "is a directory"),
    ("id=a b,env=X", {"X": VALUE}, "must be letters"),
    ("id=a,env=BIG", {"BIG": "x" * (MAX_SECRET + 1)}, "500 KiB"),
])
def test_bad_secret_flags_are_one_line_without_the_value(text, env, says):
    with pytest.raises(UsageError) as exc:
        parse_secret(text, env)
    msg = str(exc.value)
    assert says in msg and "\n" not in msg and VALUE not in msg and "xxxx" not in msg


def test_duplicate_ids_and_too_many_values_are_refused():
    """check_flags: an id given twice; more than MAX_HANDED values (descriptors 3..9)."""
    s = [Secret("a", env="X"), Secret("a", env="Y")]
    assert check_flags(s, []) == ["--secret id=a: given twice; give each id once"]
    many = [Secret(f"s{i}", env="X") for i in range(MAX_HANDED + 1)]
    assert "at most 7" in check_flags(many, [])[0]


def test_ssh_default_is_the_agent_and_paths_are_keys_or_one_socket(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    sock_path = tmp_path / "agent.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        assert parse_ssh("default", {"SSH_AUTH_SOCK": str(sock_path)}) == SshAgent("default", (str(sock_path),), True)
        assert parse_ssh(f"git={key}", {}) == SshAgent("git", (str(key),), False)
        with pytest.raises(UsageError, match=r"SSH_AUTH_SOCK is not set"):
            parse_ssh("default", {})
        with pytest.raises(UsageError, match="an agent socket is given alone"):
            parse_ssh(f"x={sock_path},{key}", {})
    finally:
        sock.close()


def _request(tmp_path: Path, dockerfile: str, **kw) -> BuildRequest:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    return BuildRequest(context=tmp_path, dockerfile=tmp_path / "Dockerfile",
                        platforms=(parse_platform("linux/amd64"),), **kw)


def test_a_required_mount_without_its_flag_is_refused_an_optional_one_is_not(tmp_path):
    """BuildKit: a secret/ssh mount with required=true fails the step when not given; without
    required it mounts nothing. archfleet refuses the first before building, not the second."""
    df = ("FROM scratch\nRUN --mount=type=secret,id=npmrc,required=true true\n"
          "RUN --mount=type=secret,id=opt true\nRUN --mount=type=ssh,required true\n")
    problems = check_mounts(_request(tmp_path, df))
    assert len(problems) == 2
    assert "Dockerfile:2" in problems[0] and "secret 'npmrc' is required" in problems[0]
    assert "Dockerfile:4" in problems[1] and "add --ssh default" in problems[1]
    given = _request(tmp_path, df, secrets=(Secret("npmrc", env="X"),), ssh=(SshAgent("default", ("/s",), True),))
    assert check_mounts(given) == []


def _run_mounted(request, argv, env=None):
    async def go():
        transport = LocalTransport()
        lines: list[str] = []
        async with mounted(transport, request, local=False) as m:
            assert VALUE.encode() not in repr(m).encode()  # the values never show in a repr
            done = await transport.run(m.argv(argv), env=env, stdin=m.stdin, on_line=lines.append)
        return m, done, lines
    return asyncio.run(go())


def test_values_reach_the_cli_only_as_descriptors_of_a_removed_tmpfs_file(tmp_path, monkeypatch):
    """secrets.MOUNT_SCRIPT: each value is read by the CLI from /dev/fd/N (N from 3), mode 0600,
    while its directory on the tmpfs is already gone; nothing is left there; no value is in argv."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("TOKEN2", VALUE + "-env")
    src = tmp_path / "tok"
    src.write_bytes(VALUE.encode() + b"\n\x00binary")
    request = BuildRequest(context=tmp_path, dockerfile=tmp_path / "Dockerfile", platforms=(),
                           secrets=(Secret("a", src=str(src)), Secret("b", env="TOKEN2")))
    probe = ('for f in /dev/fd/3 /dev/fd/4; do stat -L -c %a "$f"; od -An -c "$f" | tr -d " \\n"; echo; done; '
             'ls -A "$XDG_RUNTIME_DIR" | wc -l')
    m, done, lines = _run_mounted(request, ["sh", "-c", probe])
    assert done.ok, lines
    assert m.flags == ("--secret", "id=a,src=/dev/fd/3", "--secret", "id=b,src=/dev/fd/4")
    assert lines[0] == "600" and lines[2] == "600"
    assert lines[1] == "hunter2-value-never-shown\\n\\0binary"
    assert lines[3] == "hunter2-value-never-shown-env"
    assert lines[4] == "0"  # the directory was removed before the CLI started
    assert list(runtime.iterdir()) == []
    assert all(VALUE not in word for word in m.argv(["x"]))


def test_a_failing_cli_leaves_nothing_and_a_cut_stream_is_the_nodes_failure(tmp_path, monkeypatch):
    """The CLI failing leaves no file; a value stream cut short stops before the CLI, exit 125
    with its own line (secrets.script_failure: the node's failure, re-planned)."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("TOKEN", VALUE)
    request = BuildRequest(context=tmp_path, dockerfile=tmp_path / "Dockerfile", platforms=(),
                           secrets=(Secret("a", env="TOKEN"),))
    _, done, _ = _run_mounted(request, ["sh", "-c", "exit 3"])
    assert done.returncode == 3 and script_failure(done) is None and list(runtime.iterdir()) == []

    async def cut():
        t = LocalTransport()
        async with mounted(t, request, local=False) as m:
            return await t.run(m.argv(["true"]), stdin=m.stdin[:5])
    done = asyncio.run(cut())
    assert done.returncode == 125 and script_failure(done) == "the build's secrets were cut short"
    assert list(runtime.iterdir()) == []


def test_on_this_machine_a_src_secret_and_ssh_paths_go_to_the_cli_as_given(tmp_path):
    """The local node's CLI reads the user's own files and agent: no wrapper, no stdin."""
    request = BuildRequest(context=tmp_path, dockerfile=tmp_path / "Dockerfile", platforms=(),
                           secrets=(Secret("a", src="/home/u/.npmrc"),), ssh=(SshAgent("default", ("/run/a.sock",), True),))

    async def go():
        async with mounted(LocalTransport(), request, local=True) as m:
            return m
    m = asyncio.run(go())
    assert m.flags == ("--secret", "id=a,src=/home/u/.npmrc", "--ssh", "default=/run/a.sock")
    assert m.wrapper == () and m.stdin is None


def test_a_script_stopped_while_it_takes_the_values_removes_its_directory(tmp_path):
    """Cancelled before the CLI starts (SIGTERM to its process group, as the transports cancel a
    command, while a value is still arriving): the trap removes the private directory and its
    partial file; exit 143. (A dropped connection ends stdin instead: the cut-short case.)"""
    import signal
    import subprocess
    import time

    from archfleet.secrets import MOUNT_SCRIPT

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = subprocess.Popen(["sh", "-c", MOUNT_SCRIPT, "sh", "1", "true"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={"PATH": os.environ["PATH"], "XDG_RUNTIME_DIR": str(runtime)},
                            start_new_session=True)
    proc.stdin.write(b"100\nhalf-a-val")
    proc.stdin.flush()
    for _ in range(200):
        made = list(runtime.glob("archfleet-secrets.*"))
        if made and list(made[0].iterdir()):
            break
        time.sleep(0.01)
    assert made and oct(made[0].stat().st_mode & 0o777) == "0o700"
    assert oct(next(made[0].iterdir()).stat().st_mode & 0o777) == "0o600"
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 143
    proc.stdin.close()
    assert list(runtime.iterdir()) == []


def test_a_secret_source_that_is_not_a_regular_file_is_refused_before_building(tmp_path):
    """A pipe (src=/dev/stdin, src=<(cmd)) or a device can be read once, and each platform's
    build reads the secret: exit 2 before building, saying what to do instead."""
    os.mkfifo(tmp_path / "fifo")
    for src in (str(tmp_path / "fifo"), "/dev/null"):
        with pytest.raises(UsageError, match=r"^--secret id=tok: .* is not a regular file .*use env=VAR$"):
            parse_secret(f"id=tok,src={src}", {})


def test_an_ssh_key_file_must_be_a_private_key_without_a_passphrase(tmp_path):
    """BuildKit loads --ssh key files without a passphrase: a .pub, any other file, or an
    encrypted key is refused before building, naming the fix."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "pub").write_bytes(key.export_public_key())
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(tmp_path / "locked")], check=True)
    with pytest.raises(UsageError, match=r"^--ssh k: '.*pub' is not a private key \(give the key file"):
        parse_ssh(f"k={tmp_path / 'pub'}", {})
    with pytest.raises(UsageError, match=r"^--ssh k: '.*locked' is passphrase-protected.*--ssh default$"):
        parse_ssh(f"k={tmp_path / 'locked'}", {})


def test_a_local_secret_path_a_cli_would_split_is_handed_over_as_a_value(tmp_path):
    """docker reads --secret's fields as CSV and podman splits them on commas: a src path with a
    comma or a quote is never named to the CLI; its value goes over a descriptor instead."""
    src = tmp_path / "we,ird name"
    src.write_text("v")
    plain = tmp_path / "plain"
    plain.write_text("v")
    request = _request(tmp_path, "FROM x\n", secrets=(parse_secret(f'id=a,"src={src}"', {}),
                                                     parse_secret(f"id=b,src={plain}", {})))

    async def go():
        async with mounted(LocalTransport(), request, local=True) as m:
            return m
    m = asyncio.run(go())
    assert m.flags[:2] == ("--secret", "id=a,src=/dev/fd/3") and m.flags[2:] == ("--secret", f"id=b,src={plain}")
    assert m.wrapper and m.stdin is not None


def test_an_ssh_value_without_an_id_says_to_name_one():
    for text in ("", "=/tmp/key"):
        with pytest.raises(UsageError, match=r"^--ssh '.*': name an id: default, ID .* or ID=PATH$"):
            parse_ssh(text, {})
