"""Measured transfer rates to nodes, from the context syncs that sent enough to measure.

The planner's context-transfer estimate is bytes / rate. A sync that streams at least
``MIN_BYTES`` records bytes / seconds for its node (a moving average, so one slow moment
does not rule a link); the probe hands the rate to the estimates as ``NodeFacts.link_rate``.
Rates older than ``TTL`` are not used (links change: a Pi moved to Wi-Fi).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MIN_BYTES = 1 << 20  # below this, latency and process start-up dominate: no measurement
TTL = 7 * 24 * 3600
WEIGHT = 0.5  # of the newest measurement in the average


def _file() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("archfleet")) / "links.json"


def _read() -> dict:
    try:
        doc = json.loads(_file().read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def measured(key: str) -> float | None:
    """Bytes per second to the node ``key`` names, if measured lately."""
    entry = _read().get(key)
    try:
        if entry and time.time() - float(entry["at"]) < TTL and float(entry["rate"]) > 0:
            return float(entry["rate"])
    except (KeyError, TypeError, ValueError):
        pass
    return None


def record(key: str, nbytes: int, seconds: float) -> float | None:
    """Fold one transfer into the node's rate; the new rate, or None when it was too small."""
    if nbytes < MIN_BYTES or seconds <= 0:
        return None
    rate = nbytes / seconds
    old = measured(key)
    if old:
        rate = WEIGHT * rate + (1 - WEIGHT) * old
    path = _file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = _read()
        doc[key] = {"rate": round(rate), "at": time.time()}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)
    except OSError:
        pass
    return rate
