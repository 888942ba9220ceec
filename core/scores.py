"""Nodes' CPU benchmark scores, kept for a day in the user's cache dir (``scores.json``).

The probe times a fixed piece of shell arithmetic on each node (:func:`archfleet.probe.benchmark`);
higher is faster, 1.0 is the project VM. Measuring takes a moment on a fast node and seconds on
a slow board, so a score is kept per node (:func:`score_key`) for ``SCORE_TTL`` seconds and the
probe reads it (:func:`cached`) before measuring again. A score the probe measured is kept by the
learn stage (:func:`store`, called from :mod:`archfleet.learn` only); one measured while the
node was busy (:func:`archfleet.learn.measured_busy`) for ten minutes only.
"""

from __future__ import annotations

import time

from . import cachedir, cachefile
from .model import NodeSpec

SCORE_TTL = 24 * 3600
# seconds a score measured while the node was busy is kept (:func:`archfleet.learn.measured_busy`):
# long enough for the commands of the same moment, not for the day after the load is gone
BUSY_SCORE_TTL = 10 * 60


def score_key(node) -> str:
    """The cache key of ``node``'s CPU score and link rate (its
    :attr:`~archfleet.model.NodeSpec.key`: name, transport and the transport's settings)."""
    return node.key


def cached(key: str) -> float | None:
    """The node's benchmark score if measured within ``SCORE_TTL`` (``BUSY_SCORE_TTL`` for one
    measured while the node was busy), finite and positive, else None (never measured, too old,
    or a file that cannot be read). Blocking (one small file)."""
    entry = cachefile.read_json(cachedir.scores()).get(key)
    ttl = BUSY_SCORE_TTL if isinstance(entry, dict) and entry.get("busy") else SCORE_TTL
    return cachefile.fresh_positive(entry, "score", ttl)


def store(key: str, score: float, busy: bool = False) -> None:
    """Keep the score, measured now (under the file's lock, replaced whole: two runs probing at
    once keep both nodes' scores); ``busy``: measured while the node was busy, kept for
    ``BUSY_SCORE_TTL`` only. Never raises for the file system: a cache dir that cannot be
    written only means the node is measured again next time. Blocking: call it in a thread."""
    def put(doc: dict) -> None:
        doc[key] = {"score": score, "at": time.time(), **({"busy": True} if busy else {})}

    try:
        cachefile.update_json(cachedir.scores(), put)
    except OSError:
        pass
