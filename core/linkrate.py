"""Measured transfer rates to nodes, from the context syncs that sent enough to measure.

The planner's context-transfer estimate is bytes / rate. A sync returns what it sent and how
long it took (:class:`archfleet.model.Transfer`); the learn stage (:mod:`archfleet.learn`)
folds each one that streamed at least ``MIN_BYTES`` into its node's rate (:func:`record`: a
moving average, so one slow moment does not rule a link); the probe hands the rate to the
estimates as ``NodeFacts.link_rate`` (:func:`measured`). Rates older than ``TTL`` are not used
(links change: a Pi moved to Wi-Fi). The file is ``links.json`` in :mod:`archfleet.cachedir`.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import cachedir, cachefile

MIN_BYTES = 1 << 20  # below this, latency and process start-up dominate: no measurement
TTL = 7 * 24 * 3600
WEIGHT = 0.5  # of the newest measurement in the average


def _file() -> Path:
    return cachedir.links()


def _read() -> dict:
    return cachefile.read_json(_file())


def _rate(entry) -> float | None:
    """The rate an entry holds if it is recent, finite and positive."""
    return cachefile.fresh_positive(entry, "rate", TTL)


def measured(key: str) -> float | None:
    """Bytes per second to the node ``key`` names, if measured lately."""
    return _rate(_read().get(key))


def record(key: str, nbytes: int, seconds: float) -> float | None:
    """Fold one transfer into the node's rate; the new rate, or None when it was too small.

    Concurrent syncs (threads of one run, or other runs) each fold their measurement in under
    the file's lock (:func:`archfleet.cachefile.update_json`): none is lost, the file is never
    torn. A cache dir that cannot be written only means the rate is not kept."""
    if nbytes < MIN_BYTES or not seconds > 0:
        return None
    new = nbytes / seconds
    got = [new]

    def fold(doc: dict) -> None:
        old = _rate(doc.get(key))
        if old:
            got[0] = WEIGHT * new + (1 - WEIGHT) * old
        doc[key] = {"rate": round(got[0]), "at": time.time()}

    try:
        cachefile.update_json(_file(), fold)
    except OSError:
        fold(_read())  # not kept; still the rate this measurement gives
    return got[0]
