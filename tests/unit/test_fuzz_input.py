"""Fuzzing the input checks: malformed nodes.toml files and bad command lines, generated here from
a small grammar with seeded randomness (a valid document or command, then one or more mutations
that each make it invalid). Every one must end with exit 2 and exactly one stderr line, no
traceback, before any build (the engine, the registry and the executor are stubs that fail the
test if reached). With ARCHFLEET_DEBUG=1 the traceback is still shown.
"""

from __future__ import annotations

import os
import random
import string

import pytest

from archfleet import cli, pipeline
from archfleet.model import NodeFacts, NodeSpec
from archfleet.platforms import parse
from archfleet.registry import RegistryClient

CASES = 48  # of each kind; the brief asks for at least 40


class Reached(AssertionError):
    pass


@pytest.fixture(autouse=True)
def sandbox(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in ("ARCHFLEET_NODES", "ARCHFLEET_ENGINE_CLI", "ARCHFLEET_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")  # no $BUILDPLATFORM stage
    (tmp_path / "key").write_text("not really a key\n")

    async def probe(hooks, config, session, nodes=None):  # an amd64 node, so offers and pins can be checked
        node = NodeSpec("local", max_builds=2)
        return {"local": NodeFacts(node, True, native=(parse("linux/amd64"), parse("linux/386")),
                                   builder="buildkit", cpus=2, score=1.0)}

    async def check_access(*args, **kwargs):
        raise Reached("the registry was contacted for an invalid command line")

    def executor(*args, **kwargs):
        raise Reached("a build started for an invalid command line")

    monkeypatch.setattr(pipeline, "probe", probe)
    monkeypatch.setattr(pipeline, "Executor", executor)
    monkeypatch.setattr(RegistryClient, "check_access", check_access)
    return tmp_path


def assert_one_line_exit_2(capsys, argv, what):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("archfleet: error: "), (
        f"{what}\nargv={argv!r}\nexit {code}\nstderr={err!r}")
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


# --- nodes.toml ---------------------------------------------------------------------------------

NAME_CHARS = string.ascii_lowercase + string.digits + "-_."
VALID = {  # key -> generator of a valid TOML value
    "host": lambda r: repr_s(r.choice(["192.0.2.%d" % r.randint(1, 254), "builder%d.lan" % r.randint(1, 99),
                                       "pi%d" % r.randint(1, 9)])),
    "port": lambda r: str(r.randint(1, 65535)),
    "user": lambda r: repr_s(r.choice(["builder", "ci", "root"])),
    "arch": lambda r: repr_s(r.choice(["linux/arm64", "aarch64", "armhf", "linux/s390x", "x86_64"])),
    "max_builds": lambda r: str(r.randint(1, 64)),
    "enabled": lambda r: r.choice(["true", "false"]),
    "host_key_policy": lambda r: repr_s(r.choice(["strict", "accept-new"])),
    "docker_host": lambda r: repr_s(r.choice(["unix:///var/run/docker.sock", "tcp://10.0.0.5:2375"])),
    "engine_cli": lambda r: repr_s(r.choice(["/usr/bin/docker", "docker"])),
    "labels": lambda r: '{ site = "lab" }',
    "identity": lambda r: repr_s("key"),
}
WRONG_TYPE = {  # key -> values of the wrong type or outside the key's range
    "host": ["22", "true", '["a"]', '"-oProxyCommand=x"', '"a b"', '"$(id)"', '""'],
    "port": ['"22"', "0", "65536", "-1", "22.0", "true", "99999999"],
    "user": ['"bad user"', '"-x"', "7", '""'],
    "arch": ['"linux/arm65"', '"darwin/arm64"', '"windows/amd64"', "64", '"linux/amd64/v9"', '""'],
    "max_builds": ["0", "65", '"2"', "1.5", "false"],
    "enabled": ['"yes"', "1", "[]"],
    "host_key_policy": ['"none"', '"off"', "false", '"Strict"'],
    "docker_host": ['"tcp://10.0.0.5"', '"unix://relative/sock"', '"ssh://node"', '"tcp://h:0"',
                    '"tcp://h:70000"', "2375"],
    "engine_cli": ['""', '"   "', "1", "[\"docker\"]"],
    "labels": ['"site=lab"', "{ site = 1 }", "[1, 2]", '{ a = { b = "c" } }'],
    "identity": ['"no-such-key"', '"/nonexistent/id_ed25519"', "false"],
}


def repr_s(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def valid_document(r: random.Random) -> tuple[list[list[str]], list[str]]:
    """A valid nodes.toml as tables of lines, and the node names used."""
    names = []
    tables = []
    for _ in range(r.randint(1, 3)):
        name = r.choice(string.ascii_lowercase) + "".join(r.choice(NAME_CHARS) for _ in range(r.randint(0, 8)))
        if name in names or name == "local":
            continue
        names.append(name)
        keys = ["host"] + r.sample([k for k in VALID if k != "host"], r.randint(0, 5))
        tables.append([f"[nodes.{name}]"] + [f"{k} = {VALID[k](r)}" for k in keys])
    if r.random() < 0.3:
        tables.insert(0, ["[nodes.local]", f"max_builds = {r.randint(1, 8)}"])
    return tables, names


def mutate_document(r: random.Random, tables: list[list[str]]) -> tuple[str | bytes, str]:
    """Apply one mutation that makes the document invalid; returns the text and what was done."""
    ssh = [t for t in tables if t[0] != "[nodes.local]"]
    table = r.choice(ssh)
    kind = r.choice(["wrong value", "unknown key", "bad name", "missing host", "not utf-8", "syntax",
                     "duplicate", "control char", "local takes ssh key", "top level", "nested"])
    if kind == "wrong value":
        key = r.choice(list(WRONG_TYPE))
        table[:] = [l for l in table if not l.startswith(f"{key} =")] + [f"{key} = {r.choice(WRONG_TYPE[key])}"]
    elif kind == "unknown key":
        table.append("".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(3, 10))) + "_x = 1")
    elif kind == "bad name":
        junk = "".join(r.choice(";|&$` '()<>*?!\\/") for _ in range(r.randint(1, 4)))
        table[0] = "[nodes." + repr_s(r.choice(["", "-", "_", "."]) + junk + "n") + "]"
    elif kind == "missing host":
        table[:] = [l for l in table if not l.startswith("host =")]
    elif kind == "syntax":
        breakage = r.choice(["header", "string", "value", "garbage", "equals"])
        if breakage == "header":
            table[0] = table[0].rstrip("]")
        elif breakage == "string":
            table.append('user = "unterminated')
        elif breakage == "value":
            table.append("port = ")
        elif breakage == "garbage":
            table.append(r.choice(["= oops", "[[", "}{", "port == 22", "host = 'a' 'b'"]))
        else:
            table.append("portnumber 22")
    elif kind == "duplicate":
        tables.append(list(table))
    elif kind == "control char":
        escape = r.choice(["\\n", "\\t", "\\u0000", "\\u001b", "\\r"])  # TOML escapes of control characters
        table.append('user = "ci' + escape + '"')
    elif kind == "local takes ssh key":
        tables.append(["[nodes.local]", r.choice(["host = \"h\"", "port = 22", "user = \"u\"", "arch = \"x86_64\""])])
    elif kind == "top level":
        tables.insert(0, [r.choice(["colour = \"red\"", "nodes = 1", "[other]"])])
    elif kind == "nested":
        table.append("labels = " + "[" * 3000 + "]" * 3000)
    text = "\n".join("\n".join(t) for t in tables) + "\n"
    if kind == "not utf-8":
        data = text.encode()
        at = r.randint(0, len(data))
        return data[:at] + r.choice([b"\xff", b"\xe9", b"\xc3(", b"\x80"]) + data[at:], kind
    return text, kind


@pytest.mark.parametrize("seed", range(CASES))
def test_malformed_nodes_toml(seed, sandbox, capsys):
    r = random.Random(f"nodes-{seed}")
    tables, _ = valid_document(r)
    text, kind = mutate_document(r, tables)
    path = sandbox / f"nodes-{seed}.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    command = r.choice([["ls", "--no-local"], ["plan", "ctx"], ["doctor", "--no-local"]])
    line = assert_one_line_exit_2(capsys, [*command, "--nodes", str(path)], f"{kind}:\n{text!r}")
    assert str(path) in line


# --- command lines ------------------------------------------------------------------------------

PLATFORMS = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x", "linux/ppc64le", "linux/386"]


def valid_command(r: random.Random) -> tuple[list[str], list[str]]:
    """A valid plan/build command line (it would plan, not build: no --push), and its platforms."""
    platforms = r.sample(PLATFORMS, r.randint(1, 3))
    argv = [r.choice(["plan", "build"]), "--platform", ",".join(platforms)]
    if r.random() < 0.7:
        argv += ["-t", f"127.0.0.1:5000/cli/fuzz:{r.choice(['v1', 'latest', 'a.b-c_d'])}"]
    for _ in range(r.randint(0, 2)):
        argv += ["--build-arg", f"{r.choice(['BASE', 'VERSION', 'X_1'])}={r.choice(['1', 'a b', ''])}"]
    for _ in range(r.randint(0, 2)):
        argv += ["--label", "org.example." + r.choice(["a", "b"]) + "=" + r.choice(["x", "C:\\", ""])]
    if r.random() < 0.3:
        argv += ["--progress", r.choice(["plain", "quiet"])]
    return argv, platforms


def bad_platform(r):
    return r.choice([
        "linux/" + "".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(1, 8))) + "z",
        r.choice(["darwin", "windows", "freebsd", "macos"]) + "/" + r.choice(["amd64", "arm64"]),
        r.choice(["linux/amd64/v", "linux/arm/v", "linux/arm64/v"]) + str(r.randint(10, 99)),
        "linux//arm64", "linux/arm64/v8/x", "/", "linux/s390x/v2", "linux/arm64;id", "windows(10.0.17763)/amd64",
    ])


def bad_tag(r):
    repo = "127.0.0.1:5000/cli/fuzz"
    return r.choice([
        f"{repo}@sha256:" + "".join(r.choice("0123456789abcdef") for _ in range(64)),
        f"{repo}:v1@sha256:" + "".join(r.choice("0123456789abcdef") for _ in range(64)),
        f"{repo}:" + "a" * r.randint(129, 200),
        f"{repo}:" + "a" * r.randint(115, 128),  # the child tag <tag>-linux-... is over 128
        f"{repo}:v" + r.choice("éåßü€") + "1",
        f"127.0.0.1:{r.randint(65536, 999999)}/app:1",
        f"{repo.upper()}:1", f"{repo}:-x", f"{repo}: x", "", f"{repo}:", f"{repo}/:1",
    ])


def mutate_command(r: random.Random, argv: list[str], platforms: list[str]) -> tuple[list[str], list[str]]:
    done = []
    for _ in range(r.randint(1, 3)):
        kind = r.choice(["platform", "tag", "path", "file", "build-arg", "label", "push", "metadata", "report",
                         "unknown option", "progress", "missing value", "not utf-8", "insecure", "node",
                         "strategy", "pin platform", "cross"])
        done.append(kind)
        if kind == "platform":
            argv += ["--platform", bad_platform(r)]
        elif kind == "tag":
            argv += ["-t", bad_tag(r)]
        elif kind == "path":
            argv += ["no-such-dir-" + str(r.randint(0, 999))]
        elif kind == "file":
            argv += ["-f", "missing-" + str(r.randint(0, 999)) + ".Dockerfile"]
        elif kind == "build-arg":
            argv += ["--build-arg", r.choice(["1X=2", "A-B=c", "=v", "A B=c", "é=1"])]
        elif kind == "label":
            argv += ["--label", r.choice(["novalue", "=x", ""])]
        elif kind == "push":
            argv = [a for i, a in enumerate(argv) if a != "-t" and (i == 0 or argv[i - 1] != "-t")] + ["--push"]
        elif kind == "metadata":
            argv += ["--metadata-file", r.choice(["nope/m.json", "/proc/m.json", "ctx"])]
        elif kind == "report":
            argv += ["--report", r.choice(["nope/r.html", "/proc/r.html", "ctx"])]
        elif kind == "unknown option":
            argv += ["--" + "".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(3, 9))) + "-x"]
        elif kind == "progress":
            argv += ["--progress", r.choice(["fancy", "", "TTY", "json"])]
        elif kind == "missing value":
            argv += [r.choice(["-t", "--platform", "--build-arg", "-f", "--node"])]
            break  # it takes the next word, so it must be last
        elif kind == "not utf-8":
            flag = r.choice(["--label", "--build-arg", "-t", "--platform"])
            argv += [flag, "k=" + os.fsdecode(bytes([r.choice([0x80, 0xe9, 0xff])])) + "v"]
        elif kind == "insecure":
            argv += ["--insecure-registry", r.choice(["http://reg.lan", "reg.lan:0", "reg lan", "reg.lan:99999"])]
        elif kind == "node":
            argv += ["--node", f"{r.choice(platforms)}=" + r.choice(["nosuch", "native@nosuch", "n1"])]
        elif kind == "strategy":
            argv += ["--strategy", r.choice(["bogus", f"{r.choice(platforms)}=warp", "emulate"])]
        elif kind == "pin platform":
            other = next(p for p in PLATFORMS if p not in platforms)
            argv += [r.choice(["--node", "--strategy"]), f"{other}=" + r.choice(["local", "native"])]
        elif kind == "cross":
            argv += ["--strategy", "cross"]
    return argv, done


@pytest.mark.parametrize("seed", range(CASES))
def test_bad_command_line(seed, sandbox, capsys):
    r = random.Random(f"argv-{seed}")
    argv, platforms = valid_command(r)
    argv, kinds = mutate_command(r, argv, platforms)
    if argv[-1] not in ("-t", "--platform", "--build-arg", "-f", "--node"):
        argv.append("ctx") if not any(a.startswith("no-such-dir") for a in argv) else None
    assert_one_line_exit_2(capsys, argv, ", ".join(kinds))


def test_the_generators_cover_every_kind():
    """The seeds used above reach every mutation kind (so no kind silently drops out)."""
    node_kinds, argv_kinds = set(), set()
    for seed in range(CASES):
        r = random.Random(f"nodes-{seed}")
        tables, _ = valid_document(r)
        node_kinds.add(mutate_document(r, tables)[1])
        r = random.Random(f"argv-{seed}")
        argv, platforms = valid_command(r)
        argv_kinds.update(mutate_command(r, argv, platforms)[1])
    assert len(node_kinds) == 11 and len(argv_kinds) == 18, (node_kinds, argv_kinds)


@pytest.mark.parametrize("seed", range(5))
def test_debug_still_shows_the_traceback(seed, sandbox, capsys, monkeypatch):
    """ARCHFLEET_DEBUG=1: the error line, and the exception propagates (Python prints its traceback)."""
    from archfleet.errors import UsageError

    monkeypatch.setenv("ARCHFLEET_DEBUG", "1")
    r = random.Random(f"debug-{seed}")
    path = sandbox / "nodes.toml"
    path.write_text(f'[nodes.n]\nhost = "h"\nport = {r.randint(65536, 10**6)}\n')
    with pytest.raises(UsageError):
        cli.main(["ls", "--no-local", "--nodes", str(path)])
    with pytest.raises(UsageError):
        cli.main(["plan", "--platform", bad_platform(r), "ctx"])
    assert capsys.readouterr().err.count("archfleet: error: ") == 2
