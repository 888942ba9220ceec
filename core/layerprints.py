"""Fingerprints of image layers, by diff_id, kept in the user's cache dir (``layer-prints.json``):
a layer's uncompressed size and the sha256 of its first :data:`HEAD` bytes.

An engine's export (Docker 20.10's ``docker save``) names each layer by a directory whose name
says nothing of its content, in an order unrelated to the image's; a layer's diff_id is known
only once all its bytes are read. :func:`archfleet.publish.prepare` compresses a layer while it
reads it (and, past the push gate, uploads it) only when the layer is new to this machine: a
layer it has exported before is likely one a registry holds already (a base's, the last
child's, one pushed from another checkout of the project), which is found there (HEAD, mount)
and never sent, and work spent on it while it was read would be lost (an upload, in full,
before the registry could be asked for its digest: found by the fresh-user helper). A tar
member's header gives the size before the bytes, and the first :data:`HEAD` bytes come first: a
layer whose (size, head) this file remembers is read as before, and decided once hashed. Two
different layers with the same print (the same first files, a change further in) cost only the
overlap. The file remembers every layer an export held, written by the learn stage
(:func:`store`), read by the push (:func:`recall_all`). A layer never changes under its diff_id,
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


def recall_all() -> dict[str, tuple[int, str]]:
    """diff_id -> (uncompressed size, sha256 hex of the first :data:`HEAD` bytes) of every layer
    the file remembers (an empty dict when it cannot be read; an entry that is not a print is
    skipped). Blocking (one small file)."""
    doc = cachefile.read_json(cachedir.layer_prints())
    out = {}
    for diff_id, entry in doc.items():
        try:
            size, head = entry["size"], entry["head"]
        except (KeyError, TypeError):
            continue
        if _DIGEST.match(diff_id) and isinstance(size, int) and not isinstance(size, bool) and size >= 0 \
                and isinstance(head, str) and _HEX.match(head):
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
