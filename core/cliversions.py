"""What an engine CLI's ``--version`` printed, kept by the file's identity in the user's cache
dir (``cli-versions.json``).

The docker adapter's probe asks each candidate CLI for ``--version`` (Docker < 24 says its
version nowhere else) beside ``docker info``. Debian's Docker 20.10 client takes ~18 ms to
answer it, and with four CLIs starting at once on a one-platform build's path the build started
~20 ms later (issue 17). A program prints what it printed while it is the same file, so an
answer is kept with the identity of the file its path resolves to (:func:`identity`: device,
inode, size, modification and change times, as ``stat`` gives them), and a probe of this machine
reads it (:func:`recall`) instead of starting the CLI. A binary replaced or upgraded (new inode,
new times) is asked again, and any after a day (:data:`TTL`); scripts and launchers never keep
an answer (:func:`identity`). Only answers of CLIs on this machine are kept (a node's files are
stat'ed nowhere); only the learn stage writes them (:func:`store`, from :mod:`archfleet.learn`),
like the scores.
"""

from __future__ import annotations

import os
from typing import Iterable

from . import cachedir, cachefile
from .model import CliVersion


ELF = b"\x7fELF"
# seconds an answer is kept: a program whose answer changes under the same file (one that
# chooses what to run by its environment) is asked again within a day, as a node's score is
TTL = 24 * 3600


def identity(path: str) -> tuple[int, ...] | None:
    """(device, inode, size, mtime ns, ctime ns) of the program ``path`` resolves to (symbolic
    links followed), or None when it cannot be read, is not an ELF executable, or resolves to a
    file of another name. A script's answer is whatever the program it runs says, which can
    change under the same script (a ``docker`` wrapper around an upgraded client); a launcher
    that a ``docker`` link points to (snap's ``/snap/bin/docker`` -> ``snap``, mise's shims ->
    ``mise``) runs whichever docker its configuration names. Blocking (an open, a stat)."""
    if os.path.basename(os.path.realpath(path)) != os.path.basename(path):
        return None
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
    tail = cachefile.recall_lines(cachedir.cli_versions(), path, list(now) if now is not None else None, TTL)
    return CliVersion(path, now, tail) if tail is not None else None


def store(answers: Iterable[CliVersion]) -> None:
    """Keep each answer (under the file's lock, replaced whole). Never raises for the file
    system: a cache dir that cannot be written only means the CLI is asked again next time.
    Blocking: call it in a thread."""
    cachefile.keep_lines(cachedir.cli_versions(), ((a.path, list(a.identity), a.tail) for a in answers))
