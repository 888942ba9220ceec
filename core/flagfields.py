"""The ``key=value,key=value`` values of ``--secret``, ``--cache-from``, ``--cache-to`` and
``-o``, read as buildx reads them: one line of CSV
(buildx ``util/buildflags`` parses each with a CSV reader), so a field holding a comma is
quoted (``"dest=out,2"``) and ``""`` inside quotes is a quote."""

from __future__ import annotations

import csv

from .errors import UsageError


def fields(flag: str, text: str) -> list[tuple[str, str]]:
    """``text`` as (key, value) pairs in order, keys stripped and lower-cased, values as given.
    ``flag`` starts each error line (e.g. ``"--secret"`` or ``"--output 'x'"``). Raises
    :class:`UsageError` (one line) for text that is not CSV or a field without ``=``."""
    try:
        parts = next(csv.reader([text], strict=True))  # an unclosed quote is an error, as in Go
    except (csv.Error, StopIteration):
        raise UsageError(f"{flag}: cannot read it as comma-separated key=value fields") from None
    out = []
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            raise UsageError(f"{flag}: {part!r} is not key=value")
        out.append((key.strip().lower(), value))
    return out

