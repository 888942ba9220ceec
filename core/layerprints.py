"""Fingerprints of image layers, by diff_id, kept in the user's cache dir (``layer-prints.json``):
a layer's uncompressed size and the sha256 of its first :data:`HEAD` bytes.

An engine's export (Docker 20.10's ``docker save``) names each layer by a directory whose name
says nothing of its content, in an order unrelated to the image's; a layer's diff_id is known
only once all its bytes are read. :func:`archfleet.publish.prepare` compresses a layer while it
reads it (and, past the push gate, uploads it), unless the layer is one the registry holds
already (a base's, the last child's): such a layer is never compressed or sent, and work spent
on it while it was read would be lost. A tar member's header gives the size before the bytes,
and the first :data:`HEAD` bytes come first: a layer whose (size, head) is that of a layer the
registry holds is read as before, and decided once hashed. Two different layers with the same
print (the same first files, a change further in) cost only the overlap; the layers' prints
are what this file remembers: every layer an export held, written by the learn stage
(:func:`store`), read by the push (:func:`recall`). A layer never changes under its diff_id,
so an entry is right forever; the file keeps the :data:`MAX_ENTRIES` seen last.
"""

from __future__ import annotations

import re
import time
from typing import Iterable

from . import cachedir, cachefile

HEAD = 512 * 1024  # bytes of a layer's start hashed into its print (archfleet.publish.BLOCK)
MAX_ENTRIES = 2000
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def recall(diff_ids: Iterable[str]) -> dict[str, tuple[int, str]]:
    """diff_id -> (uncompressed size, sha256 hex of the first :data:`HEAD` bytes), for those of
    ``diff_ids`` the file has (an empty dict when it cannot be read). Blocking (one small file)."""
    doc = cachefile.read_json(cachedir.layer_prints())
    out = {}
    for diff_id in diff_ids:
        entry = doc.get(diff_id)
        try:
            size, head = entry["size"], entry["head"]
        except (KeyError, TypeError):
            continue
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0 and isinstance(head, str) \
                and _HEX.match(head):
            out[diff_id] = (size, head)
    return out


def store(prints: Iterable[tuple[str, int, str]]) -> None:
    """Keep (diff_id, uncompressed size, head sha256 hex) triples (under the file's lock,
    replaced whole; past :data:`MAX_ENTRIES`, those seen longest ago go). Never raises for the
    file system: a cache that cannot be written only means the next push may compress a known
    layer while it reads it, and then drop that work. Blocking: call it in a thread."""
    good = [(d, n, h) for d, n, h in prints
            if _DIGEST.match(str(d)) and isinstance(n, int) and n >= 0 and _HEX.match(str(h))]
    if not good:
        return

    def put(doc: dict) -> None:
        now = time.time()
        for diff_id, size, head in good:
            doc.pop(diff_id, None)  # put back last: the file's order is the order seen
            doc[diff_id] = {"size": size, "head": head, "at": now}
        for stale in list(doc)[:max(len(doc) - MAX_ENTRIES, 0)]:
            del doc[stale]

    try:
        cachefile.update_json(cachedir.layer_prints(), put)
    except OSError:
        pass
