"""What an engine CLI's ``--version`` printed, kept by the file's identity in the user's cache
dir (``cli-versions.json``).

The docker adapter's probe asks each candidate CLI for ``--version`` (Docker < 24 says its
version nowhere else) beside ``docker info``. Debian's Docker 20.10 client takes ~18 ms to
answer it, and with four CLIs starting at once on a one-platform build's path the build started
~20 ms later (issue 17). A program prints what it printed while it is the same file, so an
answer is kept with the identity of the file its path resolves to (:func:`identity`: device,
inode, size, modification and change times, as ``stat`` gives them), and a probe of this machine
reads it (:func:`recall`) instead of starting the CLI. A binary replaced or upgraded (new inode,
new times) is asked again. Only answers of CLIs on this machine are kept (a node's files are
stat'ed nowhere); only the learn stage writes them (:func:`store`, from :mod:`archfleet.learn`),
like the scores.
"""

from __future__ import annotations

import os
from typing import Iterable

from . import cachedir, cachefile
from .model import CliVersion


ELF = b"\x7fELF"


def identity(path: str) -> tuple[int, ...] | None:
    """(device, inode, size, mtime ns, ctime ns) of the program ``path`` resolves to (symbolic
    links followed), or None when it cannot be read or is not an ELF executable: a script's
    answer is whatever the program it runs says, which can change under the same script (a
    ``docker`` wrapper around an upgraded client). Blocking (an open, a stat)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != ELF:
                return None
            st = os.fstat(f.fileno())
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def recall(path: str, now: tuple[int, ...] | None) -> CliVersion | None:
    """What ``path``'s ``--version`` printed when the file was what it is ``now`` (its
    :func:`identity`), else None (never asked, changed since, not a program, or a cache that
    cannot be read). Blocking (a small file)."""
    entry = cachefile.read_json(cachedir.cli_versions()).get(path)
    try:
        if now is None or tuple(entry["identity"]) != now:
            return None
        tail = tuple(str(line) for line in entry["tail"])
    except (KeyError, TypeError, ValueError):
        return None
    return CliVersion(path, now, tail)


def store(answers: Iterable[CliVersion]) -> None:
    """Keep each answer (under the file's lock, replaced whole). Never raises for the file
    system: a cache dir that cannot be written only means the CLI is asked again next time.
    Blocking: call it in a thread."""
    answers = list(answers)
    if not answers:
        return

    def put(doc: dict) -> None:
        for a in answers:
            doc[a.path] = {"identity": list(a.identity), "tail": list(a.tail)}

    try:
        cachefile.update_json(cachedir.cli_versions(), put)
    except OSError:
        pass
