"""The podman adapter (archfleet.podman): its build argv, how a failed build or push is typed
(from the exit path, ``podman info`` and podman's own last line, never from the build's output),
how credentials reach podman (stdin -> an auth file unlinked before podman starts, read through
fd 3), and what the probe reads. The podman lines below are what podman 4.3.1 printed on this
machine; the push and export scripts run for real, with a stand-in podman."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import tarfile

import pytest

from archfleet import podman
from archfleet.errors import BuildFailed, InfrastructureError, RegistryError, RegistryRefused
from archfleet.model import NodeFacts, NodeSpec
from archfleet.reference import parse_reference
from archfleet.transport import Completed, LocalTransport

from stubs import ARM, request

FACTS = NodeFacts(NodeSpec("n4", transport="stub", engine="podman"), True, engine_cli=("podman",), builder="buildah",
                  engine_version="4.3.1")

# podman 4.3.1 here, `RUN echo "Connection refused"; echo "no space left on device"; exit 3`
RUN_FAILED = ('STEP 2/2: RUN echo "Connection refused"; echo "no space left on device"; exit 3',
              "Connection refused",
              "no space left on device",
              'Error: building at STEP "RUN echo "Connection refused"; echo "no space left on device"; exit 3": '
              "while running runtime: exit status 3")
# podman 4.3.1 here, pulling the base into a store on a full file system
STORE_FULL = ("Copying blob sha256:7d84f4a8ca42ae9f0fa054e2c93893a06378d892152fcccb4ff453418adbc604",
              'time="2026-11-29T14:57:13Z" level=error msg="While applying layer: ApplyLayer stdout:  stderr: write '
              '/bin/busybox: no space left on device exit status 1"',
              "Error: creating build container: copying system image from manifest list: writing blob: adding layer "
              'with blob "sha256:7d84f4a8ca42ae9f0fa054e2c93893a06378d892152fcccb4ff453418adbc604": ApplyLayer '
              "stdout:  stderr: write /bin/busybox: no space left on device exit status 1")
# podman 4.3.1 here, a heredoc (it reads the heredoc's first line as an instruction)
UNKNOWN = ("STEP 3/4: echo heredoc",
           'time="2026-11-29T14:35:55Z" level=error msg="+(UNHANDLED LOGLEVEL) &imagebuilder.Step{...}"',
           'Error: building at STEP "ECHO ": Build error: Unknown instruction: "ECHO" &imagebuilder.Step{...}')


class Podman:
    """A transport playing a podman node: each build run prints ``lines`` and exits ``rc``;
    ``podman info`` answers while ``alive``. Records every argv, environment and stdin."""

    def __init__(self, lines=(), rc=0, alive=True, node="n4"):
        self.node, self.lines, self.rc, self.alive = node, tuple(lines), rc, alive
        self.runs: list[tuple[tuple[str, ...], dict, bytes | None]] = []

    async def run(self, argv, *, env=None, stdin=None, on_line=None, timeout=None):
        self.runs.append((tuple(argv), dict(env or {}), stdin))
        if list(argv[-3:-1]) == ["info", "--format"]:
            return Completed(tuple(argv), 0 if self.alive else 125, ("amd64",) if self.alive else ("Error: gone",))
        for line in self.lines:
            if on_line:
                on_line(line)
        return Completed(tuple(argv), self.rc, self.lines[-40:])


def build(transport, **kw):
    return asyncio.run(podman.PODMAN.build(transport, FACTS, platform=ARM, request=request(ARM, **kw),
                                           tag="reg/app:1-linux-arm64"))


# -- the build ------------------------------------------------------------------------------------

def test_build_argv_is_podman_build_in_docker_format_for_the_platform_pulling_always():
    argv, env = podman.build_argv(("podman",), platform=ARM, dockerfile="/c/Dockerfile", context="/c", tag="r/a:1",
                                  build_args=[("A", "1")], labels=[("l", "v")], target="final", no_cache=True)
    assert argv == ["podman", "build", "--format", "docker", "--platform", "linux/arm64", "-f", "/c/Dockerfile",
                    "-t", "r/a:1", "--build-arg", "A=1", "--label", "l=v", "--target", "final", "--no-cache",
                    "--pull=always", "/c"]
    assert env == {}


def test_no_pull_uses_what_the_store_has_like_docker_build_without_pull():
    argv, _ = podman.build_argv(("podman",), platform=ARM, dockerfile="D", context="c", tag="", pull=False)
    assert "--pull=missing" in argv and "--pull=always" not in argv and "-t" not in argv


def test_a_build_arg_from_the_environment_reaches_podman_in_its_environment_never_argv():
    # cli.md: a bare --build-arg NAME takes its value from the environment and reaches the engine
    # CLI in its environment, never on a command line (podman reads bare names from it, as docker)
    argv, env = podman.build_argv(("podman",), platform=ARM, dockerfile="D", context="c", tag="t",
                                  build_args=[("NPM_TOKEN", "s3cret"), ("V", "1")], env_build_args=["NPM_TOKEN"])
    assert env == {"NPM_TOKEN": "s3cret"}
    assert "NPM_TOKEN" in argv and not any("s3cret" in a for a in argv) and "V=1" in argv


def test_a_successful_build_returns_podmans_last_line_as_the_image_id():
    ident = "94c262074d56d6d6b1601c466d611a812f72109c27017a796c4ace80047522cd"
    t = Podman(["STEP 1/1: FROM x", "COMMIT reg/app:1-linux-arm64", "--> 94c262074d5",
                "Successfully tagged reg/app:1-linux-arm64", ident])
    assert build(t) == f"sha256:{ident}"
    (argv, env, _), = t.runs
    assert argv[:2] == ("podman", "build") and argv[argv.index("--platform") + 1] == "linux/arm64"


def test_a_run_step_that_exits_non_zero_is_the_builds_failure_whatever_it_printed():
    err = pytest.raises(BuildFailed, build, Podman(RUN_FAILED, rc=3)).value
    assert err.retry_elsewhere is False
    assert str(err).endswith("while running runtime: exit status 3") and "Error:" not in str(err)


def test_a_full_store_is_the_nodes_failure():
    # podman's own line ends "<errno text> exit status 1": the storage helper's exit is appended
    err = pytest.raises(InfrastructureError, build, Podman(STORE_FULL, rc=125)).value
    assert err.retry_elsewhere is True and err.node == "n4"
    assert "node out of resources" in str(err) and "no space left on device" in str(err)


def test_an_unknown_instruction_is_the_builds_failure_and_the_log_line_after_it_is_not_read():
    err = pytest.raises(BuildFailed, build, Podman(UNKNOWN + ('WARN[0001] cleanup: something',), rc=125)).value
    assert 'Unknown instruction: "ECHO"' in str(err)


def test_a_podman_that_no_longer_answers_info_is_the_nodes_failure():
    err = pytest.raises(InfrastructureError, build, Podman(UNKNOWN, rc=125, alive=False)).value
    assert "podman does not answer any more" in str(err)


@pytest.mark.parametrize("rc,line", [(127, "podman: command not found"), (-9, "")])
def test_a_cli_that_cannot_start_or_is_killed_is_the_nodes_failure(rc, line):
    with pytest.raises(InfrastructureError):
        build(Podman([line], rc=rc))


# -- the push -------------------------------------------------------------------------------------

REF = parse_reference("10.231.0.1:5000/engines/app:1-linux-arm64")
DIGEST = "sha256:" + "9a" * 32


def push(transport, auth=None):
    return asyncio.run(podman.PODMAN.push(transport, FACTS, REF, auth))


def test_credentials_travel_on_stdin_only():
    # nodes.md: never on a command line or in the environment
    t = Podman([f"archfleet-digest={DIGEST}"])
    assert push(t, {"username": "alice", "password": "s3cret", "serveraddress": "10.231.0.1:5000"}) == DIGEST
    (argv, env, stdin), = t.runs
    assert argv[:3] == ("sh", "-c", podman.PUSH_SCRIPT)
    assert argv[3:] == ("sh", str(REF), f"docker://{REF}", "podman")
    assert not any("s3cret" in a or "alice" in a for a in argv) and env == {}
    assert json.loads(stdin) == {"auths": {"10.231.0.1:5000": {"auth": base64.b64encode(b"alice:s3cret").decode()}}}


def test_without_credentials_podman_gets_an_empty_auth_file_not_the_node_users_own():
    t = Podman([f"archfleet-digest={DIGEST}"])
    push(t)
    assert json.loads(t.runs[0][2]) == {"auths": {}}


def test_docker_hub_credentials_are_filed_under_docker_io_and_tokens_as_identity_tokens():
    doc = json.loads(podman.auth_file("registry-1.docker.io", {"identitytoken": "tok", "serveraddress": "x"}))
    assert doc == {"auths": {"docker.io": {"identitytoken": "tok"}}}


@pytest.mark.parametrize("line,kind,status", [
    # containers/image renders the registry's error code as dockerd does, after its own context
    ("Error: writing blob: initiating layer upload to /v2/engines/app/blobs/uploads/ in 10.231.0.1:5000: "
     "unauthorized: authentication required", RegistryRefused, None),
    ("Error: writing blob: initiating layer upload to /v2/engines/app/blobs/uploads/ in 10.231.0.1:5000: "
     "denied: requested access to the resource is denied", RegistryRefused, None),
    ("Error: writing manifest: uploading manifest 1-linux-arm64 to 10.231.0.1:5000/engines/app: "
     "toomanyrequests: slow down", RegistryRefused, None),
    ("Error: writing manifest: uploading manifest 1-linux-arm64 to 10.231.0.1:5000/engines/app: "
     "manifest invalid: manifest invalid", RegistryError, None),
    ("Error: trying to reuse blob sha256:fc at destination: received unexpected HTTP status: 500 Internal Server "
     "Error", RegistryError, 500),
])
def test_a_refused_push_is_typed_by_the_registrys_answer(line, kind, status):
    err = pytest.raises(kind, push, Podman([line], rc=125)).value
    assert type(err) is kind and err.retry_elsewhere is False and err.status == status


def test_a_registry_speaking_plain_http_says_where_to_list_it():
    line = ('Error: trying to reuse blob sha256:fc at destination: pinging container registry 10.231.0.1:5000: '
            'Get "https://10.231.0.1:5000/v2/": http: server gave HTTP response to HTTPS client')
    err = pytest.raises(RegistryError, push, Podman([line], rc=125)).value
    assert "registries.conf with insecure = true" in str(err)


def test_a_push_whose_podman_is_gone_is_the_nodes_failure():
    with pytest.raises(InfrastructureError):
        push(Podman(["Error: something broke"], rc=125, alive=False))
    with pytest.raises(InfrastructureError):
        push(Podman(["killed"], rc=-9))


STAND_IN = r"""#!/bin/sh
# a stand-in podman: records how it was called and what it could read, writes the digest file
out=$ARCHFLEET_TEST_OUT
printf '%s\n' "$@" > "$out/argv"
env > "$out/env"
while [ $# -gt 0 ]; do
  case $1 in
    --authfile) shift; cat "$1" > "$out/auth-read"; ls -l /proc/$$/fd/3 > "$out/fd3" 2>&1 ;;
    --digestfile) shift; printf 'sha256:%s' "$DIGEST_HEX" > "$1"; echo "$1" > "$out/digestfile" ;;
  esac
  shift
done
echo "Writing manifest to image destination"
"""


def test_the_push_script_hands_podman_credentials_only_through_an_unlinked_file(tmp_path, monkeypatch):
    """The real script on this machine with a stand-in podman: podman reads the credentials
    through /dev/fd/3, whose file is already deleted, and nothing of them is left on disk."""
    fake = tmp_path / "podman"
    fake.write_text(STAND_IN)
    fake.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("ARCHFLEET_TEST_OUT", str(out))
    monkeypatch.setenv("DIGEST_HEX", "9a" * 32)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    facts = NodeFacts(NodeSpec("local", engine="podman"), True, engine_cli=(str(fake),), builder="buildah")
    lines: list[str] = []
    digest = asyncio.run(podman.PODMAN.push(LocalTransport(), facts, REF,
                                            {"username": "alice", "password": "s3cret"}, on_line=lines.append))
    assert digest == DIGEST
    assert lines == ["Writing manifest to image destination"]  # the digest line is archfleet's, not shown
    assert json.loads((out / "auth-read").read_text())["auths"]["10.231.0.1:5000"]["auth"] == \
        base64.b64encode(b"alice:s3cret").decode()
    assert "(deleted)" in (out / "fd3").read_text()  # read through fd 3, the file already unlinked
    argv = (out / "argv").read_text().split("\n")
    assert argv[:7] == ["push", "--format", "v2s2", "--authfile", "/dev/fd/3", "--digestfile",
                        (out / "digestfile").read_text().strip()]
    assert not any("s3cret" in a for a in argv) and "s3cret" not in (out / "env").read_text()
    # the private directory was on the runtime dir (a tmpfs on a real node) and is gone
    assert (out / "digestfile").read_text().startswith(str(runtime) + "/archfleet-push.")
    assert list(runtime.iterdir()) == []


# -- export, inspect, probe -----------------------------------------------------------------------

def _archive(tmp_path) -> bytes:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = os.urandom(3 << 20)  # several base64 lines and more than one chunk
        info = tarfile.TarInfo("layer.tar")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "image.tar").write_bytes(archive.getvalue())
    return archive.getvalue()


class _LinesOnly:
    """A transport with ``run`` only (no ``stream``), as a third-party plugin's may be."""

    node = "local"

    def __init__(self):
        self._inner = LocalTransport()

    async def run(self, argv, **kw):
        return await self._inner.run(argv, **kw)


# podman save as the node runs it: through Transport.stream, to stdout; through a transport of
# lines only, into a file that the fixed script then sends base64
_SAVE_TO_STDOUT = ('# podman save --format docker-archive -q IMAGE\n'
                   '[ "$1 $2 $3 $4 $5" = "save --format docker-archive -q reg/app:1" ] || exit 9\n'
                   'echo "WARN[0000] a warning podman prints" >&2\ncat "$ARCHIVE"\n')
_SAVE_TO_FILE = ('# podman save --format docker-archive -o FILE IMAGE\n'
                 '[ "$1 $2 $3" = "save --format docker-archive" ] && [ "$6" = "reg/app:1" ] || exit 9\n'
                 'echo "WARN[0000] a warning podman prints" >&2\ncp "$ARCHIVE" "$5"\n')


@pytest.mark.parametrize("transport, script", [(LocalTransport, _SAVE_TO_STDOUT), (_LinesOnly, _SAVE_TO_FILE)],
                         ids=["stream", "lines-only"])
def test_export_brings_podman_saves_archive_back_byte_for_byte_its_messages_apart(tmp_path, transport, script):
    """Rule: the archive travels as bytes through Transport.stream (podman save to stdout); a
    transport without ``stream`` still exports (saved on the node, sent base64, decoded here).
    Either way what podman says on stderr is not part of it."""
    archive = _archive(tmp_path)
    fake = tmp_path / "podman"
    fake.write_text(f'#!/bin/sh\nARCHIVE="{tmp_path}/image.tar"\n' + script)
    fake.chmod(0o755)
    facts = NodeFacts(NodeSpec("local", engine="podman"), True, engine_cli=(str(fake),), builder="buildah")

    async def read():
        return [chunk async for chunk in podman.PODMAN.export(transport(), facts, "reg/app:1")]

    chunks = asyncio.run(read())
    assert b"".join(chunks) == archive and len(chunks) > 1


@pytest.mark.parametrize("transport", [LocalTransport, _LinesOnly])
def test_export_of_an_image_podman_cannot_save_is_the_nodes_failure(tmp_path, transport):
    fake = tmp_path / "podman"
    fake.write_text('#!/bin/sh\necho "Error: nosuch: image not known" >&2\nexit 125\n')
    fake.chmod(0o755)
    facts = NodeFacts(NodeSpec("local", engine="podman"), True, engine_cli=(str(fake),), builder="buildah")

    async def read():
        return [chunk async for chunk in podman.PODMAN.export(transport(), facts, "nosuch")]

    assert "image not known" in str(pytest.raises(InfrastructureError, asyncio.run, read()).value)


def test_inspect_gives_the_id_with_its_algorithm_and_the_platform():
    doc = [{"Id": "7f422744b4ced695000f2b10b160cab40ea2b84f9663c02683bb10d0affbf4c7", "Os": "linux",
            "Architecture": "arm64"}]
    t = Podman(json.dumps(doc, indent=2).splitlines())
    info = asyncio.run(podman.PODMAN.inspect(t, FACTS, "reg/app:1"))
    assert (info.id, info.os, info.architecture, info.variant) == (
        "sha256:7f422744b4ced695000f2b10b160cab40ea2b84f9663c02683bb10d0affbf4c7", "linux", "arm64", "")


# podman 4.3.1's `podman build --help`, the lines that name the four flags (and some others)
HELP_4_3 = ("      --cache-from string     remote repository to utilise as potential cache source.",
            "      --cache-to string       remote repository to utilise as potential cache destination.",
            "  -o, --output string         output destination (format: type=local,dest=path)",
            "      --secret stringArray    secret file to expose to the build",
            "      --ssh stringArray       SSH agent socket or keys to expose to the build. (format: default|<id>)",
            "      --tls-verify            require HTTPS and verify certificates when accessing the registry")


def test_capabilities_are_the_flags_podman_build_lists_and_heredocs_from_podman_5():
    """podman.capabilities: what `podman build --help` lists; never a BuildKit cache export
    (buildah's --cache-to is its own format, archfleet.buildcache)."""
    caps = podman.capabilities(HELP_4_3, "4.3.1")
    assert caps.names() == ("secrets", "ssh", "outputs", "link_wildcards")
    assert podman.capabilities(HELP_4_3, "5.0.0").heredocs is True
    assert podman.capabilities(HELP_4_3[3:4], "4.3.1").names() == ("secrets", "link_wildcards")  # only what it lists


def test_discovery_takes_the_first_cli_that_is_podman():
    class T:
        node = "n4"

        async def run(self, argv, **kw):
            answers = {"docker": (0, "Docker version 20.10.24+dfsg1, build 297e128"),
                       "/usr/bin/podman": (0, "podman version 4.3.1"), "podman": (127, "podman: not found")}
            rc, line = answers[argv[0]]
            return Completed(tuple(argv), rc, (line,))

    cli, reasons = asyncio.run(podman.discover_cli(T(), ["docker", "podman", "/usr/bin/podman"]))
    assert (cli.argv, cli.mode, cli.version) == (("/usr/bin/podman",), "buildah", "4.3.1")
    assert reasons == ["docker: not podman (Docker version 20.10.24+dfsg1, build 297e128)", "podman: podman: not found"]


def test_the_probe_reads_version_rootless_and_capabilities_from_podman():
    class T:
        node = "n4"

        async def run(self, argv, *, on_line=None, **kw):
            if argv[1:] == ["--version"]:
                out = ("podman version 4.3.1",)
            elif argv[1] == "info":
                out = ('time="x" level=warning msg="\\"/\\" is not a shared mount"',
                       "version=4.3.1 rootless=true driver=overlay")
            else:
                out = HELP_4_3
            for line in out:
                if on_line:
                    on_line(line)
            return Completed(tuple(argv), 0, out)

    found = asyncio.run(podman.PODMAN.probe(T(), FACTS.node, ["podman"]))
    assert (found.answered, found.version, found.rootless, found.cli.mode) == (True, "4.3.1", True, "buildah")
    assert found.capabilities.names() == ("secrets", "ssh", "outputs", "link_wildcards")
