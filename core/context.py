"""The build context: what is in it, its digest, and getting it to a node without sending what
the node already has.

What is in it follows BuildKit's ignore rule wherever archfleet reads the context (the
snapshot, so the sync, the context digest and its label): ``<Dockerfile path>.dockerignore``
beside the Dockerfile if it exists, else ``<context>/.dockerignore`` (:func:`ignore_file`).

On the node, under ``~/.cache/archfleet/sync-v2/`` (relative to the SSH user's home):

- ``blobs/<sha256>-<mode>``: file contents, content-addressed (mode in the name, because hard
  links share it);
- ``ctx/<context digest>/tree/``: the context, every file a hard link to its blob;
- ``ctx/<context digest>/Dockerfile``: the Dockerfile, beside the tree (it may live outside it);
- ``ctx/<context digest>/Dockerfile.dockerignore``: the ignore file the snapshot applied, if any
  (BuildKit on the node then applies the same one);
- ``ctx/<context digest>.ok``: written last, and only when the tree is in place; a sync trusts
  a marker only with its tree beside it.

A blob is never stored under a name its bytes do not have. The coordinator hashes each file
again while it sends it and stops the sync with one :class:`UsageError` line naming the file
when it is not what the snapshot hashed (rewritten, grown, shrunk, gone). On the node the stream
unpacks into a staging directory of its own; new blobs move into ``blobs/`` only when the
stream was complete (its last member, ``complete``, arrived) and ``sha256sum -c`` agrees with
every new blob's name. A stream that ends early leaves nothing behind.

The tree is then renamed into place in one step (``mv -T``), so two syncs at once (two
platforms, or two coordinators) never see or break a half-made tree: the loser of the rename
just removes its copy (same digest, same tree).

The cache is bounded by age: a sync that finds its tree touches its ``.ok`` marker, and at most
once a day per node the sync that unpacks a new tree also removes trees unused for
``ARCHFLEET_NODE_CACHE_DAYS`` (default 14), each by one rename out of ``ctx/`` before deleting
it, and then every blob no remaining tree links (its link count is 1) whose ctime is more than
an hour old. A sync that is told a blob is present touches it (its ctime), so a prune between
that answer and the sync's linking it keeps it.

A sync is at most three round trips: is the tree there (done: one tiny command); which blobs are
missing (names on stdin, missing names back); then one tar stream: the missing blobs with
their checksums, then the layout, which has only headers: directories, symlinks and hard links
to blobs. The stream is made here from paths walked here, so no member can name anything
outside the cache; ``tar`` on the node runs with ``--no-same-owner`` and never follows a symlink
out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import secrets
import stat
import tarfile
import threading
import time
from pathlib import Path
from typing import Iterator

import attrs

from . import dockerlib, filedigests
from .errors import InfrastructureError, UsageError
from .model import FileDigests, Transfer

CACHE = ".cache/archfleet/sync-v2"  # bump the version when the layout changes
CHUNK = 1 << 20
# Hashed first into every context digest: bump it when what the digest covers changes, so a tree
# made under the old rule is never taken for one made under the new (v3: the ignore file joined).
DIGEST_VERSION = b"archfleet-context-v3\n"


@attrs.frozen
class Entry:
    """One path of a context snapshot: ``path`` relative and ``/``-separated, ``kind`` (file, dir or link), its mode, and for files the sha256 hex of the contents and the size in bytes, for links the target."""
    path: str  # relative, "/"-separated
    kind: str  # "file" | "dir" | "link"
    mode: int = 0o644
    digest: str = ""  # sha256 hex, files only
    size: int = 0
    target: str = ""  # links only

    @property
    def blob(self) -> str:
        """The name the file's contents have in a node's blob cache: ``<sha256>-<octal mode>`` (hard links share a mode)."""
        return f"{self.digest}-{self.mode:o}"


@attrs.frozen
class Snapshot:
    """What a build context holds after the ignore rule: its entries, the Dockerfile (as an entry and its path), the ignore file applied, and ``digest`` (sha256 hex over all of it: the sync and history key)."""
    root: Path
    entries: tuple[Entry, ...]
    dockerfile: Entry
    dockerfile_path: Path
    digest: str  # of the whole context + Dockerfile (+ the ignore file applied)
    ignore: Entry | None = None  # the ignore file applied, shipped as "Dockerfile.dockerignore"
    ignore_path: Path | None = None  # where it was read
    #: the file digests to remember (:mod:`archfleet.filedigests`), for the learn stage
    digests: FileDigests | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def size(self) -> int:
        """Bytes of file contents in the context (what a cold sync sends, before tar headers)."""
        return sum(e.size for e in self.entries if e.kind == "file")


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


IGNORE_SUFFIX = ".dockerignore"
_BOM = b"\xef\xbb\xbf"


def _own_ignore(dockerfile: Path) -> Path:
    return Path(str(dockerfile) + IGNORE_SUFFIX)  # "app.Dockerfile" -> "app.Dockerfile.dockerignore"


def ignore_file(root: Path, dockerfile: Path) -> Path | None:
    """The ignore file BuildKit applies to this build, or None.

    BuildKit's rule (the Dockerfile frontend's ``<Dockerfile name>.dockerignore``, also in the
    built-in BuildKit of Docker 20.10): ``<dockerfile path>.dockerignore`` beside the Dockerfile,
    wherever the Dockerfile lives (inside the context or not), if it exists; else
    ``<context>/.dockerignore`` if it exists. Never both: the Dockerfile's own file wins.
    Raises :class:`UsageError` when the one that applies is not a regular file (a FIFO, a
    device, a directory): BuildKit would read it, and a FIFO no one writes hangs the build.
    Blocking (two stats)."""
    for path in (_own_ignore(dockerfile), root / ".dockerignore"):
        if path.is_file():
            return path
        if path.exists():
            raise UsageError(f"ignore file {path}: not a regular file (a FIFO, a device or a directory; BuildKit "
                             "would read it and could wait forever): make it a file or remove it")
    return None


def ignore_patterns(data: bytes) -> list[str]:
    """The patterns of an ignore file's bytes, parsed as moby/patternmatcher's
    ``ignorefile.ReadAll`` does: a UTF-8 BOM is dropped, a line *starting* with ``#`` is a
    comment, the rest is trimmed, empty lines are skipped. Not UTF-8 is fine (decoded with
    ``surrogateescape``, the way file names are, so a pattern matches the name it spells)."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    patterns = []
    for line in data.decode("utf-8", "surrogateescape").split("\n"):  # Go's ScanLines: \n, then a \r dropped
        line = line.removesuffix("\r")
        if line.startswith("#"):
            continue
        line = line.strip()
        if line:
            patterns.append(line)
    return patterns


def included(root: Path, dockerfile: Path, patterns: list[str]) -> list[str]:
    """The paths (files, links, directories; relative) of the context at ``root`` that the ignore
    ``patterns`` let through, as docker-py's ``exclude_paths`` applies moby's rule; sorted.
    Without patterns that rule excludes nothing: every path, walked here as docker-py walks
    (a link to a directory is not entered), without importing docker-py (~45 ms, issue 17)."""
    if not patterns:
        return sorted(_every_path(str(root)))
    exclude_paths = dockerlib.module().utils.build.exclude_paths

    rel_df = None
    try:
        rel_df = str(dockerfile.relative_to(root))
    except ValueError:
        pass
    return sorted(exclude_paths(str(root), list(patterns), dockerfile=rel_df))


def _every_path(root: str) -> list[str]:
    found: list[str] = []

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                found.append(prefix + entry.name)
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, prefix + entry.name + os.sep)

    walk(root, "")
    return found


def path_in_context(path, context) -> str:
    """``path``'s place inside the context (relative, ``/``-separated), or "" when it is outside."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(context))
    return "" if rel == ".." or rel.startswith(".." + os.sep) else rel.replace(os.sep, "/")


def included_file(path: str, patterns: list[str]) -> bool:
    """Whether the ignore ``patterns`` let the context's ``path`` (relative, ``/``-separated)
    through, by the same matcher as :func:`included` (a directory above it excluded excludes
    it), without the Dockerfile exception docker-py's walk adds: BuildKit sends the Dockerfile
    apart and leaves an ignored one out of the context."""
    matcher = dockerlib.module().utils.build.PatternMatcher(list(patterns))
    return not matcher.matches(path.replace("/", os.sep))


def _read_ignore(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"ignore file {path}: cannot read it: {exc.strerror}") from None


def _entry_line(e: Entry) -> bytes:
    """One entry as hashed into the context digest: bytes, so any file name (not UTF-8 too)
    hashes as the bytes the file system holds (``os.fsencode``)."""
    return b"\0".join((e.kind.encode(), os.fsencode(e.path), f"{e.mode:o}".encode(), e.digest.encode(),
                       os.fsencode(e.target))) + b"\n"


def snapshot(root: Path, dockerfile: Path) -> Snapshot:
    """Walk the context (blocking: call it in a thread).

    What is in it follows BuildKit's ignore rule (:func:`ignore_file`); the file that was
    applied is part of the snapshot (``ignore``) and of its digest, and is shipped to SSH nodes
    beside the Dockerfile, so BuildKit there applies the same rule to the same tree.
    Raises :class:`UsageError` naming a file that cannot be read."""
    ignore_path = ignore_file(root, dockerfile)
    ignore_bytes = _read_ignore(ignore_path) if ignore_path else b""
    entries: list[Entry] = []
    started = time.time_ns()
    known = filedigests.load(root.absolute())
    keep: list[tuple[str, tuple[int, ...], str, bool]] = []
    stale: list[str] = []
    unseen = [0]  # bytes of context files new or with another stat since the digests remembered

    def remember(name: str, full: Path, st: os.stat_result, data: bytes | None = None) -> str:
        """The file's sha256 (from the remembered digests when its stat is unchanged and settled),
        noting it for the learn stage, and in ``stale`` when its contents changed under the size
        and mtime remembered: BuildKit would send its old copy; the old entry stays remembered so
        every command sees it again. ``name``: its path in the context, or its absolute path for a
        Dockerfile or ignore file outside it (BuildKit reads those by stat too)."""
        key = filedigests.stat_key(st)
        got = known.get(name)
        if (got is None or got[0] != key) and not name.startswith("/"):
            unseen[0] += st.st_size  # BuildKit's transfer sends a file by stat, as is compared here
        if got is not None and got[2] and got[0] == key:
            digest = got[1]
        else:
            digest = hashlib.sha256(data).hexdigest() if data is not None else _hash_file(full)
        if got is not None and digest != got[1] and filedigests.unseen_change(got[0], key):
            stale.append(name)
            keep.append((name, got[0], got[1], got[2]))
        else:
            keep.append((name, key, digest, filedigests.settled(st, started)))
        return digest
    for rel in included(root, dockerfile, ignore_patterns(ignore_bytes)):
        full = root / rel
        try:
            st = os.lstat(full)
        except OSError as exc:
            raise UsageError(f"context {root}: cannot read {rel}: {exc.strerror}") from None
        mode = stat.S_IMODE(st.st_mode)
        if "\n" in rel or "\r" in rel:
            raise UsageError(f"context {root}: file name with a line break: {rel!r}")
        try:
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(rel, "link", 0o777, target=os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry(rel, "dir", mode))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(rel, "file", mode, remember(rel, full, st), st.st_size))
        except OSError as exc:
            raise UsageError(f"context {root}: cannot read {rel}: {exc.strerror}") from None
    try:
        df_stat = os.stat(dockerfile)
        outside = not path_in_context(dockerfile, root)
        # a Dockerfile outside the context is remembered by its absolute path (BuildKit reads it
        # through a transfer of its own, by stat as well); inside, its context entry is
        df_digest = remember(str(dockerfile.absolute()), dockerfile, df_stat) if outside else _hash_file(dockerfile)
        df = Entry("Dockerfile", "file", 0o644, df_digest, df_stat.st_size)
    except OSError as exc:
        raise UsageError(f"Dockerfile {dockerfile}: cannot read it: {exc.strerror}") from None
    if ignore_path is not None and not path_in_context(ignore_path, root):
        with contextlib.suppress(OSError):
            remember(str(ignore_path.absolute()), ignore_path, os.stat(ignore_path), ignore_bytes)
    ignore = None
    if ignore_path is not None:
        ignore = Entry("Dockerfile" + IGNORE_SUFFIX, "file", 0o644, hashlib.sha256(ignore_bytes).hexdigest(),
                       len(ignore_bytes))
    h = hashlib.sha256(DIGEST_VERSION)
    for e in entries:
        h.update(_entry_line(e))
    h.update(b"--\n")  # the tree ends, what lies beside it follows (every entry line has NULs, this none)
    for e in [df] + ([ignore] if ignore else []):
        h.update(_entry_line(e))
    noted = {name: (key, digest, ok) for name, key, digest, ok in keep}
    # another platform's Dockerfile outside the context is remembered beside these (store keeps it)
    changed = noted != {k: v for k, v in known.items() if not k.startswith("/") or k in noted}
    digests = FileDigests(str(root.absolute()), keep, changed, tuple(stale), unseen[0])
    return Snapshot(root, tuple(entries), df, dockerfile, h.hexdigest(), ignore, ignore_path, digests)


_hashing = threading.Lock()


@functools.lru_cache(maxsize=8)
def _snapshot_cached(root: str, dockerfile: str, stamp: tuple) -> Snapshot:
    return snapshot(Path(root), Path(dockerfile))


def _ignore_stamp(root: Path, dockerfile: Path) -> tuple:
    """The Dockerfile's own ignore file may live outside the context, where the context walk
    does not look: its size and mtime join the cache key."""
    try:
        st = _own_ignore(dockerfile).stat()
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns)


def snapshot_of(request) -> Snapshot:
    """The request's snapshot, hashed once however many nodes and platforms use it (the sync to
    each node and the context-digest label), also when they ask at the same time. The cache key
    is every file's size and mtime (a walk, no reading) and those of the Dockerfile's own ignore
    file, so a file rewritten between two builds in one process is hashed anew. Blocking: call
    it in a thread."""
    from .history import context_key

    stamp, _ = context_key(request)
    stamp = (stamp, _ignore_stamp(Path(request.context), Path(request.dockerfile)))
    with _hashing:  # the builds and syncs that start together wait for one hash, not each do one
        return _snapshot_cached(str(request.context), str(request.dockerfile), stamp)


# Fixed scripts: user data only ever arrives as positional parameters ("$1") or on stdin.
# $1 cache, $2 context digest. A marker counts only with its tree beside it.
_CHECK = ('if test -e "$1/ctx/$2.ok" && test -d "$1/ctx/$2/tree"; then touch "$1/ctx/$2.ok" 2>/dev/null;'
          ' echo present; else echo absent; fi')
# $1 cache; blob names on stdin, the missing ones back. The blobs reported present are touched
# (atime, so their ctime too; the mtime, which builds see, stays), so a prune running before this
# sync links them keeps them: it removes only orphans unchanged for an hour.
_MISSING = (
    'set -e; mkdir -p "$1/blobs" "$1/stage"; cd "$1/blobs"; p=$(mktemp ../stage/present.XXXXXX);'
    ' while IFS= read -r b; do if [ -e "$b" ]; then echo "$b" >> "$p"; else echo "$b"; fi; done;'
    ' if [ -s "$p" ]; then xargs touch -a -c -- < "$p" 2>/dev/null || true; fi; rm -f "$p"'
)
# $1 cache, $4 minutes a tree may go unused, $5 minutes an orphaned blob is kept. Once a day
# (the "pruned" stamp). A tree goes by one rename out of ctx/ before it is deleted, so no
# interrupted prune leaves a half-deleted tree where a sync would trust it; its marker goes next.
# Its last line says what it did: absent (no cache), recent (pruned less than a day ago), pruned.
_PRUNE = (
    '[ -e "$1" ] || { echo absent; exit 0; }; cd "$1" || exit 1;'
    ' [ -n "$(find . -maxdepth 1 -name pruned -mmin -1440)" ] && { echo recent; exit 0; };'
    ' : > pruned; mkdir -p stage; for ok in ctx/*.ok; do [ -e "$ok" ] || continue;'
    ' if [ -n "$(find "$ok" -mmin +"$4")" ]; then d=${ok%.ok}; g="stage/gone-${d#ctx/}-$$";'
    ' if [ -e "$d" ]; then mv -T "$d" "$g" 2>/dev/null && rm -rf "$g"; fi; rm -f "$ok"; fi; done;'
    ' find blobs -type f -links 1 -cmin +"$5" -exec rm -f {} + 2>/dev/null;'
    ' find stage -mindepth 1 -maxdepth 1 -mmin +"$5" -exec rm -rf {} + 2>/dev/null; echo pruned'
)
# $1 cache, $2 context digest, $3 staging name. The stream unpacks into stage/$3 only: new blobs
# in new/ with their SHA256SUMS, the tree (hard links to new/ or blobs/), the Dockerfile, and
# "complete" last. Nothing reaches blobs/ unless the stream was complete and every new blob's
# sha256 is its name; the marker is written only when the tree is in place. Then the prune, in
# the same round trip, in a subshell whose failure never fails the sync.
_UNPACK = (
    'set -e; mkdir -p "$1/ctx" "$1/blobs" "$1/stage"; s="$1/stage/$3";'
    ' if ! tar -x --no-same-owner -C "$1" -f - 2> "$s.err"; then m=$(head -n 1 "$s.err"); rm -rf "$s" "$s.err";'
    ' echo "unpacking the context failed: $m" >&2; exit 65; fi; rm -f "$s.err";'
    ' if [ ! -e "$s/complete" ]; then rm -rf "$s"; echo "the context stream ended early" >&2; exit 65; fi;'
    ' if [ -s "$s/SHA256SUMS" ] && ! (cd "$s" && sha256sum -c SHA256SUMS > check.out 2>&1); then'
    ' bad=$(grep -v ": OK$" "$s/check.out" | head -n 1); rm -rf "$s";'
    ' echo "new blobs failed sha256sum -c on the node: $bad" >&2; exit 66; fi;'
    ' if [ -d "$s/new" ]; then find "$s/new" -type f -exec sh -c \'mv -f "$@" "$0"\' "$1/blobs" {} + ||'
    ' { rm -rf "$s"; echo "cannot move new blobs into $1/blobs" >&2; exit 67; }; fi;'
    ' rm -rf "$s/new" "$s/SHA256SUMS" "$s/check.out" "$s/complete";'
    ' if ! mv -T "$s" "$1/ctx/$2" 2>/dev/null; then'
    ' if [ ! -d "$1/ctx/$2/tree" ] && mv -T "$1/ctx/$2" "$s.old" 2>/dev/null; then mv -T "$s" "$1/ctx/$2" || true; fi;'
    ' rm -rf "$s" "$s.old"; fi;'
    ' if [ ! -d "$1/ctx/$2/tree" ]; then echo "no tree at $1/ctx/$2 after the rename" >&2; exit 67; fi;'
    ' : > "$1/ctx/$2.ok"; (' + _PRUNE + ') || true'
)
ORPHAN_MINUTES = 60


def cache_days() -> int:
    """How long a context tree may go unused on a node before a sync removes it."""
    raw = os.environ.get("ARCHFLEET_NODE_CACHE_DAYS", "14")
    try:
        days = int(raw)
    except ValueError:
        raise UsageError(f"ARCHFLEET_NODE_CACHE_DAYS={raw!r}: give a whole number of days (default 14)") from None
    if days < 0:
        raise UsageError(f"ARCHFLEET_NODE_CACHE_DAYS={raw!r}: give 0 or more days")
    return days


def _files(snap: Snapshot) -> list[Entry]:
    """Every file the node needs: the tree's, the Dockerfile, the ignore file applied."""
    return [e for e in snap.entries if e.kind == "file"] + [snap.dockerfile] + ([snap.ignore] if snap.ignore else [])


def _source(snap: Snapshot, e: Entry) -> Path:
    if e is snap.dockerfile:
        return snap.dockerfile_path
    if e is snap.ignore:
        return snap.ignore_path
    return snap.root / e.path


def _open(path: Path):
    return open(path, "rb")


def _changed(path: Path, how: str) -> UsageError:
    return UsageError(f"context file {path} {how} while it was being sent to a node: build again once "
                      "nothing is writing to it")


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")  # names as their bytes


def _member(name: str, kind: bytes, mode: int = 0o644, linkname: str = "", data: bytes = b"",
            mtime: int = 0) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname, info.size = kind, mode, mtime, linkname, len(data)
    return _header(info) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _blob(path: Path, name: str, e: Entry) -> Iterator[bytes]:
    """One blob member, its bytes read now and hashed while they are sent. Raises
    :class:`UsageError` naming the file when it is not the file the snapshot hashed (changed,
    grown, shrunk or gone): the stream then ends early and the node keeps nothing of it."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = e.size, e.mode, 0
    h = hashlib.sha256()
    try:
        with _open(path) as f:
            yield _header(info)
            left = e.size
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise _changed(path, "shrank")
                h.update(chunk)
                left -= len(chunk)
                yield chunk
            if f.read(1):
                raise _changed(path, "grew")
    except OSError as exc:
        raise _changed(path, f"could not be read ({exc.strerror})") from None
    if h.hexdigest() != e.digest:
        raise _changed(path, "changed")
    yield b"\0" * (-e.size % tarfile.BLOCKSIZE)


def _blob_tar(snap: Snapshot, names: set[str], stage: str) -> Iterator[bytes]:
    """The one tar stream of a sync, yielded in chunks (never a whole file in memory): the
    missing blobs, each checked against its digest as it is read, then the layout (headers
    only: directories, symlinks, hard links), then ``complete``. Everything lands under
    ``stage/<stage>/``; the node script moves it into place (see ``_UNPACK``)."""
    base = f"stage/{stage}"
    new = {}
    for e in _files(snap):
        if e.blob in names and e.blob not in new:
            new[e.blob] = e
    # Files keep mtime 0 (a build on any node sees the same); the staging directory is dated
    # now, so a prune on the node never takes it for an abandoned one while this sync runs.
    yield _member(base, tarfile.DIRTYPE, 0o755, mtime=int(time.time()))
    if new:
        yield _member(f"{base}/new", tarfile.DIRTYPE, 0o700)
        sums = "".join(f"{e.digest}  new/{blob}\n" for blob, e in new.items())
        yield _member(f"{base}/SHA256SUMS", tarfile.REGTYPE, data=sums.encode())
        for blob, e in new.items():
            yield from _blob(_source(snap, e), f"{base}/new/{blob}", e)

    def blob_path(e: Entry) -> str:
        return f"{base}/new/{e.blob}" if e.blob in new else f"blobs/{e.blob}"

    layout = [_member(f"{base}/tree", tarfile.DIRTYPE, 0o755)]
    for e in snap.entries:
        name = f"{base}/tree/{e.path}"
        if e.kind == "dir":
            layout.append(_member(name, tarfile.DIRTYPE, e.mode))
        elif e.kind == "link":
            layout.append(_member(name, tarfile.SYMTYPE, 0o777, linkname=e.target))
        else:
            layout.append(_member(name, tarfile.LNKTYPE, e.mode, linkname=blob_path(e)))
        if len(layout) >= 2048:  # about 1 MB of headers at a time
            yield b"".join(layout)
            layout.clear()
    # The Dockerfile lives beside the tree, not in it (it may come from outside the context).
    # The ignore file applied here goes beside it as "Dockerfile.dockerignore": BuildKit on the
    # node reads <Dockerfile name>.dockerignore first, so it applies the same file to the tree.
    for e in [snap.dockerfile] + ([snap.ignore] if snap.ignore else []):
        layout.append(_member(f"{base}/{e.path}", tarfile.LNKTYPE, 0o644, linkname=blob_path(e)))
    layout.append(_member(f"{base}/complete", tarfile.REGTYPE))
    layout.append(b"\0" * (2 * tarfile.BLOCKSIZE))  # end of archive
    yield b"".join(layout)


async def sync_context(transport, request, reporter=None) -> tuple[str, str, Transfer | None]:
    """Make the context exist on the node; return (context dir, Dockerfile path) there, and the
    :class:`~archfleet.model.Transfer` measured when the sync sent the context over a link the
    transport names (its ``link_key``), else None (the node had it, or no link to learn). The
    caller hands the Transfer on (``PlatformResult.transfer``): the learn stage learns the
    link rate from it.

    Beside that Dockerfile lies the ignore file this snapshot applied, as
    ``Dockerfile.dockerignore`` (when one applied), so BuildKit on the node filters the tree
    by the same rule as a local build does.

    Raises :class:`UsageError` naming a context file that changed or vanished while it was sent
    (the node keeps nothing of that sync), :class:`InfrastructureError` when the node's side
    fails (no ``sh``/``tar``/``sha256sum``, a full disk, a blob that arrived corrupted)."""
    snap = await asyncio.to_thread(snapshot_of, request)
    ctx_dir = f"{CACHE}/ctx/{snap.digest}/tree"
    df_path = f"{CACHE}/ctx/{snap.digest}/Dockerfile"

    async def sh(script: str, *args: str, stdin=None):
        done = await transport.run(["sh", "-c", script, "sh", *args], stdin=stdin, timeout=None)
        if done.returncode in (126, 127):
            raise InfrastructureError(transport.node, f"context sync: {done.last_line()}")
        return done

    check = await sh(_CHECK, CACHE, snap.digest)
    if check.ok and "present" in check.tail:
        return ctx_dir, df_path, None
    wanted = sorted({e.blob for e in _files(snap)})
    names = await _missing(transport, wanted)
    # short: "stage/<16>/new/<blob>" stays within tar's 100-byte name field, so the blob and
    # every hard link to it need no PAX header of their own (1 KiB each)
    stage = secrets.token_hex(8)
    sent = [0]

    def counted(chunks):
        for chunk in chunks:
            sent[0] += len(chunk)
            yield chunk

    started = time.monotonic()
    unpack = await sh(_UNPACK, CACHE, snap.digest, stage, str(cache_days() * 1440), str(ORPHAN_MINUTES),
                      stdin=counted(_blob_tar(snap, names, stage)))
    if not unpack.ok:
        raise InfrastructureError(transport.node, f"context sync failed: {unpack.last_line()}")
    seconds = time.monotonic() - started
    key = getattr(transport, "link_key", None)
    return ctx_dir, df_path, (Transfer(key, sent[0], seconds, stage) if key else None)


PRUNE_STATES = ("pruned", "recent", "absent")


async def prune(transport, cache: str = CACHE, *, tree_minutes: int | None = None,
                orphan_minutes: int = ORPHAN_MINUTES) -> str:
    """Bound the node's cache by age, on its own (a sync that unpacks a new tree runs the same
    script as its last step): at most once a day, cheap otherwise. Never raises: returns what
    happened, ``"pruned"``, ``"recent"`` (pruned less than a day ago: nothing done), ``"absent"``
    (no cache there), or ``"failed: <why>"`` (the node could not be asked, or the script failed)."""
    if tree_minutes is None:
        tree_minutes = cache_days() * 1440
    try:
        done = await transport.run(["sh", "-c", _PRUNE, "sh", cache, "", "", str(tree_minutes), str(orphan_minutes)],
                                   timeout=120)
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"
    said = done.last_line()
    if not done.ok:
        return f"failed: {said}"
    return said if said in PRUNE_STATES else f"failed: unexpected answer {said!r}"


async def _missing(transport, wanted: list[str]) -> set[str]:
    """Which of ``wanted`` the node's blob cache lacks."""
    lines: list[str] = []
    done = await transport.run(["sh", "-c", _MISSING, "sh", CACHE],
                               stdin="".join(f"{b}\n" for b in wanted).encode(), on_line=lines.append)
    if not done.ok:
        raise InfrastructureError(transport.node, f"context sync failed: {done.last_line()}")
    return {l.strip() for l in lines if l.strip()}

