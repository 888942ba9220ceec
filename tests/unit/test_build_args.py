"""Build args: a bare --build-arg NAME (value from the environment, as docker allows) reaches the
engine CLI in its environment, never in argv; names that look like secrets (BuildKit's
SecretsUsedInArgOrEnv rule) are warned about and masked in traces."""

import asyncio
from pathlib import Path

import pytest

from archfleet import buildargs, engine
from archfleet.model import BuildRequest
from archfleet.platforms import parse
from archfleet.transport import Completed

SECRET = "npm_0123456789abcdef"


@pytest.mark.parametrize("name", ["NPM_TOKEN", "GITHUB_TOKEN", "token", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY",
                                  "API_KEY", "apikey", "AUTH", "MY_CREDENTIALS", "PASSWD", "NPMTOKEN",
                                  "GITHUBTOKEN", "dbpassword", "CLIENTSECRET"])
def test_secret_looking_names(name):
    assert buildargs.looks_secret(name)


@pytest.mark.parametrize("name", ["BASE", "GOARCH", "KEYBOARD_LAYOUT", "MONKEY", "PUBLIC_KEY", "TOKEN_FILE",
                                  "KEY_VERSION", "TARGETPLATFORM", "HTTP_PROXY"])
def test_ordinary_names(name):
    # BuildKit's allow words (public, file, version) win; KEY counts only as a whole word
    assert not buildargs.looks_secret(name)


def argv_for(build_args, env_build_args=()):
    return engine.build_argv(("docker",), "buildkit", platform=parse("linux/amd64"), dockerfile="/c/Dockerfile",
                             context="/c", tag="t", build_args=build_args, env_build_args=env_build_args)


def test_a_bare_build_arg_goes_in_the_cli_environment_never_in_argv():
    argv, env = argv_for([("NPM_TOKEN", SECRET), ("BASE", "reg/b:1")], env_build_args=("NPM_TOKEN",))
    assert ["--build-arg", "NPM_TOKEN"] == argv[argv.index("NPM_TOKEN") - 1:argv.index("NPM_TOKEN") + 1]
    assert not any(SECRET in word for word in argv)
    assert env == {"DOCKER_BUILDKIT": "1", "NPM_TOKEN": SECRET}
    assert "BASE=reg/b:1" in argv  # an explicit value stays where docker build has it


def test_names_the_engine_cli_reads_itself_stay_in_argv():
    # exporting PATH or DOCKER_HOST to the CLI would change how it runs on the node
    argv, env = argv_for([("PATH", "/x"), ("DOCKER_HOST", "tcp://h:1"), ("http_proxy", "http://p:3128")],
                         env_build_args=("PATH", "DOCKER_HOST", "http_proxy"))
    assert "PATH=/x" in argv and "DOCKER_HOST=tcp://h:1" in argv and "http_proxy=http://p:3128" in argv
    assert env == {"DOCKER_BUILDKIT": "1"}


def test_engine_build_hands_the_bare_value_to_the_transport_as_environment(tmp_path):
    seen = {}

    class Recording:
        node = "n1"

        async def run(self, argv, *, env=None, stdin=None, on_line=None, timeout=None):
            seen["argv"], seen["env"] = list(argv), dict(env or {})
            on_line("writing image sha256:" + "a" * 64)
            return Completed(tuple(argv), 0, ())

    request = BuildRequest(tmp_path, tmp_path / "Dockerfile", [parse("linux/amd64")],
                           build_args=[("NPM_TOKEN", SECRET)], env_build_args=("NPM_TOKEN",))
    cli = engine.EngineCLI(("docker", "buildx"), "buildx")
    image = asyncio.run(engine.build(Recording(), cli, platform=parse("linux/amd64"), request=request, tag="t"))
    assert image == "sha256:" + "a" * 64
    assert seen["env"]["NPM_TOKEN"] == SECRET and not any(SECRET in w for w in seen["argv"])


def test_the_cli_keeps_a_bare_name_apart_and_the_last_value_wins(tmp_path, monkeypatch):
    from archfleet.cli import _request_from

    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    monkeypatch.setenv("NPM_TOKEN", SECRET)
    monkeypatch.delenv("UNSET_ONE", raising=False)

    def request(*build_arg):
        return _request_from(str(tmp_path), ("linux/amd64",), (), None, build_arg, (), None, False, False, True,
                             "plain", None, (), False, None)

    r = request("NPM_TOKEN", "BASE=x", "UNSET_ONE")
    assert r.build_args == (("NPM_TOKEN", SECRET), ("BASE", "x")) and r.env_build_args == ("NPM_TOKEN",)
    r = request("NPM_TOKEN", "NPM_TOKEN=literal")
    assert r.build_args == (("NPM_TOKEN", "literal"),) and r.env_build_args == ()


def test_traces_of_a_request_never_show_a_build_arg_value(tmp_path):
    # pluggy's tracing prints a BuildRequest by its repr: names only, since any value may be a
    # token whatever its name
    r = BuildRequest(tmp_path, tmp_path / "Dockerfile", [parse("linux/amd64")],
                     build_args=[("NPM_TOKEN", SECRET), ("BASE", "reg/b:1")])
    assert SECRET not in repr(r) and "reg/b:1" not in repr(r)
    assert "('NPM_TOKEN', '***'), ('BASE', '***')" in repr(r)


def test_build_warns_once_on_secret_looking_build_args(tmp_path, monkeypatch, capsys):
    import archfleet.pipeline
    from archfleet.cli import main
    from archfleet.errors import UsageError

    (tmp_path / "Dockerfile").write_text("FROM scratch\n")

    async def stop(*a, **kw):
        raise UsageError("stopped before building (test)")

    monkeypatch.setattr(archfleet.pipeline, "build", stop)
    monkeypatch.setenv("NPM_TOKEN", SECRET)
    monkeypatch.setenv("ARCHFLEET_NODES", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    code = main(["build", "--no-local", "--progress", "plain", "--platform", "linux/amd64",
                 "--build-arg", "NPM_TOKEN", "--build-arg", "DB_PASSWORD=x", "--build-arg", "BASE=y", str(tmp_path)])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    warnings = [l for l in err if "warning" in l]
    assert len(warnings) == 1 and "NPM_TOKEN, DB_PASSWORD" in warnings[0] and "BASE" not in warnings[0]
    assert SECRET not in "\n".join(err)
