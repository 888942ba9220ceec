"""Telling people what a build is doing.

- ``tty`` (the default on a terminal): one live row per platform (node, strategy, state,
  elapsed, estimate), drawn with rich, then a summary table.
- ``plain`` (the default when stderr is not a terminal, e.g. CI): one line per event,
  prefixed ``[platform@node]``, with the build output streamed under it.
- ``quiet``: nothing but failures.

Everything goes to stderr; stdout is kept for results (the index digest, JSON).

Two rules hold for every reporter:

- **Progress output never fails a build.** :func:`guard` wraps a reporter so that an exception
  in any of its methods (a terminal that went away, a bug in a third-party reporter) is reported
  once as a warning line and the run goes on with plain output (or none, if that fails too).
  The executor and the pipeline guard whatever reporter they are given; ``make_reporter``
  returns a guarded one.
- **Text from users and builds is shown literally.** Build output, error messages, node and
  strategy names are passed to rich as :class:`rich.text.Text`, never as strings rich would
  parse as console markup (a build printing ``[/]`` or ``[bold]``) or emoji codes.
"""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from typing import TextIO

from .model import Option, PlatformResult

_STEP = re.compile(r"^#\d+ \[(?:[^\]]*?\s)?(\d+/\d+)\] (.*)$")


class Reporter:
    """The interface strategies and the executor report through. Every method is optional (the
    base class ignores all), and a reporter's failure never fails a build (:func:`guard`)."""

    def planned(self, plan) -> None:
        """The plan is made (a :class:`~archfleet.planner.Plan`)."""

    def event(self, text: str) -> None:
        """Something happened to the whole build (verifying, pushed TAG -> DIGEST)."""

    def warning(self, text: str) -> None:
        """Something the user should know although the build goes on (left out with --allow-partial)."""

    def log(self, option: Option, line: str) -> None:
        """One line of build output for ``option``."""

    def status(self, option: Option, state: str) -> None:
        """``option`` changed state (syncing context, building, pushing, cancelled: ...)."""

    def done(self, option: Option, result: PlatformResult) -> None:
        """``option`` finished with ``result``."""

    def failed(self, option: Option, why: str) -> None:
        """``option`` failed, ``why`` in one line."""

    def replanned(self, old: Option, new: Option, why: str) -> None:
        """``old``'s node failed; the platform goes on with ``new``."""

    def finished(self, summary) -> None:
        """The build is over (a :class:`~archfleet.pipeline.BuildSummary`)."""

    def close(self) -> None:
        """Stop drawing (the terminal is the caller's again); safe to call twice."""


class PlainReporter(Reporter):
    """One line per event to ``stream`` (stderr), prefixed ``[platform@node]``, build output under it unless ``show_logs`` is False: for CI and pipes."""
    def __init__(self, stream: TextIO | None = None, *, show_logs: bool = True):
        self.stream = stream or sys.stderr
        self.show_logs = show_logs
        self.started = time.monotonic()

    def _prefix(self, option: Option) -> str:
        return f"[{option.platform}@{option.node}]"

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def planned(self, plan) -> None:
        """One line per chosen option: platform, option, estimate, why."""
        for s in plan.chosen:
            o = s.option
            self._write(f"[archfleet] {o.platform}: {o} (est. {o.estimate:.1f}s) - {o.why}")

    def event(self, text: str) -> None:
        """``[archfleet] text``."""
        self._write(f"[archfleet] {text}")

    def warning(self, text: str) -> None:
        """``archfleet: warning: text``."""
        self._write(f"[archfleet] warning: {text}")

    def log(self, option: Option, line: str) -> None:
        """The build output line under its ``[platform@node]`` prefix."""
        if self.show_logs and line.strip():
            self._write(f"{self._prefix(option)} {line}")

    def status(self, option: Option, state: str) -> None:
        """The new state, the strategy and the seconds since the run started."""
        self._write(f"{self._prefix(option)} {state} ({option.strategy}, {time.monotonic() - self.started:.1f}s)")

    def done(self, option: Option, result: PlatformResult) -> None:
        """How long it took and the digest (or image id)."""
        what = result.digest or result.image_id or ""
        self._write(f"{self._prefix(option)} done in {result.seconds:.1f}s {what}".rstrip())

    def failed(self, option: Option, why: str) -> None:
        """``FAILED: why``."""
        self._write(f"{self._prefix(option)} FAILED: {why}")

    def replanned(self, old: Option, new: Option, why: str) -> None:
        """Where the platform goes on, and why."""
        self._write(f"{self._prefix(old)} re-planned to {new}: {why}")

    def finished(self, summary) -> None:
        """One line per platform (option, seconds, estimate, digest) and the index digest."""
        for r in summary.results:
            self._write(f"[archfleet] {r.platform}: {r.option} took {r.seconds:.1f}s "
                        f"(est. {r.option.estimate:.1f}s){' ' + r.digest if r.digest else ''}")
        if summary.index_digest:
            self._write(f"[archfleet] index {summary.index_digest} in {summary.seconds:.1f}s")


class QuietReporter(Reporter):
    """Only warnings. A failure is not repeated here: the run's final error line names every
    platform that failed and why (cli.main), so a failed quiet run prints exactly one line."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def warning(self, text: str) -> None:
        """Warnings are the one thing quiet mode prints."""
        stream = self.stream or sys.stderr
        stream.write(f"archfleet: warning: {text}\n")
        stream.flush()


class Row:
    """The live display's row for one platform: its option, state, detail, start and end, re-plans."""
    def __init__(self, option: Option):
        self.option = option
        self.state = "waiting"
        self.detail = ""
        self.started: float | None = None
        self.ended: float | None = None
        self.replans = 0


def _text(value, style: str = ""):
    """``value`` as a rich Text: shown as it is, never parsed as markup or emoji codes."""
    from rich.text import Text

    return Text(str(value), style=style)


class TTYReporter(Reporter):
    """Live rows with rich; falls back to nothing fancy if the terminal is tiny.

    ``console`` is the rich Console to draw on (default: stderr). Every cell is a
    :class:`rich.text.Text`, so build output and error messages are shown literally.
    """

    def __init__(self, console=None):
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console(stderr=True)
        self.rows: dict[str, Row] = {}
        self.events: list[str] = []
        self.live = Live(_Live(self), console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def _render(self):
        from rich.table import Table

        table = Table(box=None, expand=False, pad_edge=False, show_edge=False)
        for col in ("PLATFORM", "NODE", "STRATEGY", "STATE", "ELAPSED", "EST"):
            table.add_column(col, no_wrap=True)
        table.add_column("", overflow="ellipsis", no_wrap=True, max_width=60)
        now = time.monotonic()
        # the refresh thread draws while the event loop changes rows: iterate over a copy
        for key, row in list(self.rows.items()):
            elapsed = ((row.ended or now) - row.started) if row.started else 0.0
            style = {"done": "green", "FAILED": "red", "re-planned": "yellow"}.get(row.state.split(" ")[0], "")
            table.add_row(_text(key), _text(row.option.node), _text(row.option.strategy), _text(row.state, style),
                          _text(f"{elapsed:5.1f}s"), _text(f"{row.option.estimate:5.1f}s"), _text(row.detail))
        for e in list(self.events[-3:]):
            table.add_row("", "", "", "", "", "", _text(e))
        return table

    def _refresh(self) -> None:
        self.live.refresh()

    def _row(self, option: Option) -> Row:
        key = str(option.platform)
        row = self.rows.get(key)
        if row is None or row.option != option:
            old = row
            row = Row(option)
            if old is not None:
                row.replans = old.replans
            self.rows[key] = row
        return row

    def planned(self, plan) -> None:
        """A row per chosen option."""
        for s in plan.chosen:
            self._row(s.option)
        self._refresh()

    def event(self, text: str) -> None:
        """Shown under the rows (the last three)."""
        self.events.append(text)
        self._refresh()

    def warning(self, text: str) -> None:
        """Printed above the live rows, as a line of its own."""
        self.console.print(_text(f"warning: {text}", "yellow"))  # above the live rows, and kept

    def log(self, option: Option, line: str) -> None:
        """BuildKit's step counter (``[2/5]``) and step go into the row."""
        m = _STEP.match(line.strip())
        row = self._row(option)
        if m and row.state.startswith("building"):
            row.state = f"building {m.group(1)}"
            row.detail = m.group(2)
            self._refresh()

    def status(self, option: Option, state: str) -> None:
        """The row's state."""
        row = self._row(option)
        if row.started is None:
            row.started = time.monotonic()
        row.state, row.detail = state, ""
        self._refresh()

    def done(self, option: Option, result: PlatformResult) -> None:
        """The row turns done, with the digest."""
        row = self._row(option)
        row.state, row.ended, row.detail = "done", time.monotonic(), (result.digest or result.image_id or "")[:19]
        self._refresh()

    def failed(self, option: Option, why: str) -> None:
        """The row turns FAILED, with why."""
        row = self._row(option)
        row.state, row.ended, row.detail = "FAILED", time.monotonic(), why
        self._refresh()

    def replanned(self, old: Option, new: Option, why: str) -> None:
        """The old row says where the platform went; the new row counts the re-plan."""
        row = self._row(old)
        row.state, row.detail = "re-planned", f"-> {new}: {why}"
        self._refresh()
        nrow = self._row(new)
        nrow.replans = row.replans + 1
        nrow.state, nrow.detail = "re-planned", f"from {old}"

    def finished(self, summary) -> None:
        """Stop the live rows and print the summary table."""
        from rich.table import Table

        self.close()
        table = Table(title="archfleet build", title_justify="left")
        for col in ("platform", "node", "strategy", "estimate", "took", "digest"):
            table.add_column(col)
        for r in summary.results:
            table.add_row(_text(r.platform), _text(r.option.node), _text(r.option.strategy),
                          _text(f"{r.option.estimate:.1f}s"), _text(f"{r.seconds:.1f}s"),
                          _text((r.digest or r.image_id or "")[:19]))
        self.console.print(table)
        if summary.index_digest:
            self.console.print(_text(f"index {summary.index_digest} pushed to {', '.join(summary.tags)} "
                                     f"in {summary.seconds:.1f}s"))

    def close(self) -> None:
        """Stop the live display."""
        if self.live.is_started:
            self.live.stop()


class _Live:
    """Re-rendered on every refresh, so elapsed times tick between events. Drawn from rich's
    refresh thread too, where an exception would end the refreshing with a traceback: a table
    that cannot be drawn becomes one line saying so."""

    def __init__(self, reporter: "TTYReporter"):
        self.reporter = reporter

    def __rich__(self):
        try:
            return self.reporter._render()
        except Exception as exc:  # never a traceback from the refresh thread
            return _text(f"(progress display failed: {type(exc).__name__}: {exc})")


class GuardedReporter(Reporter):
    """A reporter whose failures never reach the build (see the module docstring).

    The first exception a method of the wrapped reporter raises is reported as one warning line
    on ``stream`` (stderr by default; with the traceback when ``ARCHFLEET_DEBUG=1``); the wrapped
    reporter is then closed (as far as it can be). A failed :class:`TTYReporter` is replaced by a
    :class:`PlainReporter` (the call that failed is repeated there); any other reporter, or the
    plain one failing in turn, by no output at all. Methods a reporter does not have are ignored.
    """

    def __init__(self, inner: Reporter, stream: TextIO | None = None):
        self.inner = inner
        self.stream = stream
        self.failures: list[BaseException] = []

    def _call(self, name: str, *args) -> None:
        method = getattr(self.inner, name, None)
        if method is None:
            return
        try:
            method(*args)
        except Exception as exc:
            self._failed(name, exc)
            if name != "close":
                method = getattr(self.inner, name, None)  # the fallback says it instead
                if method is not None:
                    try:
                        method(*args)
                    except Exception as again:
                        self._failed(name, again)

    def _failed(self, name: str, exc: Exception) -> None:
        self.failures.append(exc)
        broken, self.inner = self.inner, Reporter()
        stream = self.stream or sys.stderr
        try:
            close = getattr(broken, "close", None)
            if close is not None and name != "close":
                close()
        except Exception:
            pass
        if len(self.failures) > 1:
            return  # the plain fallback failed too: go on without progress output
        try:
            then = "continuing with plain output" if isinstance(broken, TTYReporter) else "continuing without it"
            stream.write(f"archfleet: warning: progress output failed in {name}() "
                         f"({type(exc).__name__}: {exc}); {then}\n")
            if os.environ.get("ARCHFLEET_DEBUG") == "1":
                traceback.print_exception(exc, file=stream)
            stream.flush()
        except Exception:
            return
        if isinstance(broken, TTYReporter):
            self.inner = PlainReporter(stream)

    def planned(self, plan) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("planned", plan)

    def event(self, text: str) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("event", text)

    def warning(self, text: str) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("warning", text)

    def log(self, option: Option, line: str) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("log", option, line)

    def status(self, option: Option, state: str) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("status", option, state)

    def done(self, option: Option, result: PlatformResult) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("done", option, result)

    def failed(self, option: Option, why: str) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("failed", option, why)

    def replanned(self, old: Option, new: Option, why: str) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("replanned", old, new, why)

    def finished(self, summary) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("finished", summary)

    def close(self) -> None:
        """Passed on; a failure becomes one warning."""
        self._call("close")


def guard(reporter: Reporter | None) -> GuardedReporter:
    """``reporter`` wrapped so that it cannot fail a build (idempotent; None: no output)."""
    if isinstance(reporter, GuardedReporter):
        return reporter
    return GuardedReporter(reporter if reporter is not None else Reporter())


def make_reporter(mode: str) -> GuardedReporter:
    """The reporter for ``--progress MODE`` (auto: tty on a terminal, else plain), guarded.
    A terminal rich cannot drive gives plain output rather than an error."""
    if mode == "quiet":
        return guard(QuietReporter())
    if mode == "tty" or (mode == "auto" and sys.stderr.isatty()):
        try:
            return guard(TTYReporter())
        except Exception:
            pass
    return guard(PlainReporter())
