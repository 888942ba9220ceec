"""Per-platform Dockerfiles: ``-f linux/arm/v7=Dockerfile.armv7 -f Dockerfile`` (issue 13, item 3).

Rules checked (docs/cli.md, ``-f``): a platform's own file overrides the default for that platform
only; its key is normalised as ``--platform`` is; bad ``-f`` input (not a platform, a platform not
being built, two files for one platform, two defaults, a missing file) is one line, exit 2, before
any node is probed; the default need not exist when every platform has its own. Every stage that
reads the Dockerfile reads the platform's own: the analysis and the offers, the estimates' history
keys, the context snapshot with that file's own ``.dockerignore`` (BuildKit's rule), the build,
and ``--metadata-file``."""

from __future__ import annotations

import asyncio
import os
import json

import pytest

from archfleet import cli, pipeline
from archfleet.api import hookimpl
from archfleet.context import snapshot_of
from archfleet.inventory import Config
from archfleet.learn import Lessons, keep
from archfleet.manager import make_hooks
from archfleet.model import BuildRequest, NodeFacts, NodeSpec, PlatformResult
from archfleet.nodebuild import context_digest
from archfleet.pipeline import Planned
from archfleet.platforms import parse

from stubs import ConnectsStubs, Recorder, facts, plan, scripted_option as option

AMD, ARM, V7, S390 = (parse(p) for p in ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"))

DEFAULT = "ARG BASE=debian\nFROM $BASE\nRUN cargo build --release\nCMD [\"app\"]\n"
# the seed's Trow shape: the build stage on the build machine, the final stage pinned to arm/v7
ARMV7 = ("ARG BASE=debian\nFROM --platform=$BUILDPLATFORM $BASE AS build\n"
         "RUN cargo build --target armv7-unknown-linux-gnueabihf\n"
         "FROM --platform=linux/arm/v7 $BASE\nCOPY --from=build /src/app /app\nCMD [\"/app\"]\n")


class Probed(AssertionError):
    pass


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    """A context with the default Dockerfile and an arm/v7 one, run from its parent directory;
    probing answers with a local amd64 node that emulates arm64, arm/v7 and s390x."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in ("ARCHFLEET_NODES", "ARCHFLEET_ENGINE_CLI", "ARCHFLEET_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text(DEFAULT)
    (d / "Dockerfile.armv7").write_text(ARMV7)
    (d / "app.rs").write_text("fn main() {}\n")

    async def probe(hooks, config, session, nodes=None):
        return {"local": NodeFacts(NodeSpec("local", max_builds=2), True, native=(AMD, parse("linux/386")),
                                   emulated=(ARM, V7, S390), builder="buildkit", cpus=2, score=1.0)}

    monkeypatch.setattr(pipeline, "probe", probe)
    return d


def request_from(*files, platforms=("linux/amd64,linux/arm64,linux/arm/v7",), path="ctx") -> BuildRequest:
    return cli._request_from(path, platforms, (), files, (), (), None, False, False, True, "auto", None, (), False,
                             None)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- the flag -------------------------------------------------------------------------------------

def test_a_platform_file_overrides_the_default_for_that_platform_only(ctx):
    req = request_from("linux/arm/v7=ctx/Dockerfile.armv7", "ctx/Dockerfile")
    assert req.dockerfile == ctx / "Dockerfile"
    assert req.platform_dockerfiles == ((V7, ctx / "Dockerfile.armv7"),)
    assert {p: req.dockerfile_for(p).name for p in req.platforms} == {
        AMD: "Dockerfile", ARM: "Dockerfile", V7: "Dockerfile.armv7"}
    # without a plain -f the default is PATH/Dockerfile, as before
    assert request_from("linux/arm/v7=ctx/Dockerfile.armv7").dockerfile == ctx / "Dockerfile"


def test_the_platform_is_normalised_as_platform_is(ctx):
    # containerd's normalisation: armhf is linux/arm/v7, aarch64 is linux/arm64
    req = request_from("armhf=ctx/Dockerfile.armv7", "aarch64=ctx/Dockerfile.armv7")
    assert dict(req.platform_dockerfiles) == {V7: ctx / "Dockerfile.armv7", ARM: ctx / "Dockerfile.armv7"}


def test_the_default_need_not_exist_when_every_platform_has_its_own(ctx):
    (ctx / "Dockerfile").unlink()
    req = request_from("linux/arm/v7=ctx/Dockerfile.armv7", platforms=("linux/arm/v7",))
    assert req.dockerfile_for(V7) == ctx / "Dockerfile.armv7"


def test_an_existing_path_with_an_equals_sign_is_a_path(ctx):
    (ctx / "a=b").write_text(DEFAULT)
    assert request_from("ctx/a=b").dockerfile == ctx / "a=b"


@pytest.mark.parametrize("files,platforms,message", [
    (["linux/sparc=ctx/Dockerfile.armv7"], "linux/amd64",
     "--file 'linux/sparc=ctx/Dockerfile.armv7': no such file, and 'linux/sparc' is not a platform (unknown "
     "architecture 'sparc'"),
    (["linux/s390x=ctx/Dockerfile.armv7"], "linux/amd64,linux/arm/v7",
     "--file linux/s390x=...: linux/s390x is not being built (--platform linux/amd64,linux/arm/v7); drop it or add "
     "the platform"),
    (["linux/arm/v7=ctx/Dockerfile.armv7", "armhf=ctx/Dockerfile"], "linux/arm/v7",
     "--file: two Dockerfiles for linux/arm/v7 ('ctx/Dockerfile.armv7' and 'ctx/Dockerfile'); give one"),
    (["linux/arm/v7=ctx/Dockerfile.nope"], "linux/arm/v7",
     "--file linux/arm/v7=ctx/Dockerfile.nope: Dockerfile 'ctx/Dockerfile.nope' not found"),
    (["ctx/Dockerfile", "ctx/Dockerfile.armv7"], "linux/amd64",
     "--file: two default Dockerfiles ('ctx/Dockerfile' and 'ctx/Dockerfile.armv7'); give one, and PLATFORM=PATH "
     "for a platform's own"),
    (["linux/arm/v7="], "linux/arm/v7", "--file 'linux/arm/v7=': name the Dockerfile for linux/arm/v7 after the '='"),
    # the default is missing and one platform needs it
    (["linux/arm/v7=ctx/Dockerfile.armv7", "ctx/Gone"], "linux/amd64,linux/arm/v7",
     "--file: Dockerfile 'ctx/Gone' not found"),
])
def test_bad_files_are_one_line_exit_2_before_probing(ctx, capsys, monkeypatch, files, platforms, message):
    async def no_probe(*args, **kwargs):
        raise Probed("a node was probed although the input was bad")

    monkeypatch.setattr(pipeline, "probe", no_probe)
    argv = ["plan", "--platform", platforms]
    for f in files:
        argv += ["-f", f]
    code, _, err = run(capsys, *argv, "ctx")
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("archfleet: error: "), err
    assert lines[0][len("archfleet: error: "):].startswith(message), lines[0]


def test_every_file_problem_is_in_the_one_line(ctx, capsys, monkeypatch):
    code, _, err = run(capsys, "build", "--platform", "linux/amd64", "-f", "linux/s390x=ctx/Dockerfile.armv7",
                       "-f", "linux/sparc=ctx/x", "ctx")
    assert code == 2
    assert "linux/s390x is not being built" in err and "'linux/sparc' is not a platform" in err
    assert len(err.splitlines()) == 1


# --- the request as each platform sees it --------------------------------------------------------

def test_for_platform_gives_the_platforms_own_file_and_the_platforms_sharing_it(ctx):
    req = request_from("linux/arm/v7=ctx/Dockerfile.armv7")
    v7 = req.for_platform(V7)
    assert (v7.dockerfile, v7.platforms, v7.platform_dockerfiles) == (ctx / "Dockerfile.armv7", (V7,), ())
    amd = req.for_platform(AMD)
    assert (amd.dockerfile, amd.platforms) == (ctx / "Dockerfile", (AMD, ARM))
    assert req.by_dockerfile() == ((ctx / "Dockerfile", (AMD, ARM)), (ctx / "Dockerfile.armv7", (V7,)))
    plain = request_from()
    assert plain.for_platform(V7) is plain  # one Dockerfile: the request itself, caches shared


def test_plan_offers_each_platform_from_its_own_dockerfile(ctx, capsys):
    code, out, err = run(capsys, "plan", "--format", "json", "--platform", "linux/amd64,linux/arm64,linux/arm/v7",
                         "-f", "linux/arm/v7=ctx/Dockerfile.armv7", "ctx")
    assert code == 0, err
    got = {p["platform"]: p for p in json.loads(out)["platforms"]}
    # the default RUNs in the target stage: native on amd64, QEMU for arm64; the arm/v7 file
    # cross-compiles on the build machine and its pinned final stage RUNs nothing
    assert (got["linux/amd64"]["strategy"], got["linux/arm64"]["strategy"]) == ("native", "qemu")
    v7 = got["linux/arm/v7"]
    assert v7["strategy"] == "cross" and "no emulation needed" in v7["why"]
    assert "build@$BUILDPLATFORM (1 RUN), #1@linux/arm/v7" in v7["why"]
    assert {a["strategy"] for a in v7["alternatives"]} == set()  # qemu is not offered: the file crosses


def test_strategy_cross_is_checked_against_the_platforms_own_file(ctx, capsys):
    code, _, err = run(capsys, "plan", "--platform", "linux/arm64,linux/arm/v7", "-f",
                       "linux/arm/v7=ctx/Dockerfile.armv7", "--strategy", "linux/arm/v7=cross", "ctx")
    assert code == 0, err
    code, _, err = run(capsys, "plan", "--platform", "linux/arm64,linux/arm/v7", "-f",
                       "linux/arm/v7=ctx/Dockerfile.armv7", "--strategy", "cross", "ctx")
    assert code == 2 and "--strategy 'cross': Dockerfile cannot cross-compile" in err  # arm64's file cannot


def test_a_broken_platform_file_is_reported_before_probing(ctx, capsys, monkeypatch):
    async def no_probe(*args, **kwargs):
        raise Probed("a node was probed although the Dockerfile was bad")

    monkeypatch.setattr(pipeline, "probe", no_probe)
    (ctx / "Dockerfile.armv7").write_text("FROM --platform=linux/$NOPE a\n")
    code, _, err = run(capsys, "plan", "--platform", "linux/amd64,linux/arm/v7", "-f",
                       "linux/arm/v7=ctx/Dockerfile.armv7", "ctx")
    assert code == 2 and "Dockerfile.armv7:1: FROM --platform=linux/$NOPE" in err


# --- context, history, build, metadata ------------------------------------------------------------

def test_each_platforms_snapshot_applies_its_own_dockerignore(ctx):
    # BuildKit's rule: <Dockerfile>.dockerignore beside the Dockerfile, else <context>/.dockerignore
    (ctx / "secret.txt").write_text("not for armv7")
    (ctx / "Dockerfile.armv7.dockerignore").write_text("secret.txt\n")
    req = request_from("linux/arm/v7=ctx/Dockerfile.armv7")
    v7, amd = snapshot_of(req.for_platform(V7)), snapshot_of(req.for_platform(AMD))
    assert "secret.txt" not in {e.path for e in v7.entries} and v7.ignore_path == ctx / "Dockerfile.armv7.dockerignore"
    assert "secret.txt" in {e.path for e in amd.entries} and amd.ignore_path is None
    assert v7.dockerfile_path == ctx / "Dockerfile.armv7" and amd.dockerfile_path == ctx / "Dockerfile"
    assert v7.digest != amd.digest
    assert context_digest(req.for_platform(V7)) != context_digest(req.for_platform(AMD))


def test_history_is_keyed_by_each_platforms_dockerfile(ctx):
    req = request_from("linux/arm/v7=ctx/Dockerfile.armv7")
    views = pipeline.histories(req)
    assert views[AMD] is views[ARM]  # one Dockerfile, one view
    assert views[V7].context_key != views[AMD].context_key and views[V7].project_key != views[AMD].project_key
    # the learn stage records each result under its platform's view
    opt = option(V7, "local")
    keep(Lessons(results=[PlatformResult(V7, opt, 12.0), PlatformResult(AMD, option(AMD, "local"), 3.0)],
                 history=views[AMD], histories=tuple(views.items())))
    assert views[V7].past(opt).seconds == 12.0
    assert views[AMD].past(option(AMD, "local")).seconds == 3.0
    assert views[AMD].past(opt) is None  # arm/v7's row is not this Dockerfile's (nor its project's)


def test_each_platform_is_built_from_its_own_dockerfile_and_the_metadata_says_which(ctx, monkeypatch):
    req = request_from("linux/arm/v7=ctx/Dockerfile.armv7")
    seen = {}

    class Recording(ConnectsStubs):
        @hookimpl
        def archfleet_run(self, option, request, job):
            async def run():
                seen[option.platform] = request.dockerfile
                return PlatformResult(option.platform, option, 1.0, image_id="sha256:" + "ab" * 32)
            return run()

    hooks = make_hooks(load_entrypoints=False, builtins=())
    hooks.register(Recording(), name="recording")
    chosen = [option(p, f"n{i}") for i, p in enumerate(req.platforms)]

    async def make_plan(hooks, request, config, session, client=None):
        return Planned(facts(*[o.node for o in chosen]), tuple(chosen), plan(*chosen), None, (), request)

    monkeypatch.setattr(pipeline, "make_plan", make_plan)
    summary = asyncio.run(pipeline.run_command(
        hooks, lambda session: pipeline.build(hooks, req, Config(local=False), Recorder(), session)))
    assert seen == {AMD: ctx / "Dockerfile", ARM: ctx / "Dockerfile", V7: ctx / "Dockerfile.armv7"}
    doc = pipeline.metadata(summary)
    assert {p: e["dockerfile"] for p, e in doc["archfleet.platforms"].items()} == {
        "linux/amd64": str(ctx / "Dockerfile"), "linux/arm64": str(ctx / "Dockerfile"),
        "linux/arm/v7": str(ctx / "Dockerfile.armv7")}


def test_a_node_gets_each_platforms_dockerfile_and_its_own_ignore_file(ctx, tmp_path, monkeypatch):
    # the SSH path: CommandNode.prepare_context syncs once per (context, Dockerfile); beside each
    # tree lies that platform's Dockerfile and the ignore file its snapshot applied, so BuildKit
    # on the node filters the tree by the same rule (the node-side scripts run by sh here)
    from archfleet.context import CACHE
    from archfleet.transport import CommandNode, LocalTransport

    class Node(CommandNode):
        node = "n1"

        async def run(self, argv, **kw):
            return await LocalTransport().run(argv, **kw)

        def docker_client(self):
            raise AssertionError("not needed")

        async def close(self):
            pass

    (ctx / "secret.txt").write_text("not for armv7")
    (ctx / "Dockerfile.armv7.dockerignore").write_text("secret.txt\n")
    req = request_from("linux/arm/v7=ctx/Dockerfile.armv7")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    node = Node()

    async def both():
        return [await node.prepare_context(req.for_platform(p), None) for p in (V7, AMD, ARM)]

    (v7_tree, v7_df, _), (amd_tree, amd_df, _), (arm_tree, _, _) = asyncio.run(both())
    assert v7_tree != amd_tree and arm_tree == amd_tree  # one sync per Dockerfile
    assert (home / v7_df).read_text() == ARMV7 and (home / amd_df).read_text() == DEFAULT
    assert (home / (v7_df + ".dockerignore")).read_text() == "secret.txt\n"
    assert not (home / (amd_df + ".dockerignore")).exists()
    assert "secret.txt" not in os.listdir(home / v7_tree) and "secret.txt" in os.listdir(home / amd_tree)
    assert (home / CACHE / "blobs").is_dir()
