"""``archfleet doctor`` (cli.md): checks the local engine and an engine CLI with BuildKit, each
``--registry`` (reachable, credentials accepted for push, plain HTTP only where allowed) and
every node (SSH, host key, engine, builder, clock skew); one line per check, ``ok``, ``warn``
or ``FAIL``, each problem with what to do; exit 3 if any check failed.

The probe, the engine and the registry are stubs (pipeline.probe answers with facts the test
gives; the registry is tests/unit/fakeregistry.py), so each check's verdict and advice is
pinned without the lab. The binfmt checks have their own tests in test_binfmt.py."""

from __future__ import annotations

import asyncio
import base64
import ssl

import httpx
import pytest

from archfleet import cli, doctor, pipeline
from archfleet.api import hookimpl
from archfleet.inventory import Config
from archfleet.manager import make_hooks
from archfleet.session import Session
from archfleet.model import NodeFacts, NodeSpec
from archfleet.registry import RegistryClient
from archfleet.transport import Completed

from fakeregistry import FakeRegistry
from stubs import AMD, ARM

HOST = "registry.test"
GOOD = {"auths": {HOST: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}
WRONG = {"auths": {HOST: {"auth": base64.b64encode(b"alice:guess").decode()}}}


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    async def no_sleep(seconds):
        return None
    monkeypatch.setattr("archfleet.registry.sleep", no_sleep)


def registry(monkeypatch, handler, docker_config=GOOD):
    """doctor's registry client, answered by ``handler`` (an httpx handler)."""
    monkeypatch.setattr(doctor, "RegistryClient", lambda insecure: RegistryClient(
        insecure, transport=httpx.MockTransport(handler), docker_config=docker_config))


def check_registry(host, insecure=()):
    return asyncio.run(doctor.check_registry(host, tuple(insecure)))


# -- registries -----------------------------------------------------------------------------------

def test_a_registry_that_accepts_a_push_is_ok(monkeypatch):
    fake = FakeRegistry(HOST)
    registry(monkeypatch, fake)
    (check,) = check_registry(HOST)
    assert check.line() == f"ok    registry {HOST}: reachable over HTTPS; credentials accepted for push"
    assert any(r.method == "POST" and "/blobs/uploads/" in r.url.path for r in fake.requests)  # push rights tried


def test_refused_credentials_fail_saying_how_to_log_in(monkeypatch):
    registry(monkeypatch, FakeRegistry(HOST), docker_config=WRONG)
    (check,) = check_registry(HOST)
    assert check.status == "FAIL" and check.what == f"registry {HOST}"
    assert check.message == f"refused the credentials from the Docker config; run `docker login {HOST}`"
    assert check.fix == f"run `docker login {HOST}` with an account that may push there"


def unreachable(request):
    raise httpx.ConnectError("[Errno 111] Connection refused")


def test_an_unreachable_registry_fails_saying_what_to_check(monkeypatch):
    registry(monkeypatch, unreachable)
    (check,) = check_registry(HOST)
    assert check.status == "FAIL" and "unreachable" in check.message
    assert check.fix == (f"start the registry at {HOST}, or check the address and firewall; "
                         f"if it speaks plain HTTP, pass --insecure-registry {HOST}")


def test_an_unreachable_registry_that_may_speak_http_is_not_told_to_use_the_flag(monkeypatch):
    registry(monkeypatch, unreachable)
    (check,) = check_registry("127.0.0.1:5999")
    assert check.status == "FAIL" and check.fix == "start the registry at 127.0.0.1:5999, or check the address and firewall"


def plain_http(fake):
    """A registry that does not speak TLS: an https request fails in the TLS handshake."""
    def handler(request):
        if request.url.scheme == "https":
            raise httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER]") from ssl.SSLError(1, "WRONG_VERSION_NUMBER")
        return fake(request)
    return handler


@pytest.mark.parametrize("host,insecure", [("127.0.0.1:5999", ()), ("reg.lan:5000", ("reg.lan:5000",))])
def test_plain_http_is_ok_for_loopback_and_insecure_registries(monkeypatch, host, insecure):
    config = {"auths": {host: GOOD["auths"][HOST]}}
    fake = FakeRegistry(host, realm=f"http://{host}/token")
    registry(monkeypatch, plain_http(fake), docker_config=config)
    (check,) = check_registry(host, insecure)
    assert check.line() == (f"ok    registry {host}: reachable over plain HTTP (loopback or --insecure-registry); "
                            "credentials accepted for push")


def test_a_plain_http_registry_not_named_insecure_fails_saying_which_flag(monkeypatch):
    fake = FakeRegistry("reg.lan:5000", realm="http://reg.lan:5000/token")
    registry(monkeypatch, plain_http(fake), docker_config={"auths": {"reg.lan:5000": GOOD["auths"][HOST]}})
    (check,) = check_registry("reg.lan:5000")
    assert check.status == "FAIL"
    assert check.message == ("does not speak HTTPS (WRONG_VERSION_NUMBER); if it is a plain-HTTP registry you trust, "
                             "allow it with --insecure-registry reg.lan:5000")


# -- the local engine ---------------------------------------------------------------------------

LOCAL = NodeSpec("local", source="this machine")


@pytest.mark.parametrize("facts,expected", [
    (NodeFacts(LOCAL, True, engine_version="20.10.24+dfsg1", builder="buildkit", engine_cli=["/usr/bin/docker"]),
     ["ok    local engine: docker 20.10.24+dfsg1 answers", "ok    engine CLI: /usr/bin/docker (buildkit)"]),
    # what the probe says when the CLI's daemon does not answer (a DOCKER_CONTEXT or DOCKER_HOST
    # naming a dead socket): the daemon builds would use, not docker-py's default one
    (NodeFacts(LOCAL, False, error="no Docker engine answers (Cannot connect to the Docker daemon at "
                                   "unix:///x.sock. Is the docker daemon running?)",
               fix="start dockerd, or point DOCKER_HOST or the CLI's docker context at one (docker_host in nodes.toml)"),
     ["FAIL  local engine: no Docker engine answers (Cannot connect to the Docker daemon at unix:///x.sock. Is the "
      "docker daemon running?) -> start dockerd, or point DOCKER_HOST or the CLI's docker context at one (docker_host "
      "in nodes.toml)"]),
    (NodeFacts(LOCAL, True, engine_version="20.10.24+dfsg1",
               error="no engine CLI with BuildKit: /usr/local/bin/docker: version 28.2 has no buildx plugin and no "
                     "built-in BuildKit"),
     ["ok    local engine: docker 20.10.24+dfsg1 answers",
      "FAIL  engine CLI: no engine CLI with BuildKit: /usr/local/bin/docker: version 28.2 has no buildx plugin and "
      "no built-in BuildKit -> install the buildx plugin, or name a Docker < 23 client with --engine-cli (Debian's "
      "docker.io gives /usr/bin/docker)"]),
    # the CLI itself failed (DOCKER_CONTEXT naming no context): nothing was asked of the engine
    # (it said "ok local engine: docker ? answers")
    (NodeFacts(LOCAL, True, error="no engine CLI with BuildKit: docker: context \"nosuchctx\" does not exist"),
     ["FAIL  engine CLI: no engine CLI with BuildKit: docker: context \"nosuchctx\" does not exist -> install the "
      "buildx plugin, or name a Docker < 23 client with --engine-cli (Debian's docker.io gives /usr/bin/docker)"]),
])
def test_the_local_engine_and_its_cli_are_what_the_probe_found(facts, expected):
    """Rule: doctor's local checks are the probe's facts (the CLI's own `docker info`), so doctor
    passes only where build can build (it asked docker-py's default daemon, and said ok under a
    DOCKER_CONTEXT naming a dead one while build failed)."""
    assert [c.line() for c in doctor.check_local_engine(facts)] == expected


# -- nodes ----------------------------------------------------------------------------------------

def spec(name, **kw):
    return NodeSpec(name, transport="stub", settings={"host": f"{name}.lan", "user": "builder"},
                    source="nodes.toml:3", **kw)


def reachable(name, **kw):
    return NodeFacts(spec(name), True, native=(AMD,), emulated=(ARM,), engine_version="20.10.24",
                     builder="buildkit", address=f"builder@{name}.lan", **kw)


# what the probe said and what its plugin said to do about it (NodeFacts.fix): the doctor shows
# the plugin's advice, it does not guess it from the words of the error
UNREACHABLE = {
    "key": ("host key of node key at 10.0.0.1:22 does not match the one in ~/.ssh/known_hosts: the server presented "
            "ssh-ed25519 SHA256:abc; refusing to connect",
            "check that the node really is who it claims; if its key changed on purpose, update known_hosts "
            "(ssh-keygen -R)"),
    "login": ("SSH login to login.lan:22 as builder refused (check identity or the SSH agent)",
              "check user and identity at nodes.toml:3, or the SSH agent"),
    "arch": ("nodes.toml:3: arch = linux/arm64 but the node says it is linux/amd64 (uname -m: x86_64); "
             "fix or remove 'arch'", "fix or remove 'arch' at nodes.toml:3"),
    "engine": ("engine not answering on the node: Cannot connect to the Docker daemon",
               "start dockerd on the node, or fix docker_host at nodes.toml:3"),
    "down": ("SSH to down.lan:22 failed: [Errno 113] No route to host",
             "check that sshd runs on down.lan and the address and port at nodes.toml:3 are right"),
}


class Clock:
    """A connect plugin whose nodes answer ``date +%s.%N`` ``offset`` seconds off this machine."""

    def __init__(self, offsets):
        self.offsets = offsets

    @hookimpl
    def archfleet_connect(self, node, facts):
        offset = self.offsets.get(node.name)
        if offset is None:
            return None

        class Transport:
            async def run(self, argv, **kwargs):
                import time

                assert argv == ["date", "+%s.%N"]
                return Completed(tuple(argv), 0, (f"{time.time() + offset:.3f}",))

        async def connect():
            return Transport()
        return connect()


def node_checks(monkeypatch, facts, offsets=None):
    async def probe(hooks, config, session, nodes=None):
        return {f.name: f for f in facts}

    monkeypatch.setattr(pipeline, "probe", probe)
    hooks = make_hooks({}, load_entrypoints=False, builtins=())
    hooks.register(Clock(offsets or {}), name="clock")
    return asyncio.run(doctor.check_nodes(hooks, Config(), Session()))


@pytest.mark.parametrize("name", sorted(UNREACHABLE))
def test_an_unreachable_node_fails_with_the_probes_reason_and_its_plugins_advice(monkeypatch, name):
    error, fix = UNREACHABLE[name]
    (check,) = node_checks(monkeypatch, [NodeFacts(spec(name), False, error=error, fix=fix)])
    assert (check.status, check.what, check.message, check.fix) == ("FAIL", f"node {name}", error, fix)


def test_an_unreachable_node_without_advice_gets_the_general_one(monkeypatch):
    (check,) = node_checks(monkeypatch, [NodeFacts(spec("odd"), False, error="something new")])
    assert check.fix == "check the node's address, its sshd and the settings at nodes.toml:3"


def test_a_node_without_a_builder_fails(monkeypatch):
    facts = NodeFacts(spec("old"), True, error="no docker CLI can build with BuildKit", engine_version="19.03")
    (check,) = node_checks(monkeypatch, [facts])
    assert check.line() == ("FAIL  node old: no docker CLI can build with BuildKit -> install buildx, "
                            "or set engine_cli in nodes.toml")


def test_a_ready_node_is_ok_and_a_far_off_clock_is_a_warning(monkeypatch):
    checks = node_checks(monkeypatch, [NodeFacts(NodeSpec("local"), True, builder="buildkit"),
                                       reachable("near"), reachable("far"), reachable("unknown")],
                         offsets={"near": 1.0, "far": -30.0})
    lines = [c.line() for c in checks]
    assert [c.what for c in checks] == ["node near", "node far", "node far", "node unknown"]  # local: its own checks
    assert lines[0].startswith("ok    node near: builder@near.lan: docker 20.10.24, buildkit, native linux/amd64, "
                               "1 emulated, clock +1.")
    assert lines[1].startswith("warn  node far: clock is -30.") and lines[1].endswith(
        "s off this machine's -> run NTP (chrony/systemd-timesyncd) on both; registries reject far-off tokens")
    assert lines[3] == "ok    node unknown: builder@unknown.lan: docker 20.10.24, buildkit, native linux/amd64, 1 emulated"


# -- the command ----------------------------------------------------------------------------------

@pytest.fixture
def command(tmp_path, monkeypatch):
    """`archfleet doctor` in a working directory with no nodes file; probing answers with the
    facts a test sets in ``command.facts``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("ARCHFLEET_NODES", raising=False)
    state = type("Command", (), {"facts": []})()

    async def probe(hooks, config, session, nodes=None):
        return {f.name: f for f in state.facts}

    monkeypatch.setattr(pipeline, "probe", probe)
    return state


def test_doctor_exits_3_when_a_check_failed_and_prints_one_line_per_check(monkeypatch, capsys, command):
    registry(monkeypatch, FakeRegistry(HOST))
    command.facts = [NodeFacts(spec("n1"), False, error=UNREACHABLE["key"][0], fix=UNREACHABLE["key"][1])]
    assert cli.main(["doctor", "--no-local", "--registry", HOST]) == 3
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"ok    registry {HOST}: reachable over HTTPS; credentials accepted for push",
        f"FAIL  node n1: {UNREACHABLE['key'][0]} -> {UNREACHABLE['key'][1]}",
        "2 checks, 1 failed, 0 warnings",
    ]
    assert err == ""


def test_doctor_exits_0_when_nothing_failed(monkeypatch, capsys, command):
    registry(monkeypatch, FakeRegistry(HOST))
    assert cli.main(["doctor", "--no-local", "--registry", HOST]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 checks, 0 failed, 0 warnings"


def test_doctor_refuses_a_malformed_registry_before_checking_anything(capsys, command):
    assert cli.main(["doctor", "--no-local", "--registry", "http://reg.lan"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "archfleet: error: --registry 'http://reg.lan': give HOST[:PORT] only, e.g. 10.0.0.5:5000"]


def test_no_local_skips_the_local_checks(monkeypatch, capsys, command):
    def forbidden(*args, **kwargs):
        raise AssertionError("a local check ran under --no-local")

    monkeypatch.setattr(doctor, "check_local_engine", forbidden)
    monkeypatch.setattr(doctor, "check_binfmt", forbidden)
    assert cli.main(["doctor", "--no-local"]) == 0
    assert capsys.readouterr().out == "0 checks, 0 failed, 0 warnings\n"
