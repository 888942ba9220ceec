"""Engine adapters behind one interface (archfleet.engines): one adapter per ``engine`` kind, what
each engine can do (NodeFacts.capabilities, shown by `archfleet ls`), what a request needs of it
(from its Dockerfile), and the strategies offering only nodes whose engine has all of it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from archfleet import cli, engine, engines, pipeline
from archfleet.errors import UsageError
from archfleet.inventory import load_nodes_file
from archfleet.manager import make_hooks
from archfleet.model import BuildRequest, Capabilities, NodeFacts, NodeSpec
from archfleet.pipeline import Planned, offers, unplannable_reason
from archfleet.planner import Plan
from archfleet.plugins.ssh import KEYS as SSH_KEYS

from stubs import AMD, ARM

DOCKER_20 = engine.capabilities("buildkit", "20.10.24+dfsg1")
PODMAN_43 = Capabilities(secrets=True, ssh=True, cache_export=True, outputs=True)


def dockerfile(tmp_path: Path, text: str, name="Dockerfile") -> BuildRequest:
    (tmp_path / name).write_text(text)
    return BuildRequest(tmp_path, tmp_path / name, (ARM,))


def node(name, engine_kind="docker", caps=None, **kw) -> NodeFacts:
    return NodeFacts(NodeSpec(name, transport="stub", engine=engine_kind), True, native=(AMD,), emulated=(ARM,),
                     builder="buildah" if engine_kind == "podman" else "buildkit", engine_cli=(engine_kind,),
                     engine_version="4.3.1" if engine_kind == "podman" else "20.10.24", capabilities=caps, **kw)


# -- one adapter per kind -------------------------------------------------------------------------

def test_each_engine_kind_has_its_adapter_and_only_docker_uses_an_engine_socket():
    assert engines.KINDS == ("docker", "podman")
    assert [engines.adapter_for(k).kind for k in engines.KINDS] == ["docker", "podman"]
    assert [engines.adapter_for(k).uses_engine_api for k in ("docker", "podman")] == [True, False]
    with pytest.raises(KeyError):
        engines.adapter_for("lxd")


def test_the_adapters_default_clis_on_a_node():
    assert engines.adapter_for("docker").candidates(None, local=False) == ["docker", "/usr/bin/docker"]
    assert engines.adapter_for("podman").candidates(None, local=False) == ["podman", "/usr/bin/podman"]
    assert engines.adapter_for("podman").candidates("/opt/podman", local=False) == ["/opt/podman"]


# -- what docker can do, and whether it is rootless -------------------------------------------------

def test_docker_20_10s_built_in_buildkit_has_secrets_ssh_outputs_but_no_cache_export_or_heredocs():
    # cache export (--cache-to) needs buildx; heredocs need the daemon's BuildKit >= 0.11 (Docker 23)
    assert DOCKER_20.names() == ("secrets", "ssh", "outputs", "frontends")
    assert engine.capabilities("buildx", "24.0.7").names() == (
        "secrets", "ssh", "cache_export", "outputs", "heredocs", "frontends", "link_wildcards")


@pytest.mark.parametrize("lines,expected", [
    # what `docker info --format INFO_FORMAT` printed here: the rootful daemon, the lab's rootless one
    (["version=20.10.24+dfsg1 security=name=seccomp,profile=default"], ("20.10.24+dfsg1", False, None)),
    (["version=20.10.24+dfsg1 security=name=seccomp,profile=default name=rootless"], ("20.10.24+dfsg1", True, None)),
    # Docker 20.10's client with no daemon (exit 0, ServerErrors), Docker 28's (exit 1)
    (["error: Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon running?"],
     (None, False, "Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon running?")),
    (["version= security=", "Cannot connect to the Docker daemon at unix:///x.sock."],
     (None, False, "Cannot connect to the Docker daemon at unix:///x.sock.")),
])
def test_docker_info_says_the_version_and_whether_the_daemon_is_rootless(lines, expected):
    assert engine.parse_info(lines) == expected


def test_the_engine_label_names_kind_version_and_rootless():
    assert node("a", "podman").engine_label == "podman 4.3.1"
    assert node("b", rootless=True).engine_label == "docker 20.10.24 rootless"


# -- what a request needs --------------------------------------------------------------------------

def test_heredocs_secret_and_ssh_mounts_are_needs_each_named_at_its_first_use(tmp_path):
    req = dockerfile(tmp_path, "FROM busybox\nRUN --mount=type=cache,target=/c true\n"
                               "RUN --mount=type=secret,id=npm cat /run/secrets/npm\n"
                               "RUN <<EOF\necho hi\nEOF\nRUN --mount=type=ssh git ls-remote x\n"
                               "RUN --mount=type=secret,id=two true\n")
    assert [(n.feature, n.where) for n in engines.needs(req)] == [
        ("secrets", "Dockerfile:3: RUN --mount=type=secret,id=npm cat /run/secrets/npm"),
        ("ssh", "Dockerfile:7: RUN --mount=type=ssh git ls-remote x"),
        ("heredocs", "Dockerfile:4: RUN <<EOF")]


def test_a_syntax_directive_turns_heredocs_into_a_need_for_frontends(tmp_path):
    # BuildKit then pulls a frontend that has them, whatever its own version; podman ignores the directive
    req = dockerfile(tmp_path, "# syntax=docker/dockerfile:1\nFROM busybox\nCOPY <<EOF /x\nhi\nEOF\n")
    assert [n.feature for n in engines.needs(req)] == ["frontends"]


def test_shift_operators_and_bind_mounts_need_nothing(tmp_path):
    req = dockerfile(tmp_path, "FROM busybox\nRUN echo $((1<<4))\nRUN --mount=from=busybox,target=/b ls /b\n")
    assert engines.needs(req) == ()


def test_capable_nodes_have_every_need_and_unknown_capabilities_hold_nothing_back(tmp_path):
    req = dockerfile(tmp_path, "FROM busybox\nRUN <<EOF\necho hi\nEOF\n")
    new = node("new", caps=engine.capabilities("buildx", "24.0.7"))
    facts = [node("d20", caps=DOCKER_20), node("pod", "podman", caps=PODMAN_43), new,
             node("plugin"), NodeFacts(NodeSpec("down"), False)]
    assert [f.name for f in engines.capable(req, facts)] == ["new", "plugin"]


def test_the_strategies_offer_only_nodes_whose_engine_can_build_the_dockerfile(tmp_path):
    req = dockerfile(tmp_path, "FROM busybox\nRUN --mount=type=ssh true\nRUN <<EOF\necho hi\nEOF\n")
    facts = {"d20": node("d20", caps=DOCKER_20), "pod": node("pod", "podman", caps=PODMAN_43),
             "new": node("new", caps=engine.capabilities("buildx", "24.0.7"))}
    got = asyncio.run(offers(make_hooks({}, load_entrypoints=False), req, facts))
    assert {(o.strategy, o.node) for o in got} == {("qemu", "new")}


def test_plan_says_which_engine_cannot_do_what_and_how_to_get_it(tmp_path):
    req = dockerfile(tmp_path, "FROM busybox\nRUN <<EOF\necho hi\nEOF\n")
    facts = {"pod": node("pod", "podman", caps=PODMAN_43)}
    line = unplannable_reason(ARM, Planned(facts, (), Plan((), ()), request=req))
    assert line == ("no node can build linux/arm64 (pod: podman 4.3.1 cannot build heredocs "
                    "(Dockerfile:2: RUN <<EOF)); " + engines.FEATURE_FIX["heredocs"])


# -- nodes.toml -------------------------------------------------------------------------------------

def test_engine_podman_is_accepted_for_the_local_node_and_ssh_nodes(tmp_path):
    path = tmp_path / "nodes.toml"
    path.write_text('[nodes.local]\nengine = "podman"\n\n[nodes.n4]\nhost = "10.0.0.4"\nengine = "podman"\n'
                    '\n[nodes.n5]\nhost = "10.0.0.5"\ndocker_host = "unix:///run/user/1005/docker.sock"\n')
    local, n4, n5 = load_nodes_file(path, {"ssh": SSH_KEYS})
    assert (local.engine, n4.engine, n5.engine) == ("podman", "podman", "docker")


@pytest.mark.parametrize("text,line,needle", [
    ('[nodes.a]\nhost = "h"\nengine = "lxd"\n', 3, 'key \'engine\': expected "docker" or "podman", got "lxd"'),
    ('[nodes.local]\nengine = "rkt"\n', 2, "key 'engine'"),
    ('[nodes.a]\nhost = "h"\nengine = "podman"\ndocker_host = "unix:///run/podman/podman.sock"\n', 4,
     "a podman node has no Docker socket"),
])
def test_a_bad_engine_is_one_line_naming_file_line_and_key(tmp_path, text, line, needle):
    path = tmp_path / "nodes.toml"
    path.write_text(text)
    message = str(pytest.raises(UsageError, load_nodes_file, path, {"ssh": SSH_KEYS}).value)
    assert message.startswith(f"{path}:{line}: ") and needle in message and "\n" not in message


# -- archfleet ls -----------------------------------------------------------------------------------

def test_ls_shows_each_nodes_engine_and_what_it_can_do(monkeypatch, tmp_path):
    facts = [node("n1", caps=DOCKER_20), node("n4", "podman", caps=PODMAN_43),
             node("n5", caps=DOCKER_20, rootless=True)]

    async def probe(hooks, config, session, nodes=None):
        return {f.name: f for f in facts}

    monkeypatch.setattr(pipeline, "probe", probe)
    monkeypatch.chdir(tmp_path)
    table = CliRunner().invoke(cli.cli, ["ls", "--no-local"])
    assert table.exit_code == 0, table.output
    header, *lines = [re.split(r"\s{2,}", line) for line in table.output.splitlines()]
    assert header[:5] == ["NAME", "STATUS", "ENGINE", "BUILDER", "CAN"]
    assert [row[:5] for row in lines] == [
        ["n1", "ready", "docker 20.10.24", "buildkit", "secrets,ssh,outputs,syntax"],
        ["n4", "ready", "podman 4.3.1", "buildah", "secrets,ssh,cache,outputs"],
        ["n5", "ready", "docker 20.10.24 rootless", "buildkit", "secrets,ssh,outputs,syntax"]]
    listed = CliRunner().invoke(cli.cli, ["ls", "--no-local", "--format", "json"]).output
    doc = {n["name"]: n for n in json.loads(listed)}
    assert (doc["n4"]["engine"], doc["n4"]["engine_version"], doc["n5"]["rootless"]) == ("podman", "4.3.1", True)
    assert doc["n4"]["capabilities"] == {"secrets": True, "ssh": True, "cache_export": True, "outputs": True,
                                         "heredocs": False, "frontends": False, "link_wildcards": False}


# -- the exit path every adapter reads first ---------------------------------------------------------

@pytest.mark.parametrize("returncode,tail,why", [
    (127, ("podman: command not found",), "engine CLI unusable: podman: command not found"),
    (-9, (), "engine CLI killed by signal 9"),  # this machine's transport: a negative status
    # the SSH transport: 137 and its own last line naming the signal
    (137, ("STEP 2/2: RUN sleep 8", "killed by signal KILL"), "engine CLI killed by signal KILL"),
    # a RUN step exiting 137 is the build's: the CLI's own line is last, not the transport's
    (137, ('Error: building at STEP "RUN x": while running runtime: exit status 137',), None),
    (137, ("#5 killed by signal KILL", "executor failed running [/bin/sh -c x]: exit code: 137"), None),
])
def test_a_cli_that_could_not_start_or_was_killed_is_the_nodes_failure(returncode, tail, why):
    from archfleet.transport import Completed

    assert engines.exit_path_failure(Completed(("cli",), returncode, tail)) == why


def _clis(answers):
    """A transport answering each candidate's ``--version`` and ``info`` from ``answers``
    (``{(cli, "--version"): (rc, lines), (cli, "info"): (rc, lines)}``)."""
    from archfleet.transport import Completed

    class T:
        node = "local"
        runs: list = []

        async def run(self, argv, **kw):
            T.runs.append(tuple(argv))
            key = tuple(argv[:2]) if argv[1:2] == ["info"] else tuple(argv)
            assert argv[1:] in (["--version"], ["info", "--format", engine.INFO_FORMAT]), argv
            rc, tail = answers[key]
            return Completed(tuple(argv), rc, tail)

    return T()


def discover(t, candidates):
    """The CLI the probe would choose and why the others were refused (engine.choose_cli)."""
    cli, reasons, _ = engine.choose_cli(candidates, asyncio.run(engine.ask_clis(t, candidates)))
    return cli, reasons


BUILDX = 'client={"Debug":false,"Version":"24.0.7","Plugins":[{"Name":"buildx","Version":"v0.12.1","Path":"/x"}]}'
NO_PLUGINS_20 = 'client={"Debug":false,"Context":"default","Plugins":[],"Warnings":null}'  # Docker 20.10, seen here
DAEMON = "version=20.10.24+dfsg1 security=name=seccomp,profile=default"


def test_a_cli_is_buildx_or_docker_only_when_it_says_so():
    """Rule (choose_cli): exit 0 is not enough. ``docker info`` must list a working buildx plugin,
    or ``--version`` must give a Docker client older than 23: a program that merely succeeds (a
    wrong --engine-cli /bin/true) is refused with the reason, never used to build."""
    t = _clis({("/bin/true", "--version"): (0, ()), ("/bin/true", "info"): (0, ()),
               ("docker", "--version"): (0, ("Docker version 24.0.7, build afdd53b",)),
               ("docker", "info"): (0, (BUILDX, DAEMON))})
    cli, reasons = discover(t, ["/bin/true", "docker"])
    assert (cli.argv, cli.mode, cli.version) == (("docker", "buildx"), "buildx", "buildx v0.12.1")
    assert reasons == ["/bin/true: not a docker CLI (its --version printed 'nothing')"]


@pytest.mark.parametrize("client_line,version,expected", [
    # the plugin as the CLI lists it: buildx builds, whatever the client's version
    (BUILDX, "Docker version 28.2.2, build e6534b4", ("buildx", ("docker", "buildx"))),
    # a broken plugin (the CLI lists it with Err) is no buildx: a Docker 28 client then cannot build
    ('client={"Version":"28.2.2","Plugins":[{"Name":"buildx","Err":"not a valid CLI plugin"}]}',
     "Docker version 28.2.2, build e6534b4", None),
    # Docker 20.10 lists no plugin: BuildKit is built in below 23 (seen here: /usr/bin/docker)
    (NO_PLUGINS_20, "Docker version 20.10.24+dfsg1, build 297e128", ("buildkit", ("docker",))),
    # Docker 28 without the plugin (seen here: /usr/local/bin/docker)
    ('client={"Debug":false,"Version":"28.2.2","Plugins":[]}', "Docker version 28.2.2, build e6534b4", None),
    # another plugin named like it is not it; a client line that is not JSON lists nothing
    ('client={"Plugins":[{"Name":"buildx-extra","Version":"v1"}]}', "Docker version 28.2.2, build e6534b4", None),
    ("client=<no value>", "Docker version 20.10.24+dfsg1, build 297e128", ("buildkit", ("docker",))),
])
def test_buildx_is_what_docker_info_lists_as_a_working_plugin(client_line, version, expected):
    t = _clis({("docker", "--version"): (0, (version,)), ("docker", "info"): (0, (client_line, DAEMON))})
    cli, reasons = discover(t, ["docker"])
    assert ((cli.mode, cli.argv) if cli else None) == expected, reasons


def test_a_probe_runs_two_commands_per_candidate_and_reads_the_daemon_from_the_chosen_clis_info():
    """Rule (issue 17, probing scales): each candidate's ``--version`` and ``info``, nothing else
    (no ``buildx version``, no second ``info``); the daemon's facts come from the chosen CLI's."""
    from archfleet.model import NodeSpec

    t = _clis({("/usr/local/bin/docker", "--version"): (0, ("Docker version 28.2.2, build e6534b4",)),
               ("/usr/local/bin/docker", "info"): (0, ('client={"Version":"28.2.2","Plugins":[]}', "version=x security=")),
               ("/usr/bin/docker", "--version"): (0, ("Docker version 20.10.24+dfsg1, build 297e128",)),
               ("/usr/bin/docker", "info"): (0, (NO_PLUGINS_20, DAEMON + " name=rootless"))})
    t.runs.clear()
    found = asyncio.run(engine.DOCKER.probe(t, NodeSpec("local"), ["/usr/local/bin/docker", "/usr/bin/docker"]))
    assert len(t.runs) == 4
    assert (found.answered, found.cli.argv, found.version, found.rootless) == (
        True, ("/usr/bin/docker",), "20.10.24+dfsg1", True)


def test_a_remembered_info_is_not_asked_again_and_the_others_are():
    """Rule (engine.ask_clis): a candidate's ``info`` answer the cache holds for everything it
    depends on as now (archfleet.engineinfos) is used as is; the rest run, all at once. Right:
    of four commands, three run."""
    from archfleet.model import EngineInfo

    t = _clis({("/a/docker", "--version"): (0, ("Docker version 28.2.2",)), ("/a/docker", "info"): (0, ()),
               ("/b/docker", "--version"): (0, ("Docker version 20.10.24",)), ("/b/docker", "info"): (0, ())})
    t.runs.clear()
    kept = EngineInfo("/b/docker", "[]", (NO_PLUGINS_20, DAEMON))
    answers = asyncio.run(engine.ask_clis(t, ["/a/docker", "/b/docker"], {}, {"/b/docker": kept}))
    assert sorted(t.runs) == [("/a/docker", "--version"), ("/a/docker", "info", "--format", engine.INFO_FORMAT),
                              ("/b/docker", "--version")]
    assert answers[("/b/docker", "info", "--format", engine.INFO_FORMAT)].tail == (NO_PLUGINS_20, DAEMON)


def test_a_probe_with_no_cli_that_builds_still_says_the_daemons_version():
    """ls and doctor show the daemon's version even when no candidate CLI can build (the
    Engine API probe used to fill it in): from any candidate's info."""
    from archfleet.model import NodeSpec

    t = _clis({("/usr/local/bin/docker", "--version"): (0, ("Docker version 28.2.2, build e6534b4",)),
               ("/usr/local/bin/docker", "info"): (0, ('client={"Version":"28.2.2","Plugins":[]}', DAEMON))})
    found = asyncio.run(engine.DOCKER.probe(t, NodeSpec("local"), ["/usr/local/bin/docker"]))
    assert (found.answered, found.cli, found.version) == (True, None, "20.10.24+dfsg1")
    assert found.error == ("no engine CLI with BuildKit: /usr/local/bin/docker: version 28.2 has no buildx plugin "
                           "and no built-in BuildKit")


@pytest.mark.parametrize("transport,lines,expected", [
    # Docker 20.10's client without a daemon (exit 0, ServerErrors), on this machine and on a node
    ("local", (NO_PLUGINS_20, "error: Cannot connect to the Docker daemon at unix:///x.sock."),
     "no Docker engine answers (Cannot connect to the Docker daemon at unix:///x.sock.)"),
    ("ssh", (NO_PLUGINS_20, "error: Cannot connect to the Docker daemon at unix:///x.sock."),
     "engine not answering on the node: Cannot connect to the Docker daemon at unix:///x.sock."),
    # a newer client exits 1 and says why last; its client line is never the reason
    ("ssh", (NO_PLUGINS_20, "version= security=", "Cannot connect to the Docker daemon."),
     "engine not answering on the node: Cannot connect to the Docker daemon."),
])
def test_a_cli_whose_daemon_does_not_answer_says_why(transport, lines, expected):
    from archfleet.model import NodeSpec

    t = _clis({("docker", "--version"): (0, ("Docker version 20.10.24+dfsg1, build 297e128",)),
               ("docker", "info"): (0, lines)})
    node = NodeSpec("n", transport=transport, settings={"host": "10.0.0.1"} if transport == "ssh" else {})
    found = asyncio.run(engine.DOCKER.probe(t, node, ["docker"]))
    assert (found.answered, found.error) == (False, expected)


def test_ls_shows_no_cpu_count_for_a_node_it_could_not_reach(monkeypatch, tmp_path):
    """An unreachable node's CPU count is unknown: '-' in the table, null in JSON (it showed 1,
    NodeFacts' default, as if measured)."""
    from archfleet.model import NodeFacts, NodeSpec

    down = NodeFacts(NodeSpec("far", transport="ssh", settings={"host": "10.9.9.9"}), False, error="unreachable")

    async def probe(hooks, config, session, nodes=None):
        return {"far": down}

    monkeypatch.setattr(pipeline, "probe", probe)
    monkeypatch.chdir(tmp_path)
    table = CliRunner().invoke(cli.cli, ["ls", "--no-local"])
    header, row = [re.split(r"\s{2,}", line) for line in table.output.splitlines()[:2]]
    assert row[header.index("CPUS")] == "-", row
    doc = json.loads(CliRunner().invoke(cli.cli, ["ls", "--no-local", "--format", "json"]).output)
    assert doc[0]["cpus"] is None


@pytest.mark.parametrize("copy,link,needed", [
    ("COPY link/* /d/", "dir", True),  # moby/buildkit#2300: Docker 20.10 built another context's files here
    ("COPY ./link/sub/*.go /d/", "dir", True),
    ("COPY dir/* /d/", "dir", False),  # the real directory
    ("COPY link/x /d/", "dir", False),  # no wildcard: BuildKit 20.10 follows the link (checked here)
    ("COPY --from=build link/* /d/", "dir", False),  # another stage's files, not the context's
    ("COPY l*/x /d/", "dir", False),  # the wildcard is the link's own component
])
def test_a_wildcard_below_a_context_link_is_a_need_docker_20_10_lacks(tmp_path, copy, link, needed):
    """Rule (moby/buildkit#2300, fixed in BuildKit 0.10 by #2318): before it, a COPY wildcard
    below a symbolic link was cached as if it copied nothing, so Docker 20.10 built `COPY link/*`
    from whatever an earlier such COPY copied, from another context too (seen here: the image held
    'zzz-unique' from another test's context). Such a build is not offered to Docker < 23."""
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(link)
    req = dockerfile(tmp_path, f"FROM busybox AS build\nFROM busybox\n{copy}\n")
    got = [n.feature for n in engines.needs(req)]
    assert ("link_wildcards" in got) is needed
    if needed:
        assert engine.capabilities("buildkit", "20.10.24").lacks(["link_wildcards"]) == ("link_wildcards",)
        assert engine.capabilities("buildx", "24.0.7").lacks(["link_wildcards"]) == ()
