"""What a local engine CLI's --version printed, kept by the file's identity (archfleet.cliversions):
the probe reads it instead of starting the CLI while the file is the same, and asks again once
it is another (issue 17: Debian's docker 20.10 takes ~18 ms to answer)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time

import pytest

from archfleet import cachedir, cliversions, engine
from archfleet.learn import Lessons, keep
from archfleet.model import CliVersion, NodeFacts, NodeSpec
from archfleet.transport import Completed

V20 = "Docker version 20.10.24+dfsg1, build 297e128"
NO_PLUGINS_20 = 'client={"Debug":false,"Context":"default","Plugins":[],"Warnings":null}'
DAEMON = "version=20.10.24+dfsg1 security=name=seccomp,profile=default"


@pytest.fixture
def cli(tmp_path):
    """A copy of a real program (an ELF file): its identity is what the cache keys."""
    path = tmp_path / "docker"
    shutil.copy2("/bin/true", path)
    return str(path)


def kept(path: str) -> None:
    cliversions.store([CliVersion(path, cliversions.identity(path), (V20,))])


def test_an_answer_is_recalled_while_the_file_is_the_same(cli):
    kept(cli)
    assert cliversions.recall(cli, cliversions.identity(cli)) == CliVersion(cli, cliversions.identity(cli), (V20,))


@pytest.mark.parametrize("change", ["replaced", "rewritten", "touched"])
def test_an_answer_is_forgotten_once_the_file_is_another(cli, change):
    """A new binary (package upgrade: a new inode; rewritten in place: size and times; touched:
    its times) is asked again."""
    kept(cli)
    if change == "replaced":
        shutil.copy2(cli, cli + ".new")
        os.replace(cli + ".new", cli)
    elif change == "rewritten":
        with open(cli, "ab") as f:
            f.write(b"\0")
    else:
        st = os.stat(cli)
        os.utime(cli, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cliversions.recall(cli, cliversions.identity(cli)) is None


@pytest.mark.parametrize("entry", ["not json", {"identity": 1, "tail": 2}, "x", [], {"identity": "IDENT", "tail": "4"},
                                   {"identity": "IDENT", "tail": [4]}, {"identity": "IDENT", "tail": ["x"]},
                                   {"identity": "IDENT", "tail": ["x"], "at": "soon"},
                                   {"identity": "IDENT", "tail": ["x"], "at": 4e12},  # dated ahead: a clock set back
                                   {"identity": "IDENT", "tail": ["x"], "at": float("inf")}])
def test_a_cache_of_another_shape_recalls_nothing(cli, entry):
    """A tail that is a string was read as its characters, and an entry dated ahead was kept
    past its day (both found by the fresh-user helpers); an entry without its time is not
    trusted either."""
    cachedir.cli_versions().parent.mkdir(parents=True, exist_ok=True)
    if isinstance(entry, dict) and entry.get("identity") == "IDENT":
        entry = dict(entry, identity=list(cliversions.identity(cli)))
    text = entry if isinstance(entry, str) and entry == "not json" else json.dumps({cli: entry})
    cachedir.cli_versions().write_text(text)
    assert cliversions.recall(cli, cliversions.identity(cli)) is None


def test_an_answer_is_asked_again_after_a_day(cli, monkeypatch):
    """A program may choose what to run by its environment under the same file: a day bounds
    how long a changed answer can be missed."""
    kept(cli)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + cliversions.TTL - 60)
    assert cliversions.recall(cli, cliversions.identity(cli)) is not None
    monkeypatch.setattr(time, "time", lambda: now + cliversions.TTL + 1)
    assert cliversions.recall(cli, cliversions.identity(cli)) is None


@pytest.mark.parametrize("target", ["snap", "mise"])
def test_a_link_to_a_launcher_of_another_name_is_never_kept(tmp_path, target):
    """snap's /snap/bin/docker and mise's shims are links to a launcher (snap, mise) that runs
    whichever docker its configuration names: a link to a file of another name has no identity.
    A link to a file of the same name (/usr/local/bin/docker -> .../docker) keeps one."""
    launcher = tmp_path / target
    shutil.copy2("/bin/true", launcher)
    (tmp_path / "shims").mkdir()
    (tmp_path / "shims" / "docker").symlink_to(launcher)
    assert cliversions.identity(str(tmp_path / "shims" / "docker")) is None
    real = tmp_path / "opt" / "docker"
    real.parent.mkdir()
    shutil.copy2("/bin/true", real)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "docker").symlink_to(real)
    assert cliversions.identity(str(tmp_path / "bin" / "docker")) == cliversions.identity(str(real))


def test_a_script_is_never_kept(tmp_path):
    """A script's --version is the answer of whatever it runs (a wrapper around a client that
    is upgraded under it): it has no identity, nothing is kept or read for it, it is asked."""
    script = tmp_path / "docker"
    script.write_text("#!/bin/sh\nexec /usr/bin/docker \"$@\"\n")
    script.chmod(0o755)
    assert cliversions.identity(str(script)) is None
    runs: list = []
    found = asyncio.run(engine.DOCKER.probe(_answering(runs), NodeSpec("local"), [str(script)]))
    assert (str(script), "--version") in runs and found.versions == ()


def test_a_missing_file_has_no_identity_and_recalls_nothing(tmp_path):
    assert cliversions.identity(str(tmp_path / "gone")) is None
    assert cliversions.recall(str(tmp_path / "gone"), None) is None


def _answering(runs: list):
    class T:
        node = "local"

        async def run(self, argv, **kw):
            runs.append(tuple(argv))
            if argv[1:] == ["--version"]:
                return Completed(tuple(argv), 0, (V20,))
            return Completed(tuple(argv), 0, (NO_PLUGINS_20, DAEMON))

    return T()


def test_the_probe_asks_a_local_cli_once_and_then_reads_its_answer(cli):
    """Rule: a local candidate's --version is asked (and handed to the learn stage) while none
    is kept for the file; once kept, the probe runs only ``info`` and chooses the same CLI."""
    runs: list = []
    first = asyncio.run(engine.DOCKER.probe(_answering(runs), NodeSpec("local"), [cli]))
    assert (cli, "--version") in runs
    assert first.versions == (CliVersion(cli, cliversions.identity(cli), (V20,)),)
    keep(Lessons(probed=[NodeFacts(NodeSpec("local"), True, cli_versions=first.versions)]))
    runs.clear()
    second = asyncio.run(engine.DOCKER.probe(_answering(runs), NodeSpec("local"), [cli]))
    assert runs == [(cli, "info", "--format", engine.INFO_FORMAT)]
    assert (second.cli.argv, second.cli.mode, second.cli.version, second.versions) == ((cli,), "buildkit", "20.10", ())


def test_a_nodes_cli_is_always_asked(cli):
    """A node's files are not this machine's: nothing is kept for them or read for them, even
    at the same path."""
    kept(cli)
    runs: list = []
    node = NodeSpec("n1", transport="ssh", settings={"host": "10.0.0.1"})
    found = asyncio.run(engine.DOCKER.probe(_answering(runs), node, [cli]))
    assert (cli, "--version") in runs and found.versions == ()
