import asyncio
import shlex

from archfleet.transport import LocalTransport, quote_argv

NASTY = ["$(touch /tmp/pwned)", "`id`", "a;b", "it's", 'say "hi"', "line\nbreak", "*", ""]


def test_quote_argv_keeps_every_argument_literal():
    assert shlex.split(quote_argv(["echo", *NASTY])) == ["echo", *NASTY]


def test_local_run_streams_lines_and_returns_status():
    lines = []
    done = asyncio.run(LocalTransport().run(["sh", "-c", 'printf "a\\nb\\r\\nc\\n"; printf err >&2; exit 3'],
                                            on_line=lines.append))
    assert done.returncode == 3
    assert lines == ["a", "b", "c", "err"]


def test_local_run_missing_binary():
    done = asyncio.run(LocalTransport().run(["/nonexistent/cli", "x"]))
    assert done.returncode == 127
