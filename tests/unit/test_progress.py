"""Progress output: text from builds and users is shown literally (never parsed as rich markup),
and a reporter that fails never fails the build (archfleet.progress's docstring)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from archfleet.model import Option, PlatformResult
from archfleet.planner import Plan, Scheduled
from archfleet.platforms import parse
from archfleet.progress import GuardedReporter, PlainReporter, QuietReporter, Reporter, TTYReporter, guard

AMD, ARM = parse("linux/amd64"), parse("linux/arm64")

MARKUP = ["[/]", "[/usr]", "[bold]", "[bold red]x[/bold red]", "[link=http://x]y", ":smile:"]


def console() -> Console:
    return Console(file=io.StringIO(), record=True, width=400, force_terminal=False, color_system=None)


class Summary:
    def __init__(self, results, tags):
        self.results, self.tags = results, tags
        self.index_digest, self.seconds = "sha256:" + "0" * 64, 1.5


@pytest.mark.parametrize("text", MARKUP)
def test_markup_through_every_tty_method_is_shown_literally(text):
    con = console()
    opt = Option(AMD, f"strat{text}", f"node{text}", 1.0)
    other = Option(ARM, "native", f"n{text}", 2.0)
    tty = TTYReporter(console=con)
    try:
        tty.planned(Plan((Scheduled(opt, 0, 1), Scheduled(other, 0, 2)), ()))
        tty.status(opt, "building")
        tty.log(opt, f"#5 [2/2] RUN sed -i 's/{text}/-/g' /etc/motd")
        tty.event(f"verifying {text}")
        tty.warning(f"left out {text}")
        tty.status(other, f"waiting {text}")
        tty.replanned(other, Option(ARM, "qemu", f"m{text}", 3.0), f"engine gone {text}")
        con.print(tty._render())
        tty.failed(opt, f"exit code 1 [{text}]")
        con.print(tty._render())
        tty.done(other, PlatformResult(ARM, other, 1.0, digest=f"sha256:{text}"))
        tty.finished(Summary([PlatformResult(ARM, other, 1.0, digest=f"sha256:{text}")], [f"reg/app:{text}"]))
    finally:
        tty.close()
    out = con.export_text()
    assert f"RUN sed -i 's/{text}/-/g' /etc/motd" in out
    assert f"verifying {text}" in out
    assert f"warning: left out {text}" in out
    assert f"node{text}" in out and f"strat{text}" in out
    assert f"exit code 1 [{text}]" in out
    assert f"pushed to reg/app:{text}" in out


def test_tty_live_display_survives_a_row_that_cannot_be_drawn():
    con = console()
    tty = TTYReporter(console=con)
    try:
        tty.rows["broken"] = object()  # not a Row: drawing it raises
        from archfleet.progress import _Live

        con.print(_Live(tty))
    finally:
        tty.rows.clear()
        tty.close()
    assert "(progress display failed: AttributeError" in con.export_text()


class Raising(Reporter):
    def __init__(self):
        self.closed = 0

    def log(self, option, line):
        raise RuntimeError("display broke")

    def close(self):
        self.closed += 1


def test_guarded_reporter_swallows_failures_and_warns_once():
    stream = io.StringIO()
    inner = Raising()
    g = GuardedReporter(inner, stream)
    opt = Option(AMD, "native", "local", 1.0)
    g.log(opt, "line 1")
    g.log(opt, "line 2")
    g.status(opt, "building")
    g.close()
    assert stream.getvalue().splitlines() == [
        "archfleet: warning: progress output failed in log() (RuntimeError: display broke); continuing without it"]
    assert inner.closed == 1  # closed once when it failed, then replaced


def test_failed_tty_reporter_falls_back_to_plain_output():
    stream = io.StringIO()
    tty = TTYReporter(console=console())
    g = GuardedReporter(tty, stream)
    opt = Option(AMD, "native", "local", 1.0)
    tty.log = lambda option, line: (_ for _ in ()).throw(RuntimeError("boom"))
    g.log(opt, "#5 0.1 hello")
    g.status(opt, "pushing")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("continuing with plain output")
    assert lines[1] == "[linux/amd64@local] #5 0.1 hello"  # the failed call is repeated in plain
    assert lines[2].startswith("[linux/amd64@local] pushing (native, ")
    assert not tty.live.is_started


def test_plain_output_that_cannot_be_written_is_dropped():
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    g = guard(PlainReporter(Closed()))
    g.event("verifying")  # no exception
    g.status(Option(AMD, "native", "local", 1.0), "building")


def test_guard_is_idempotent_and_accepts_none():
    g = guard(QuietReporter())
    assert guard(g) is g
    guard(None).event("nothing happens")


def test_quiet_shows_warnings_but_not_failures_the_final_line_repeats():
    stream = io.StringIO()
    quiet = guard(QuietReporter(stream))
    opt = Option(AMD, "native", "local", 1.0)
    quiet.status(opt, "building")
    quiet.log(opt, "#5 0.1 output")
    quiet.failed(opt, "build failed: exit code: 1")
    quiet.warning("left out (--allow-partial): linux/amd64 failed on native@local: build failed: exit code: 1")
    assert stream.getvalue() == ("archfleet: warning: left out (--allow-partial): linux/amd64 failed on native@local: "
                                 "build failed: exit code: 1\n")
