"""cli.main's mapping of outcomes to exit codes and one-line errors (docs/cli.md): an
ArchfleetError's own code, 130 for Ctrl-C (with what could not be stopped, if anything), 70 for a
bug; ARCHFLEET_DEBUG=1 shows the traceback."""

from __future__ import annotations

import pytest

from archfleet import cli
from archfleet.errors import BuildFailed, Interrupted, PlatformsFailed, RegistryRefused, UsageError

from stubs import AMD


def main_raising(monkeypatch, exc):
    def boom(*args, **kwargs):
        raise exc
    monkeypatch.setattr(cli.cli, "main", boom)
    return cli.main([])


@pytest.mark.parametrize("exc, code, line", [
    (UsageError("--tag: 'a@b' is not a tag"), 2, "archfleet: error: --tag: 'a@b' is not a tag"),
    (PlatformsFailed("linux/amd64 failed on native@local: denied", ((AMD, RegistryRefused("denied")),)), 3,
     "archfleet: error: linux/amd64 failed on native@local: denied"),
    (PlatformsFailed("linux/amd64 failed on native@local: build failed: x", ((AMD, BuildFailed("x")),)), 1,
     "archfleet: error: linux/amd64 failed on native@local: build failed: x"),
    (Interrupted("interrupted after the index sha256:ab was pushed to reg/app:1"), 130,
     "archfleet: error: interrupted after the index sha256:ab was pushed to reg/app:1"),
    (KeyboardInterrupt(), 130, "archfleet: error: interrupted"),
    (KeyboardInterrupt("interrupted while the index was being pushed to reg/app:1: the tags may already point at "
                       "the new index"), 130,
     "archfleet: error: interrupted while the index was being pushed to reg/app:1: the tags may already point at "
     "the new index"),
    (RuntimeError("boom"), 70,
     "archfleet: error: internal error: RuntimeError: boom (ARCHFLEET_DEBUG=1 shows the traceback)"),
])
def test_exit_code_and_one_line(monkeypatch, capsys, exc, code, line):
    monkeypatch.delenv("ARCHFLEET_DEBUG", raising=False)
    assert main_raising(monkeypatch, exc) == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_debug_shows_the_traceback_of_an_internal_error(monkeypatch):
    monkeypatch.setenv("ARCHFLEET_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main_raising(monkeypatch, RuntimeError("boom"))


def test_debug_shows_the_traceback_of_an_archfleet_error_after_its_line(monkeypatch, capsys):
    monkeypatch.setenv("ARCHFLEET_DEBUG", "1")
    with pytest.raises(BuildFailed):
        main_raising(monkeypatch, BuildFailed("build failed: x"))
    assert capsys.readouterr().err == "archfleet: error: build failed: x\n"


def build_interrupted(monkeypatch, tmp_path, published: bool) -> int:
    from archfleet import pipeline

    from stubs import CTX

    async def fake_build(hooks, request, config, reporter, session, state=None):
        if published:  # the index PUT answered, then Ctrl-C (history, session end, ...)
            state.index_digest, state.tags = "sha256:" + "ab" * 32, ("127.0.0.1:5000/exec/app:1",)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "build", fake_build)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ARCHFLEET_DEBUG", raising=False)
    return cli.main(["build", "--progress", "plain", "-t", "127.0.0.1:5000/exec/app:1", str(CTX)])


def test_ctrl_c_after_the_index_was_pushed_says_the_tags_moved(monkeypatch, tmp_path, capsys):
    assert build_interrupted(monkeypatch, tmp_path, published=True) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"archfleet: error: interrupted after the index sha256:{'ab' * 32} was pushed to 127.0.0.1:5000/exec/app:1"]


def test_ctrl_c_before_anything_was_published_is_a_plain_interrupt(monkeypatch, tmp_path, capsys):
    assert build_interrupted(monkeypatch, tmp_path, published=False) == 130
    assert capsys.readouterr().err.splitlines() == ["archfleet: error: interrupted"]


def test_debug_adds_no_traceback_to_an_interrupt(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ARCHFLEET_DEBUG", "1")
    assert main_raising(monkeypatch, Interrupted("interrupted")) == 130
    assert capsys.readouterr().err == "archfleet: error: interrupted\n"
