"""Telling people what a build is doing.

``plain``: one line per event, prefixed ``[platform@node]``, build output streamed under it
(what CI logs want). ``quiet``: nothing but errors. Output goes to stderr; stdout is kept for
results (the index digest, JSON).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .model import Option, PlatformResult


class Reporter:
    """The interface strategies and the executor report through."""

    def event(self, text: str) -> None: ...
    def log(self, option: Option, line: str) -> None: ...
    def status(self, option: Option, state: str) -> None: ...
    def done(self, option: Option, result: PlatformResult) -> None: ...
    def failed(self, option: Option, why: str) -> None: ...
    def replanned(self, old: Option, new: Option, why: str) -> None: ...


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


class QuietReporter(Reporter):
    def failed(self, option: Option, why: str) -> None:
        sys.stderr.write(f"[{option.platform}@{option.node}] FAILED: {why}\n")


def make_reporter(mode: str) -> Reporter:
    if mode == "quiet":
        return QuietReporter()
    return PlainReporter()
