"""Nodes' CPU benchmark scores, kept for a day in the user's cache dir (``scores.json``).

The probe times a fixed piece of shell arithmetic on each node (:func:`archfleet.probe.benchmark`);
higher is faster, 1.0 is the project VM. Measuring takes a moment on a fast node and seconds on
a slow board, so a score is kept per node (:func:`score_key`) for ``SCORE_TTL`` seconds and the
probe reads it (:func:`cached`) before measuring again. A score the probe measured is kept by the
learn stage (:func:`store`, called from :mod:`archfleet.learn` only), unless the node was busy
then (:func:`archfleet.learn.measured_busy`).
"""

from __future__ import annotations

import time

from . import cachedir, cachefile
from .model import NodeSpec

SCORE_TTL = 24 * 3600


def score_key(node) -> str:
    """The cache key of ``node``'s CPU score and link rate (its
    :attr:`~archfleet.model.NodeSpec.key`: name, transport and the transport's settings)."""
    return node.key


def cached(key: str) -> float | None:
    """The node's benchmark score if measured within ``SCORE_TTL`` (finite and positive), else
    None (never measured, too old, or a file that cannot be read). Blocking (one small file)."""
    return cachefile.fresh_positive(cachefile.read_json(cachedir.scores()).get(key), "score", SCORE_TTL)


def store(key: str, score: float) -> None:
    """Keep the score, measured now (under the file's lock, replaced whole: two runs probing at
    once keep both nodes' scores). Never raises for the file system: a cache dir that cannot be
    written only means the node is measured again next time. Blocking: call it in a thread."""
    def put(doc: dict) -> None:
        doc[key] = {"score": score, "at": time.time()}

    try:
        cachefile.update_json(cachedir.scores(), put)
    except OSError:
        pass
