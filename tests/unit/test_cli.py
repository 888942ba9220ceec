"""The command line's input checks, in-process through ``archfleet.cli.main``: each problem is one
stderr line, exit 2, found before any node is probed (``pipeline.probe`` is replaced by a stub
that fails the test if it is reached, except where a test gives it facts to answer with)."""

from __future__ import annotations

import os

import pytest

from archfleet import cli, pipeline
from archfleet.model import NodeFacts, NodeSpec
from archfleet.platforms import parse


class Probed(AssertionError):
    pass


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A working directory with a context, no nodes files, and probing forbidden."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in ("ARCHFLEET_NODES", "ARCHFLEET_ENGINE_CLI", "ARCHFLEET_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")

    async def no_probe(*args, **kwargs):
        raise Probed("a node was probed although the input was bad")

    monkeypatch.setattr(pipeline, "probe", no_probe)
    return tmp_path


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(capsys, *argv, code=2) -> str:
    got, _, err = run(capsys, *argv)
    assert got == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("archfleet: error: "), err
    return lines[0][len("archfleet: error: "):]


DIGEST = "sha256:" + "0" * 64


@pytest.mark.parametrize("tag,rule", [
    (f"127.0.0.1:5000/app@{DIGEST}", "a digest cannot be pushed to"),
    (f"reg.io/app:tag@{DIGEST}", "a digest cannot be pushed to"),
    ("127.0.0.1:5000/app:" + "a" * 129, "must be 1-128"),
    ("127.0.0.1:5000/app:v\u00e9", "printable ASCII"),
    ("127.0.0.1:99999/app:1", "registry port 99999 is not 1-65535"),
])
def test_bad_tags_exit_2_before_anything(capsys, tag, rule):
    message = one_error(capsys, "build", "--platform", "linux/amd64,linux/arm64", "-t", tag, "--push", "ctx")
    assert message.startswith(f"invalid --tag {tag!r}: ") and rule in message


def test_child_tags_must_fit_128(capsys):
    """<tag>-linux-arm-v7 must be a valid tag: a 120-character tag is refused, naming by how much."""
    tag = "127.0.0.1:5000/cli/app:" + "a" * 120
    message = one_error(capsys, "plan", "--platform", "linux/amd64,linux/arm/v7", "-t", tag, "ctx")
    assert "would be 133 characters, more than the registry's 128; shorten the tag by 5" in message


@pytest.mark.parametrize("flag", ["--metadata-file", "--report"])
def test_output_files_are_checked_before_building(capsys, tmp_path, flag):
    assert one_error(capsys, "build", flag, str(tmp_path / "nope" / "out"), "ctx") == (
        f"{flag}: directory {str(tmp_path / 'nope')!r} does not exist; create it first")
    assert one_error(capsys, "build", flag, "/proc/out", "ctx").startswith(f"{flag}: cannot write '/proc/out': ")
    assert one_error(capsys, "build", flag, str(tmp_path), "ctx") == f"{flag}: {str(tmp_path)!r} is a directory; name a file"


def test_every_problem_in_one_line(capsys):
    """One pass over the flags: all problems, one line, in flag order."""
    message = one_error(capsys, "build", "--platform", "linux/foo", "-t", "a:b c", "--build-arg", "1=2",
                        "--label", "x", "--push", "ctx")
    parts = message.split("; ")
    assert parts[0].startswith("--platform: unknown architecture 'foo'")
    assert parts[1].startswith("invalid --tag 'a:b c'")
    assert parts[2:] == ["--build-arg: '1' is not a NAME (A-Z a-z 0-9 _, not starting with a digit)",
                         "--label: 'x' is not KEY=VALUE"]


def test_build_arg_values_are_never_repeated(capsys, monkeypatch):
    """Build-arg values may be secrets: a message names the arg, never its value."""
    secret = "hunter2-" + os.fsdecode(b"\xff")
    monkeypatch.setenv("NPM_TOKEN", secret)
    for argv in (["--build-arg", "1X=hunter2"], ["--build-arg", f"TOKEN={secret}"], ["--build-arg", "NPM_TOKEN"]):
        message = one_error(capsys, "plan", *argv, "ctx")
        assert "hunter2" not in message and message.startswith("--build-arg")


@pytest.mark.parametrize("argv,message", [
    (["--push"], "--push: name where to push with -t/--tag"),
    (["--platform", "darwin/arm64"], "--platform: platform 'darwin/arm64': archfleet builds Linux images only "
                                     "(no engine here runs darwin containers); use linux/arm64"),
    (["--platform", "windows(10.0.17763)/amd64"], "--platform: platform 'windows(10.0.17763)/amd64': archfleet "
                                                  "builds Linux images only (no engine here runs windows containers); "
                                                  "use linux/amd64"),
    (["--insecure-registry", "reg.lan:70000"], "--insecure-registry 'reg.lan:70000': port 70000 is not 1-65535"),
    (["--insecure-registry", "http://reg.lan"], "--insecure-registry 'http://reg.lan': give HOST[:PORT] only, "
                                                "e.g. 10.0.0.5:5000"),
    (["--strategy", "linux/arm65=native"], "--strategy 'linux/arm65=native': unknown architecture 'arm65'"),
    (["--node", "linux/arm64=native@"], "--node 'linux/arm64=native@': name a node ([PLATFORM=][STRATEGY@]NODE)"),
])
def test_flag_rules(capsys, argv, message):
    assert one_error(capsys, "plan", *argv, "ctx").startswith(message)


def test_not_utf8_arguments_name_the_byte(capsys):
    """argv bytes that are not UTF-8 arrive as surrogate escapes: one line naming the byte offset."""
    bad = os.fsdecode(b"ca\xc3\xa9f\xe9")  # "caéf" then a Latin-1 byte: offset 5
    assert one_error(capsys, "plan", "--label", f"k={bad}", "ctx") == (
        f"--label {'k=' + bad!r}: not UTF-8 at byte 7; archfleet takes UTF-8 names and values")
    message = one_error(capsys, "plan", bad)
    assert message.startswith("PATH ") and "not UTF-8 at byte 5" in message


# --- pins: known nodes and strategies (checked before probing, except a strategy no plugin names) ---

def test_unknown_node_is_a_usage_error_before_probing(capsys):
    assert one_error(capsys, "plan", "--platform", "linux/arm64", "--node", "linux/arm64=nosuch", "ctx") == (
        "--node 'linux/arm64=nosuch': no node named 'nosuch' (known: local; see archfleet ls)")


def test_pin_for_a_platform_not_built(capsys):
    assert one_error(capsys, "plan", "--platform", "linux/amd64", "--node", "linux/s390x=local", "ctx") == (
        "--node 'linux/s390x=local': linux/s390x is not being built (--platform: linux/amd64)")


def test_cross_for_a_dockerfile_that_cannot_cross_compile(capsys):
    assert one_error(capsys, "plan", "--platform", "linux/arm64", "--strategy", "cross", "ctx") == (
        "--strategy 'cross': Dockerfile cannot cross-compile: no stage it builds runs on $BUILDPLATFORM or a "
        "platform of its own (use FROM --platform=$BUILDPLATFORM for the build stages, or drop --strategy cross)")


@pytest.fixture
def one_amd64_node(monkeypatch):
    async def probe(hooks, config, session, nodes=None):
        node = NodeSpec("local", max_builds=2)
        return {"local": NodeFacts(node, True, native=(parse("linux/amd64"), parse("linux/386")),
                                   builder="buildkit", cpus=2, score=1.0)}

    monkeypatch.setattr(pipeline, "probe", probe)


def test_unknown_strategy_is_a_usage_error(capsys, one_amd64_node):
    assert one_error(capsys, "plan", "--strategy", "bogus", "ctx") == (
        "--strategy 'bogus': no strategy named 'bogus' (known: cross, native, qemu, reuse; see archfleet plugins)")


def test_plan_says_why_a_platform_cannot_be_built_on_stderr(capsys, one_amd64_node):
    """Unplannable is the environment (exit 3), with the reason as the one error line (not only stdout)."""
    code, out, err = run(capsys, "plan", "--platform", "linux/s390x", "ctx")
    assert code == 3
    assert "linux/s390x: CANNOT BUILD" in out
    assert err == ("archfleet: error: no node can build linux/s390x (local: not native and no qemu-s390x handler); "
                   "run `archfleet binfmt --install linux/s390x`\n")


# --- the nodes file the CLI reads ---------------------------------------------------------------

def test_ignored_working_directory_nodes_toml_is_one_warning(capsys, tmp_path, one_amd64_node):
    (tmp_path / "nodes.toml").write_text('[nodes.local]\nengine_cli = "./tools/docker"\n')
    code, out, err = run(capsys, "plan", "ctx")
    assert code == 0 and "native@local" in out
    assert err == ("archfleet: warning: ./nodes.toml is not read unless you name it (it can run programs): "
                   "pass --nodes nodes.toml or set $ARCHFLEET_NODES if you trust it\n")


def test_debug_shows_the_traceback_of_usage_errors(capsys, monkeypatch):
    """ARCHFLEET_DEBUG=1: the one line, then the exception propagates (its traceback is shown)."""
    from archfleet.errors import UsageError

    monkeypatch.setenv("ARCHFLEET_DEBUG", "1")
    with pytest.raises(UsageError, match="--push: name where to push"):
        cli.main(["build", "--push", "ctx"])
    assert capsys.readouterr().err.startswith("archfleet: error: --push: name where to push")


def test_build_checks_pins_before_asking_the_registry(capsys, monkeypatch):
    """A pin naming no node is the input's fault: exit 2 even when the registry would fail too."""
    from archfleet.registry import RegistryClient

    async def unreachable(*args, **kwargs):
        raise AssertionError("the registry was asked before the pins were checked")

    monkeypatch.setattr(RegistryClient, "check_access", unreachable)
    assert one_error(capsys, "build", "--node", "nosuch", "-t", "127.0.0.1:5999/cli/x:y", "--push", "ctx") == (
        "--node 'nosuch': no node named 'nosuch' (known: local; see archfleet ls)")


def test_every_registry_a_build_writes_to_is_checked_before_building(capsys, monkeypatch, tmp_path):
    """Rule: the tags' repositories and each --cache-to ref's are checked for push before
    anything is built (an unreachable cache registry found after the index moved would fail a
    published build): exit 3, one line naming the registry."""
    from archfleet.errors import RegistryUnreachable
    from archfleet.registry import RegistryClient

    asked = []

    async def check_access(self, ref, push=True):
        asked.append(ref.name)
        if ref.api_host.startswith("127.0.0.1:5999"):
            raise RegistryUnreachable("registry 127.0.0.1:5999 unreachable (http): connection refused")

    monkeypatch.setattr(RegistryClient, "check_access", check_access)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    assert one_error(capsys, "build", "--platform", "linux/amd64", "-t", "127.0.0.1:5000/cli/app:1", "--push",
                     "--cache-to", "type=registry,ref=127.0.0.1:5999/cli/cache:1", str(tmp_path), code=3) == (
        "registry 127.0.0.1:5999 unreachable (http): connection refused")
    assert sorted(asked) == ["127.0.0.1:5000/cli/app", "127.0.0.1:5999/cli/cache"]


def test_bad_input_with_a_secret_looking_build_arg_is_still_one_line(capsys, monkeypatch):
    """Rule: the warning about secret-looking build-arg names comes after the input checks, so a
    bad flag next to such an arg is still exactly one stderr line (the error)."""
    monkeypatch.setenv("NPM_TOKEN", "x")
    code, _, err = run(capsys, "build", "--build-arg", "NPM_TOKEN", "--node", "nosuch", "ctx")
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "--node" in lines[0], err


# -- --annotation and --child-tags (issue 15) -------------------------------------------------------


def test_annotations_follow_buildx_syntax():
    """buildx's ParseAnnotations: [TYPE[PLATFORM],...:]KEY=VALUE; bare = manifest; a value keeps
    its '=' and ':'."""
    from archfleet.model import Annotation

    got, problems = cli.parse_annotations(
        ["org.example.a=1", "index:org.opencontainers.image.title=x=y:z",
         "manifest[linux/arm64],manifest-descriptor:k=v"], (parse("linux/amd64"), parse("linux/arm64")))
    assert problems == []
    assert got == [Annotation("manifest", "org.example.a", "1"),
                   Annotation("index", "org.opencontainers.image.title", "x=y:z"),
                   Annotation("manifest", "k", "v", parse("linux/arm64")),
                   Annotation("manifest-descriptor", "k", "v")]


@pytest.mark.parametrize("value,rule", [
    ("nothing", "expected [TYPE:]KEY=VALUE"),
    ("index-descriptor:k=v", "index-descriptor annotations exist only in an OCI layout output"),
    ("layer:k=v", "unknown type 'layer'"),
    ("index[linux/amd64]:k=v", "drop the [PLATFORM]"),
    ("manifest[linux/s390x]:k=v", "linux/s390x is not a platform being built"),
    ("manifest[windows/amd64]:k=v", "--annotation 'manifest[windows/amd64]:k=v': "),
    ("manifest:=v", "the KEY is empty"),
])
def test_a_bad_annotation_is_one_line_exit_2(capsys, value, rule):
    got = one_error(capsys, "build", "--platform", "linux/amd64", "-t", "reg.io/app:1", "--push",
                    "--annotation", value, "ctx")
    assert got.startswith(f"--annotation {value!r}") and rule in got


def test_annotations_and_child_tags_need_push(capsys):
    assert one_error(capsys, "build", "--annotation", "k=v", "ctx") == (
        "--annotation: annotations go on what is pushed; add --push")
    assert one_error(capsys, "build", "--child-tags", "-t", "reg.io/app:1", "ctx") == (
        "--child-tags: child tags are pushed; add --push")


def test_child_tags_alone_are_the_seed_style_and_a_template_is_checked_for_every_platform_and_tag():
    from archfleet.reference import SEED_CHILD_TAGS, parse_reference

    request = cli._request_from("ctx", ("linux/amd64,linux/arm/v7",), ("reg.io/app:1",), None, (), (), None, True,
                                False, True, "auto", None, (), False, None, child_tags=SEED_CHILD_TAGS)
    assert request.child_tags == "{tag}-{platform}"
    refs = [parse_reference("reg.io/app:1")]
    arm6, arm7 = parse("linux/arm/v6"), parse("linux/arm/v7")
    with pytest.raises(cli.UsageError, match="linux/arm/v6 and linux/arm/v7 would both be tagged '1-arm'"):
        cli.check_child_tags("{tag}-{arch}", refs, [arm6, arm7])
    cli.check_child_tags("{tag}-{arch}{variant}", refs, [arm6, arm7])
    with pytest.raises(cli.UsageError, match="which -t names for the index"):
        cli.check_child_tags("{tag}", refs, [arm7])
    with pytest.raises(cli.UsageError, match="that is a path, not a template"):
        cli.check_child_tags("ctx", refs, [arm7])


def test_child_tags_given_as_a_flag_before_path_or_with_equals(capsys, monkeypatch):
    """click's optional value: `--child-tags PATH` would take PATH; the error says so."""
    got = one_error(capsys, "build", "--platform", "linux/amd64", "-t", "reg.io/app:1", "--push",
                    "--child-tags", "ctx")
    assert "--child-tags 'ctx': that is a path, not a template" in got and "--child-tags=TEMPLATE" in got


@pytest.mark.parametrize("value", ["/nonexistent/docker", "no-such-docker-cli", "ctx/Dockerfile"])
def test_an_engine_cli_that_is_no_program_is_bad_input(capsys, monkeypatch, value):
    """Rule (bad input: one line naming the flag, exit 2, before anything is probed): a missing
    path, a name not on PATH, a file that is not executable. It was probed and reported as
    'no engine CLI with BuildKit: /nonexistent/docker: /nonexistent/docker: command not found', exit 3."""
    for how in ("flag", "env"):
        argv = ["build", "--platform", "linux/amd64", "ctx"]
        if how == "flag":
            argv[1:1] = ["--engine-cli", value]
        else:
            monkeypatch.setenv("ARCHFLEET_ENGINE_CLI", value)
        assert one_error(capsys, *argv) == (f"--engine-cli {value!r} (or $ARCHFLEET_ENGINE_CLI): no such program; "
                                            "name a docker CLI (e.g. /usr/bin/docker) or podman")
        monkeypatch.delenv("ARCHFLEET_ENGINE_CLI", raising=False)


@pytest.mark.parametrize("command", ["build", "plan"])
def test_the_help_says_the_nodes_file_order_the_code_follows(command, capsys):
    """Rule (inventory.find_nodes_file, docs/cli.md): --nodes, $ARCHFLEET_NODES, then the user
    config dir; ./nodes.toml only when named. The --help text listed ./nodes.toml as a default
    (found by the fresh-user helper)."""
    assert cli.main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "./nodes.toml only when named" in text and "$ARCHFLEET_NODES, ./nodes.toml" not in text
