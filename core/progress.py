"""Telling people what a build is doing.

- ``tty`` (the default on a terminal): one live row per platform (node, strategy, state,
  elapsed, estimate), drawn with rich, then a summary table.
- ``plain`` (the default when stderr is not a terminal, e.g. CI): one line per event,
  prefixed ``[platform@node]``, with the build output streamed under it.
- ``quiet``: nothing but failures.

Everything goes to stderr; stdout is kept for results (the index digest, JSON).
"""

from __future__ import annotations

import re
import sys
import time
from typing import TextIO

from .model import Option, PlatformResult

_STEP = re.compile(r"^#\d+ \[(?:[^\]]*?\s)?(\d+/\d+)\] (.*)$")


class Reporter:
    """The interface strategies and the executor report through. Every method is optional."""

    def planned(self, plan) -> None: ...
    def event(self, text: str) -> None: ...
    def log(self, option: Option, line: str) -> None: ...
    def status(self, option: Option, state: str) -> None: ...
    def done(self, option: Option, result: PlatformResult) -> None: ...
    def failed(self, option: Option, why: str) -> None: ...
    def replanned(self, old: Option, new: Option, why: str) -> None: ...
    def finished(self, summary) -> None: ...
    def close(self) -> None: ...


class PlainReporter(Reporter):
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
        for s in plan.chosen:
            o = s.option
            self._write(f"[archfleet] {o.platform}: {o} (est. {o.estimate:.1f}s) - {o.why}")

    def event(self, text: str) -> None:
        self._write(f"[archfleet] {text}")

    def log(self, option: Option, line: str) -> None:
        if self.show_logs and line.strip():
            self._write(f"{self._prefix(option)} {line}")

    def status(self, option: Option, state: str) -> None:
        self._write(f"{self._prefix(option)} {state} ({option.strategy}, {time.monotonic() - self.started:.1f}s)")

    def done(self, option: Option, result: PlatformResult) -> None:
        what = result.digest or result.image_id or ""
        self._write(f"{self._prefix(option)} done in {result.seconds:.1f}s {what}".rstrip())

    def failed(self, option: Option, why: str) -> None:
        self._write(f"{self._prefix(option)} FAILED: {why}")

    def replanned(self, old: Option, new: Option, why: str) -> None:
        self._write(f"{self._prefix(old)} re-planned to {new}: {why}")

    def finished(self, summary) -> None:
        for r in summary.results:
            self._write(f"[archfleet] {r.platform}: {r.option} took {r.seconds:.1f}s "
                        f"(est. {r.option.estimate:.1f}s){' ' + r.digest if r.digest else ''}")
        if summary.index_digest:
            self._write(f"[archfleet] index {summary.index_digest} in {summary.seconds:.1f}s")


class QuietReporter(Reporter):
    def failed(self, option: Option, why: str) -> None:
        sys.stderr.write(f"[{option.platform}@{option.node}] FAILED: {why}\n")


class Row:
    def __init__(self, option: Option):
        self.option = option
        self.state = "waiting"
        self.detail = ""
        self.started: float | None = None
        self.ended: float | None = None
        self.replans = 0


class TTYReporter(Reporter):
    """Live rows with rich; falls back to nothing fancy if the terminal is tiny."""

    def __init__(self):
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
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
        for key, row in self.rows.items():
            elapsed = ((row.ended or now) - row.started) if row.started else 0.0
            style = {"done": "green", "FAILED": "red", "re-planned": "yellow"}.get(row.state.split(" ")[0], "")
            table.add_row(key, row.option.node, row.option.strategy, f"[{style}]{row.state}[/]" if style else row.state,
                          f"{elapsed:5.1f}s", f"{row.option.estimate:5.1f}s", row.detail)
        for e in self.events[-3:]:
            table.add_row("", "", "", "", "", "", e)
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
        for s in plan.chosen:
            self._row(s.option)
        self._refresh()

    def event(self, text: str) -> None:
        self.events.append(text)
        self._refresh()

    def log(self, option: Option, line: str) -> None:
        m = _STEP.match(line.strip())
        row = self._row(option)
        if m and row.state.startswith("building"):
            row.state = f"building {m.group(1)}"
            row.detail = m.group(2)
            self._refresh()

    def status(self, option: Option, state: str) -> None:
        row = self._row(option)
        if row.started is None:
            row.started = time.monotonic()
        row.state, row.detail = state, ""
        self._refresh()

    def done(self, option: Option, result: PlatformResult) -> None:
        row = self._row(option)
        row.state, row.ended, row.detail = "done", time.monotonic(), (result.digest or result.image_id or "")[:19]
        self._refresh()

    def failed(self, option: Option, why: str) -> None:
        row = self._row(option)
        row.state, row.ended, row.detail = "FAILED", time.monotonic(), why
        self._refresh()

    def replanned(self, old: Option, new: Option, why: str) -> None:
        row = self._row(old)
        row.state, row.detail = "re-planned", f"-> {new}: {why}"
        self._refresh()
        nrow = self._row(new)
        nrow.replans = row.replans + 1
        nrow.state, nrow.detail = "re-planned", f"from {old}"

    def finished(self, summary) -> None:
        from rich.table import Table

        self.close()
        table = Table(title="archfleet build", title_justify="left")
        for col in ("platform", "node", "strategy", "estimate", "took", "digest"):
            table.add_column(col)
        for r in summary.results:
            table.add_row(str(r.platform), r.option.node, r.option.strategy, f"{r.option.estimate:.1f}s",
                          f"{r.seconds:.1f}s", (r.digest or r.image_id or "")[:19])
        self.console.print(table)
        if summary.index_digest:
            self.console.print(f"index {summary.index_digest} pushed to {', '.join(summary.tags)} "
                               f"in {summary.seconds:.1f}s")

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()


class _Live:
    """Re-rendered on every refresh, so elapsed times tick between events."""

    def __init__(self, reporter: "TTYReporter"):
        self.reporter = reporter

    def __rich__(self):
        return self.reporter._render()


def make_reporter(mode: str) -> Reporter:
    if mode == "quiet":
        return QuietReporter()
    if mode == "tty" or (mode == "auto" and sys.stderr.isatty()):
        return TTYReporter()
    return PlainReporter()
