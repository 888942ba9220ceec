"""Push one child image by digest, from its engine's export: no tag is created.

Docker 20.10's Engine API can push a tag only, so a child used to be pushed under a working tag
of its own (``<tag>-<os>-<arch>``) that nothing removed. Here archfleet's own registry client
pushes it instead, from what the engine exports (:func:`archfleet.engine.export`, ``docker save``
of the image id, streamed), in two steps around the push gate:

1. :func:`prepare` (before the gate: nothing is sent): read the export as it streams, each
   member hashed and, when larger than :data:`SMALL`, spooled to a file in :func:`spool_dir`
   (never held whole in memory). A layer (a ``.tar`` member) new to this machine is compressed
   **while it is read** (:class:`_Gzip`: the same blob either way): its print (its size and the
   digest of its first bytes, known before the rest: :mod:`archfleet.layerprints`) is none this
   machine has exported before (such a layer is likely in the registry: found there, not sent);
   and when the push gate is open already (the build's only platform,
   :meth:`archfleet.executor.Job.alone`) it is also **uploaded while it is compressed**
   (one stream upload, :meth:`RegistryClient.push_growing`), provided every layer the registry
   holds has a known print (else a base's layer could be sent for nothing). Then the manifest to
   push is decided:

   - a **docker-archive** (``manifest.json``, ``<image id>.json``, ``<dir>/layer.tar``: Docker's
     ``docker save`` up to version 24, podman's default) holds each layer uncompressed. Each
     layer's sha256 must be its ``diff_id`` in the config. A layer the registry already holds
     (``known``, :func:`known_layers`: diff_id -> the blob of a base image's layer or of the
     platform's last child's, same registry) is not compressed at all: it will be skipped or
     mounted. Every other layer is compressed
     **deterministically** (gzip of ISA-L's deflate at level :data:`GZIP_LEVEL`, or
     :data:`INCOMPRESSIBLE_LEVEL` for a block that does not compress; header mtime 0, no file
     name), hashing as it goes, into a second spool file: the same layer always gives the same
     blob digest on this machine, so an unchanged layer is found in the registry and never sent
     twice. The manifest is archfleet's own: a Docker manifest (v2 schema 2), or an OCI
     manifest when ``annotations`` are given (only OCI manifests carry annotations).
   - an **OCI layout** (``index.json`` and ``blobs/sha256/``: Docker 25+, podman's oci-archive)
     is pushed exactly as the engine wrote it when it holds attestation manifests (BuildKit's
     ``unknown/unknown`` entries) or compressed layers: re-compressing would change the image's
     digest, which each attestation names as its subject. The child is then a small OCI index
     of the image manifest and the attestations that refer to it (pushed by digest too), which
     verification flattens and the merge keeps. An OCI layout with uncompressed layers and no
     attestation is read through its ``manifest.json`` like a docker-archive.

2. :func:`upload` (after the gate): every blob, then the manifest, by digest (``repo@sha256:``).
   A blob is sent at most once: one sent while the export was read is waited for (and sent
   again the usual way if that upload failed); else HEAD first (``skipped``), then a
   cross-repository mount from the base's repository (``mounted``), else an upload in
   :data:`archfleet.registry.CHUNK` pieces read from the spool file (``uploaded``). An early
   upload of a layer that turned out to be one the registry holds is abandoned (its session
   cancelled, nothing linked).

Errors: :class:`archfleet.errors.InfrastructureError` when the engine's export is cut off or
inconsistent (another node may build the platform); registry errors keep their types.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import struct
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import AsyncIterator, Iterable, Mapping, Sequence

import attrs
from isal import isal_zlib

from . import layercache, layerprints, mediatypes
from .elfcheck import scan_layer
from .errors import ArchfleetError, InfrastructureError, RegistryError
from .model import Annotation, BuildRequest, LayerScan
from .platforms import Platform
from .reference import Reference, parse_reference
from .registry import RegistryClient, sha256_digest

SMALL = 1024 * 1024  # bytes: a member up to this size is kept in memory, a larger one spooled
PIECE = 1024 * 1024  # bytes read, hashed, compressed or sent at a time
# ISA-L's deflate (python-isal) at its highest level: on debian:bookworm's 121 MB layer 0.31 s
# and 52.9 MB, where zlib's level 6 took 3.09 s for 48.7 MB and Docker's push (Go's
# compress/gzip, DefaultCompression) sent 49.6 MB; on an incompressible layer 17x faster than zlib
GZIP_LEVEL = 3
# A block whose sample does not shrink is deflated at level 1 instead: ISA-L's level 3 spent
# 84 ms on a 30 MB layer of already-compressed bytes for the same size as level 1's 29 ms
# (debian:bookworm's layer: 11 of 232 blocks, size unchanged to 0.01%). Decided by the block's
# own bytes, so the same layer still gives the same blob.
INCOMPRESSIBLE_LEVEL = 1
SAMPLE = 16 * 1024  # bytes of each block deflated at level 1 to decide
INCOMPRESSIBLE = 0.97  # a sample deflated to at least this share of its size does not compress
COMPRESSING = 2  # layers compressed at once (each in a thread)

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
ATTESTATION = "attestation-manifest"  # vnd.docker.reference.type of BuildKit's attestations
REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"


def spool_dir() -> str:
    """Where exports are spooled: ``$TMPDIR`` when set, else ``/var/tmp`` (disk-backed by
    convention, unlike a ``/tmp`` that may be tmpfs, i.e. memory)."""
    return os.environ.get("TMPDIR") or ("/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir())


def check_spool_dir() -> None:
    """Raise :class:`~archfleet.errors.EnvironmentProblem` (exit 3, one line) when
    :func:`spool_dir` is not a directory this process can write in: the pushes and ``-o`` spool
    each export there, and a ``TMPDIR`` that names no such directory failed only once a build had
    ended, as a plugin's ``FileNotFoundError`` (exit 1; found by the fresh-user helper). Checked
    before anything is built (:func:`archfleet.pipeline.check_request`)."""
    from .errors import EnvironmentProblem

    path = spool_dir()
    if os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK):
        return
    named = f"TMPDIR={path}" if os.environ.get("TMPDIR") else f"the spool directory {path}"
    raise EnvironmentProblem(f"{named} is not a directory archfleet can write in (image exports are spooled "
                             "there): set TMPDIR to one, or unset it to use /var/tmp")


@attrs.frozen
class Blob:
    """A blob to push: its descriptor (``digest``, ``size``, ``media_type``) and where its bytes
    are: ``data`` (small), a spool file ``path``, or nowhere (``mount_from``: a repository of
    the same registry that holds it, for a base layer that is mounted, not sent)."""

    digest: str
    size: int
    media_type: str
    data: bytes | None = attrs.field(default=None, repr=False)
    path: Path | None = None
    mount_from: str | None = None  # registry/repository

    def descriptor(self) -> dict:
        """The OCI/Docker descriptor of this blob."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@attrs.frozen
class Prepared:
    """What :func:`prepare` decided: the blobs in push order (configs and layers first), then
    the manifests to put by digest, each (exact bytes, media type), the last being the child
    (an image manifest, or the small index of it and its attestations). ``scans``: what each
    layer archfleet compressed holds (:func:`archfleet.elfcheck.scan_layer` of its bytes, by the
    blob's digest), for verification, which then need not read it back. ``workdir`` holds the
    spool files; :func:`discard` removes it. ``compressed``: how many layers were compressed
    (the rest the registry holds already, :func:`known_layers`)."""

    blobs: tuple[Blob, ...]
    manifests: tuple[tuple[bytes, str], ...]
    workdir: Path | None = None
    scans: tuple[LayerScan, ...] = ()
    compressed: int = 0  # layers archfleet compressed (the others: known, or pushed as written)
    # (diff_id, size, head digest) of each layer read (archfleet.layerprints)
    layer_prints: tuple[tuple[str, int, str], ...] = ()
    # uploads begun while the export was read (the gate was open): blob digest -> its task, and
    # every such task (those of layers the registry turned out to hold end by themselves)
    streamed: Mapping[str, asyncio.Task] = attrs.field(factory=dict, eq=False, repr=False)
    sending: tuple[asyncio.Task, ...] = attrs.field(default=(), eq=False, repr=False)

    @property
    def child(self) -> tuple[str, str, int]:
        """(digest, media type, size) of the child the index will name."""
        body, media_type = self.manifests[-1]
        return sha256_digest(body), media_type, len(body)


def discard(prepared: Prepared | None) -> None:
    """Cancel ``prepared``'s uploads still under way and remove its spool files (safe to call twice)."""
    if prepared is None:
        return
    for task in prepared.sending:
        task.cancel()
    if prepared.workdir is not None:
        shutil.rmtree(prepared.workdir, ignore_errors=True)


# -- reading the export ------------------------------------------------------------------------


@attrs.frozen
class _Member:
    name: str
    digest: str
    size: int
    data: bytes | None = attrs.field(default=None, repr=False)
    path: Path | None = None
    link: str | None = None  # a symlink's target, as a member name
    head: str | None = None  # its print: sha256 hex of its first layerprints.HEAD bytes
    gz: tuple[str, int, Path] | None = None  # compressed while it was read: (digest, size, file)
    scan: object = attrs.field(default=None, eq=False, repr=False)  # its scan, a concurrent Future, then


class _Growing:
    """A compressed layer's spool file while it is written (by the reading thread) and read (by
    its upload, on the event loop): how many bytes are in it so far, and once it is complete,
    its (diff_id, blob digest). The thread's calls (:meth:`advance`, :meth:`finish`) reach the
    loop through ``call_soon_threadsafe``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path):
        self._loop = loop
        self.path = path
        self.written = 0
        self.final: tuple[str, str | None] | None = None  # (diff_id, digest); digest None: abandoned
        self._waiters: list[asyncio.Future] = []
        self.task: asyncio.Task | None = None

    def advance(self, total: int) -> None:
        """(thread) ``total`` bytes are in the file now."""
        self._loop.call_soon_threadsafe(self._set, total, None)

    def finish(self, diff_id: str, digest: str | None) -> None:
        """(thread) The file is complete (``digest``), or abandoned (None): no more bytes."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
            self._loop.call_soon_threadsafe(self._set, None, (diff_id, digest))

    def _set(self, total: int | None, final: tuple | None) -> None:
        if total is not None:
            self.written = max(self.written, total)
        if final is not None and self.final is None:
            self.final = final
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _changed(self) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def pieces(self) -> AsyncIterator[bytes]:
        """The file's bytes from the first, as they are written, until it is complete (nothing
        more once it is abandoned)."""
        handle = await asyncio.to_thread(open, self.path, "rb")
        try:
            pos = 0
            while True:
                if self.final is not None and self.final[1] is None:
                    return
                if pos < self.written:
                    piece = await asyncio.to_thread(handle.read, min(PIECE, self.written - pos))
                    if not piece:
                        raise OSError(f"{self.path} is shorter than written")
                    pos += len(piece)
                    yield piece
                    continue
                if self.final is not None:
                    return
                await self._changed()
        finally:
            handle.close()

    async def ended(self) -> tuple[str, str | None]:
        """(diff_id, digest) once the file is complete or abandoned."""
        while self.final is None:
            await self._changed()
        return self.final


class _Streaming:
    """What the reading thread does with a layer as it reads it (:func:`prepare`): a layer whose
    print (size, digest of its first bytes: :mod:`archfleet.layerprints`) is none of ``skip``'s
    (the prints of every layer exported on this machine before) is compressed while it is read, on ``pool``;
    with ``push`` (client, repository: the push gate is open already) it is also uploaded as it
    is compressed (:meth:`RegistryClient.push_growing`), and the upload abandoned when the
    layer's diff_id turns out to be one of ``known``'s after all."""

    def __init__(self, loop, pool, *, skip: frozenset[tuple[int, str]], known: Mapping[str, "Blob"],
                 push: tuple[RegistryClient, Reference] | None):
        self.loop = loop
        self.pool = pool
        self.skip = skip
        self.known = known
        self.push = push
        self.growing: list[_Growing] = []

    @staticmethod
    def layer_like(name: str, size: int) -> bool:
        """Member ``name`` may be a layer worth compressing as it is read: a layer of a
        docker-archive (``<dir>/layer.tar`` as Docker's ``docker save`` writes it, ``<id>.tar``
        as podman's does; an OCI layout's blobs have no suffix) large enough to be spooled."""
        return name.endswith(".tar") and size > SMALL

    def wants(self, size: int, head: str) -> bool:
        """Compress the layer of this print as it is read: it is new to this machine."""
        return (size, head) not in self.skip

    def begin(self, path: Path) -> _Growing | None:
        """(thread) The compressed file ``path`` is about to be written: its upload starts, when
        there is one to start."""
        if self.push is None:
            return None
        growing = _Growing(self.loop, path)
        self.loop.call_soon_threadsafe(self._start, growing)
        return growing

    def _start(self, growing: _Growing) -> None:
        client, repository = self.push

        async def digest() -> str | None:  # None: abandoned (the layer is known after all: _read_streamed)
            return (await growing.ended())[1]

        growing.task = asyncio.ensure_future(client.push_growing(repository, growing.pieces, digest,
                                                                 where="(a layer of the export)"))
        self.growing.append(growing)

    def stop(self) -> None:
        """Cancel every upload still under way (the export failed, or the caller was cancelled)."""
        for growing in self.growing:
            if growing.task is not None:
                growing.task.cancel()


class _Reader(io.RawIOBase):
    """A blocking file over an async iterator of byte pieces, for ``tarfile`` in a thread:
    each read asks the event loop for the next piece."""

    def __init__(self, pieces: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop):
        self._pieces = pieces
        self._loop = loop
        self._buf = b""
        self._eof = False
        self._asking = None  # the loop's future of the piece being waited for
        self.stopped = threading.Event()

    def stop(self) -> None:
        """(loop) Stop the reading thread: at its next read, or now if it waits for a piece (an
        export that has stalled)."""
        self.stopped.set()
        asking = self._asking
        if asking is not None:
            asking.cancel()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        import concurrent.futures

        while not self._buf and not self._eof:
            if self.stopped.is_set():
                raise _Stopped()
            self._asking = future = asyncio.run_coroutine_threadsafe(_next(self._pieces), self._loop)
            if self.stopped.is_set():
                future.cancel()
            try:
                piece = future.result()
            except concurrent.futures.CancelledError:
                raise _Stopped() from None
            finally:
                self._asking = None
            if piece is None:
                self._eof = True
            else:
                self._buf = bytes(piece)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Stopped(Exception):
    """The reading thread was told to stop (its caller was cancelled)."""


async def _next(pieces: AsyncIterator[bytes], want: int = PIECE) -> bytes | None:
    """The next ``want`` bytes or more of ``pieces`` (fewer at its end), None once it is over:
    an engine's pipe hands over ~128 KiB at a time, and each hand-over to the reading thread
    costs ~70 us (30 MB: 503 of them, 35-50 ms of a 30 MB layer's read, issue 17)."""
    got: list[bytes] = []
    size = 0
    while size < want:
        try:
            piece = await pieces.__anext__()
        except StopAsyncIteration:
            break
        got.append(piece)
        size += len(piece)
    if not got:
        return None
    return got[0] if len(got) == 1 else b"".join(got)


def _read_members(fileobj, workdir: Path, streaming: _Streaming | None = None) -> dict[str, _Member]:
    """Every regular file and symlink of the tar stream ``fileobj``: hashed; kept in memory up
    to :data:`SMALL` bytes, else spooled to a file in ``workdir``; a layer ``streaming`` wants
    is compressed as it is read (and uploaded, when it says so), then scanned in the background
    (``_Member.gz``, ``.scan``). Blocking (a thread)."""
    members: dict[str, _Member] = {}
    n = 0
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            name = posixpath.normpath(info.name.lstrip("/"))
            if info.issym():
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
                members[name] = _Member(name, "", 0, link=target)
                continue
            if info.islnk():
                members[name] = _Member(name, "", 0, link=posixpath.normpath(info.linkname.lstrip("/")))
                continue
            if not info.isfile():
                continue
            source = tar.extractfile(info)
            hasher = hashlib.sha256()
            if info.size <= SMALL:
                data = source.read()
                hasher.update(data)
                head = hashlib.sha256(data[:layerprints.HEAD]).hexdigest() if len(data) > layerprints.HEAD \
                    else hasher.hexdigest()
                members[name] = _Member(name, "sha256:" + hasher.hexdigest(), len(data), data=data, head=head)
                continue
            n += 1
            members[name] = _spool(name, info.size, source, workdir / f"m{n}", workdir / f"z{n}", streaming)
    return members


def _spool(name: str, size: int, source, path: Path, gz_path: Path, streaming: _Streaming | None) -> _Member:
    """Member ``name`` (``size`` bytes, read from ``source``) spooled to ``path``, hashed, its
    print taken (:mod:`archfleet.layerprints`); compressed as it is read when ``streaming``
    wants it (:func:`_read_streamed`)."""
    hasher = hashlib.sha256()
    piece = source.read(layerprints.HEAD)
    head = hashlib.sha256(piece).hexdigest()
    if streaming is not None and streaming.layer_like(name, size) and streaming.wants(size, head):
        return _read_streamed(name, piece, head, source, hasher, path, gz_path, streaming)
    size = 0
    with open(path, "wb") as out:
        while piece:
            hasher.update(piece)
            out.write(piece)
            size += len(piece)
            piece = source.read(PIECE)
    return _Member(name, "sha256:" + hasher.hexdigest(), size, path=path, head=head)


def _read_streamed(name: str, piece: bytes, head: str, source, hasher, path: Path, gz_path: Path,
                   streaming: _Streaming) -> _Member:
    """One layer read to ``path`` (``piece``: its first bytes, read already), compressed to
    ``gz_path`` as it comes (:class:`_Gzip`, the same blob :func:`gzip_layer` makes), uploaded as
    it is compressed when ``streaming`` says so, then scanned on ``streaming.pool`` while the
    export is read on."""
    growing = streaming.begin(gz_path)
    packer = _Gzip(gz_path, streaming.pool, growing.advance if growing is not None else None)
    size = 0
    try:
        with open(path, "wb") as out:
            while piece:
                hasher.update(piece)
                out.write(piece)
                packer.feed(piece)
                size += len(piece)
                piece = source.read(BLOCK)  # a block at a time: at most two held for the packer
        digest, gz_size = packer.close()
    except BaseException:
        packer.abort()
        if growing is not None:
            growing.finish("", None)
        raise
    diff_id = "sha256:" + hasher.hexdigest()
    if growing is not None:  # a layer the registry holds after all: what is left is not sent
        growing.finish(diff_id, None if diff_id in streaming.known else digest)
    member = _Member(name, diff_id, size, path=path, head=head)
    scan = streaming.pool.submit(_scan, member)
    return attrs.evolve(member, gz=(digest, gz_size, gz_path), scan=scan)


def _resolve(members: Mapping[str, _Member], name: str) -> _Member:
    """The member ``name`` names, following symlinks and hard links (docker save links a layer
    saved twice to its first copy)."""
    seen = set()
    name = posixpath.normpath(name)
    while name in members and members[name].link is not None and name not in seen:
        seen.add(name)
        name = members[name].link
    if name not in members or members[name].link is not None:
        raise _Bad(f"the export has no {name}")
    return members[name]


class _Bad(Exception):
    """The export is not an image archive archfleet can read (the message says why)."""


def _content(member: _Member) -> bytes:
    if member.data is not None:
        return member.data
    return member.path.read_bytes()  # only for manifests and configs, which are small


def _json(member: _Member) -> dict | list:
    try:
        return json.loads(_content(member))
    except ValueError:
        raise _Bad(f"{member.name} is not JSON") from None


# -- compressing -----------------------------------------------------------------------------------


def _scan(member: _Member) -> dict | None:
    """What the uncompressed layer ``member`` holds (:func:`archfleet.elfcheck.scan_layer`), or
    None when it is not a tar archfleet can read (verification then reads it as it would)."""
    try:
        if member.data is not None:
            return scan_layer(io.BytesIO(member.data))
        with open(member.path, "rb") as f:
            return scan_layer(f)
    except (tarfile.TarError, OSError, EOFError):
        return None


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
BLOCK = 512 * 1024  # raw bytes deflated on their own, as pigz does (its default is 128 KiB)
WINDOW = 32 * 1024  # deflate's window: each block is primed with the previous block's last 32 KiB


def block_level(block: bytes) -> int:
    """The deflate level for ``block``: :data:`GZIP_LEVEL`, or :data:`INCOMPRESSIBLE_LEVEL` when
    its first :data:`SAMPLE` bytes deflate to :data:`INCOMPRESSIBLE` of their size or more
    (already-compressed data: archives, media, compressed files)."""
    sample = block[:SAMPLE]
    if not sample:
        return GZIP_LEVEL
    probe = isal_zlib.compressobj(INCOMPRESSIBLE_LEVEL, isal_zlib.DEFLATED, -15)
    size = len(probe.compress(sample)) + len(probe.flush())
    return INCOMPRESSIBLE_LEVEL if size >= INCOMPRESSIBLE * len(sample) else GZIP_LEVEL


def _deflate_block(block: bytes, primer: bytes, last: bool) -> bytes:
    """One block of the layer as raw deflate at :func:`block_level`, primed with the bytes
    before it (``primer``, so matches reach back into the previous block as in one stream) and
    ended byte-aligned (a sync flush) unless it is the ``last``: blocks concatenate into one
    valid deflate stream."""
    level = block_level(block)
    packer = (isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, 8, isal_zlib.Z_DEFAULT_STRATEGY, primer)
              if primer else isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15))
    return packer.compress(block) + packer.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH)


def _blocks(member: _Member):
    """The raw layer in :data:`BLOCK`-sized pieces."""
    if member.data is not None:
        for i in range(0, len(member.data), BLOCK):
            yield member.data[i:i + BLOCK]
        return
    with open(member.path, "rb") as source:
        while block := source.read(BLOCK):
            yield block


class _Gzip:
    """One layer compressed as :func:`gzip_layer` says, fed in pieces of any size as they come
    (:meth:`feed`, then :meth:`close`): the blocks are cut at the same offsets whatever the
    pieces, so the blob is the same bytes however the layer arrived (read whole from a spool
    file, or while the engine's export streams). Deflates on ``pool`` (at most
    :data:`COMPRESSING` blocks ahead), writes to ``out`` in order; ``on_written(total)`` after
    each write (the compressed bytes in ``out`` so far). Blocking: the feeding thread waits on
    the pool."""

    def __init__(self, out: Path, pool, on_written=None):
        self._sink = open(out, "wb")
        self._pool = pool
        self._on_written = on_written
        self._hasher = hashlib.sha256()
        self._crc = 0
        self._raw = 0
        self._primer = b""
        self._held = bytearray()  # raw bytes not deflated yet: at most a block and a piece
        self._pending: list = []
        self.size = 0
        self._put(GZIP_HEADER)

    def _put(self, data: bytes) -> None:
        if data:
            self._hasher.update(data)
            self._sink.write(data)
            self.size += len(data)
            if self._on_written is not None:
                self._sink.flush()
                self._on_written(self.size)

    def _submit(self, block: bytes, last: bool) -> None:
        self._crc = isal_zlib.crc32(block, self._crc)
        self._raw += len(block)
        self._pending.append(self._pool.submit(_deflate_block, block, self._primer, last))
        self._primer = block[-WINDOW:] if len(block) >= WINDOW else (self._primer + block)[-WINDOW:]
        while len(self._pending) > COMPRESSING:
            self._put(self._pending.pop(0).result())

    def feed(self, data: bytes) -> None:
        """More of the layer's bytes. A block is deflated once bytes after it arrive (until
        then it may be the last, which ends the stream)."""
        self._held += data
        while len(self._held) > BLOCK:
            with memoryview(self._held) as view:
                block = bytes(view[:BLOCK])
            del self._held[:BLOCK]
            self._submit(block, False)

    def close(self) -> tuple[str, int]:
        """The layer has ended: deflate the rest, write the trailer; (digest, size) of the blob."""
        try:
            self._submit(bytes(self._held), True)  # empty only for an empty layer: one empty final block
            self._held = bytearray()
            while self._pending:
                self._put(self._pending.pop(0).result())
            self._put(struct.pack("<II", self._crc & 0xFFFFFFFF, self._raw & 0xFFFFFFFF))
        finally:
            self.abort()
        return "sha256:" + self._hasher.hexdigest(), self.size

    def abort(self) -> None:
        """Stop: close the file (what was written stays), forget the blocks in flight."""
        for future in self._pending:
            future.cancel()
        self._pending = []
        self._sink.close()


def gzip_layer(member: _Member, out: Path) -> tuple[str, int]:
    """Compress ``member`` into ``out`` as one gzip member, deterministically: a fixed header
    (mtime 0, no file name), the layer deflated by ISA-L at :func:`block_level` in :data:`BLOCK`
    pieces, each primed with the 32 KiB before it (pigz's parallel gzip), on :data:`COMPRESSING`
    threads, written in order; the same bytes always give the same blob, whatever the threads
    did. The compressed bytes are hashed as they are written; return (digest, size). At most a
    few blocks are in memory. Blocking (a thread). :class:`_Gzip` does it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(COMPRESSING, thread_name_prefix="archfleet-gzip") as pool:
        packer = _Gzip(out, pool)
        try:
            for block in _blocks(member):
                packer.feed(block)
        except BaseException:
            packer.abort()
            raise
        return packer.close()


# -- deciding what to push -------------------------------------------------------------------------


async def prepare(export: AsyncIterator[bytes], *, node: str, image_id: str = "",
                  annotations: Sequence[Annotation] = (), platform: Platform | None = None,
                  known: Mapping[str, Blob] | None = None,
                  push: tuple[RegistryClient, Reference] | None = None) -> Prepared:
    """Read ``export`` (the image archive :func:`archfleet.engine.export` streams) and decide
    what to push for the child: see the module docstring. ``known``: diff_id -> a blob the
    registry holds (``mount_from`` set, :func:`known_layers`) that need not be compressed or sent. ``annotations``: the
    ``manifest`` annotations of ``platform`` (an OCI manifest then). ``push`` (client,
    repository), only once the push gate is open: a layer compressed while it is read is also
    uploaded while it is compressed (see the module docstring); else nothing is sent. The
    caller :func:`discard`\\ s the result when done (or :func:`upload`\\ s it first). Raises
    :class:`InfrastructureError` (naming ``node``) when the export is cut off or not an image
    archive archfleet can read."""
    from concurrent.futures import ThreadPoolExecutor

    known = known or {}
    prints = await asyncio.to_thread(layerprints.recall_all)
    if any(diff_id not in prints for diff_id in known):
        push = None  # a layer the registry holds could not be told by its print: nothing is sent early
    workdir = Path(tempfile.mkdtemp(prefix="archfleet-export-", dir=spool_dir()))
    loop = asyncio.get_running_loop()
    reader = _Reader(export, loop)
    pool = ThreadPoolExecutor(COMPRESSING + 1, thread_name_prefix="archfleet-gzip")  # the blocks, and a scan
    # only a layer new to this machine is compressed (and sent) as it is read: one exported here
    # before is likely in a registry already (found there, not sent), whichever project pushed it
    streaming = _Streaming(loop, pool, skip=frozenset(prints.values()), known=known, push=push)
    try:
        reading = loop.run_in_executor(None, _read_members, io.BufferedReader(reader, PIECE), workdir, streaming)
        try:
            members = await asyncio.shield(reading)
        except asyncio.CancelledError:
            reader.stop()  # the thread stops at its next read (or now); wait for it, then close the export
            with contextlib.suppress(BaseException):
                await reading
            raise
        except ArchfleetError:
            raise
        except (tarfile.TarError, OSError, EOFError, _Bad) as exc:
            raise InfrastructureError(node, f"the engine's export of {image_id or 'the image'} could not be read: "
                                      f"{exc}") from None
        finally:
            with contextlib.suppress(Exception):
                await export.aclose()
        try:
            decided = await _decide(members, workdir, node=node, image_id=image_id, annotations=annotations,
                                    platform=platform, known=known)
        except _Bad as exc:
            raise InfrastructureError(node, f"the engine's export of {image_id or 'the image'}: {exc}") from None
        wanted = {g.final[1]: g.task for g in streaming.growing if g.final is not None and g.final[1] is not None}
        return attrs.evolve(decided, workdir=workdir, streamed=wanted,  # discard() removes it, spool files and all
                            sending=tuple(g.task for g in streaming.growing))
    except BaseException:
        streaming.stop()
        await asyncio.gather(*(g.task for g in streaming.growing), return_exceptions=True)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


async def _decide(members: Mapping[str, _Member], workdir: Path, *, node: str, image_id: str,
                  annotations: Sequence[Annotation], platform: Platform | None,
                  known: Mapping[str, Blob]) -> Prepared:
    if "index.json" in members:
        layout = _oci_layout(members, platform)
        if layout is not None:
            return layout
    if "manifest.json" not in members:
        raise _Bad("it is neither a docker-archive (manifest.json) nor an OCI layout (index.json)")
    entries = _json(_resolve(members, "manifest.json"))
    if not isinstance(entries, list) or len(entries) != 1:
        raise _Bad("its manifest.json does not describe exactly one image")
    entry = entries[0]
    config_member = _resolve(members, str(entry.get("Config") or ""))
    config_bytes = _content(config_member)
    if image_id and image_id.startswith("sha256:") and config_member.digest != image_id:
        raise _Bad(f"its config is {config_member.digest}, not the image {image_id}")
    try:
        diff_ids = list(json.loads(config_bytes)["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError):
        raise _Bad("its config has no rootfs.diff_ids") from None
    layer_names = list(entry.get("Layers") or [])
    if len(layer_names) != len(diff_ids):
        raise _Bad(f"it lists {len(layer_names)} layers for {len(diff_ids)} diff_ids")
    layers = [_resolve(members, name) for name in layer_names]
    for member, diff_id in zip(layers, diff_ids):
        if member.digest != diff_id:
            raise _Bad(f"layer {member.name} is {member.digest}, its config says {diff_id}")
    oci = bool(annotations)
    layer_type = OCI_LAYER_GZIP if oci else DOCKER_LAYER_GZIP
    limit = asyncio.Semaphore(COMPRESSING)
    made: dict[str, asyncio.Task] = {}
    scans: list[LayerScan] = []

    async def compressed(member: _Member) -> Blob:
        there = known.get(member.digest)
        if there is not None:
            # not sent, but verification reads what it holds: from here (its bytes are in the
            # spool) when no scan of that blob is cached, rather than from the registry
            if await asyncio.to_thread(layercache.load, there.digest) is None:
                scan = await asyncio.to_thread(_scan, member)
                if scan is not None:
                    scans.append(LayerScan(there.digest, scan))
            return attrs.evolve(there, media_type=layer_type)
        if member.gz is not None:  # compressed while it was read
            digest, size, path = member.gz
            scan = await asyncio.wrap_future(member.scan)
            if scan is not None:
                scans.append(LayerScan(digest, scan))
            return Blob(digest, size, layer_type, path=path)
        async with limit:
            out = workdir / f"gz-{member.digest[7:]}"
            # the scan reads the layer while it is compressed: ISA-L and the file reads let go
            # of the GIL, and the two took one after the other 9 ms of a 30 MB layer's 75
            (digest, size), scan = await asyncio.gather(asyncio.to_thread(gzip_layer, member, out),
                                                        asyncio.to_thread(_scan, member))
        if scan is not None:
            scans.append(LayerScan(digest, scan))
        return Blob(digest, size, layer_type, path=out)

    for member in layers:
        if member.digest not in made:
            made[member.digest] = asyncio.ensure_future(compressed(member))
    try:
        blobs = [await made[m.digest] for m in layers]
    finally:
        for task in made.values():
            task.cancel()
    config = Blob(config_member.digest, config_member.size, OCI_CONFIG if oci else DOCKER_CONFIG, data=config_bytes)
    doc: dict = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST if oci else mediatypes.DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in blobs],
    }
    if oci:
        doc["annotations"] = {a.key: a.value for a in annotations}
    body = json.dumps(doc, indent=3).encode() + b"\n"
    unique: dict[str, Blob] = {config.digest: config}
    for b in blobs:
        unique.setdefault(b.digest, b)
    return Prepared(tuple(unique.values()), ((body, doc["mediaType"]),), scans=tuple(scans),
                    compressed=sum(1 for b in unique.values() if b.path is not None),
                    layer_prints=tuple(dict.fromkeys((m.digest, m.size, m.head) for m in layers if m.head)))


def _layer_compressed(media_type: str) -> bool:
    return media_type not in (OCI_LAYER_TAR, DOCKER_LAYER_TAR)


def _oci_layout(members: Mapping[str, _Member], platform: Platform | None) -> Prepared | None:
    """The child of an OCI-layout export, pushed as the engine wrote it (module docstring), or
    None when it is better read through its ``manifest.json`` (uncompressed layers, no
    attestations, and a manifest.json there)."""
    def blob(digest: str) -> _Member:
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise _Bad(f"a descriptor names {digest!r}, not a sha256 digest")
        member = _resolve(members, f"blobs/sha256/{digest[7:]}")
        if member.digest != digest:
            raise _Bad(f"blob {digest} in the export does not match its digest")
        return member

    index = _json(_resolve(members, "index.json"))
    tops = [d for d in (index.get("manifests") or []) if isinstance(d, dict)] if isinstance(index, dict) else []
    if not tops:
        raise _Bad("its index.json lists no image")
    top = tops[0]
    images: list[dict] = []
    attestations: list[dict] = []
    if top.get("mediaType") in mediatypes.INDEXES:
        inner = _json(blob(top["digest"]))
        for d in inner.get("manifests") or []:
            annotations = d.get("annotations") or {}
            if annotations.get(REFERENCE_TYPE) == ATTESTATION:
                attestations.append(d)
            else:
                images.append(d)
    else:
        images.append(top)
    if platform is not None and len(images) > 1:
        images = [d for d in images if _platform_text(d.get("platform") or {}) == str(platform)] or images[:1]
    image = images[0]
    attestations = [d for d in attestations if (d.get("annotations") or {}).get(REFERENCE_DIGEST) == image["digest"]]
    image_doc = _json(blob(image["digest"]))
    layers = image_doc.get("layers") or []
    if not attestations and "manifest.json" in members and not any(
            _layer_compressed(str(d.get("mediaType"))) for d in layers):
        return None  # uncompressed layers: compressed by archfleet instead, through manifest.json
    blobs: dict[str, Blob] = {}
    manifests: list[tuple[bytes, str]] = []
    for desc in [image, *attestations]:
        member = blob(desc["digest"])
        doc = _json(member)
        for part in [doc.get("config") or {}, *(doc.get("layers") or [])]:
            m = blob(part.get("digest"))
            blobs.setdefault(m.digest, Blob(m.digest, m.size, str(part.get("mediaType") or ""), data=m.data,
                                            path=m.path))
        manifests.append((_content(member), str(doc.get("mediaType") or desc.get("mediaType"))))
    if attestations:
        child = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": [image, *attestations]}
        manifests.append((json.dumps(child, indent=3).encode() + b"\n", mediatypes.OCI_INDEX))
    return Prepared(tuple(blobs.values()), tuple(manifests))


def _platform_text(p: Mapping) -> str:
    return "/".join(filter(None, [p.get("os"), p.get("architecture"), p.get("variant")]))


# -- pushing -----------------------------------------------------------------------------------------


def _file_pieces(path: Path):
    async def pieces():
        handle = await asyncio.to_thread(open, path, "rb")
        try:
            while piece := await asyncio.to_thread(handle.read, PIECE):
                yield piece
        finally:
            handle.close()
    return pieces


def _bytes_pieces(data: bytes):
    async def pieces():
        for i in range(0, len(data), PIECE):
            yield data[i:i + PIECE]
    return pieces


async def upload(client: RegistryClient, prepared: Prepared, repository: Reference) -> tuple[str, str, int, dict]:
    """Push ``prepared`` into ``repository`` by digest: every blob (at most once: skipped when
    there, mounted from a base's repository, else uploaded from its spool file), then each
    manifest by its digest. Returns (digest, media type, size, {"skipped"|"mounted"|"uploaded":
    count}) of the child. No tag is created or moved."""
    counts = {"skipped": 0, "mounted": 0, "uploaded": 0}

    async def one(b: Blob) -> None:
        early = prepared.streamed.get(b.digest)
        if early is not None:  # sent while the export was read: done, unless that upload failed
            await asyncio.wait([early])
            if not early.cancelled() and early.exception() is None and early.result() in counts:
                counts[early.result()] += 1
                return
        mount = [parse_reference(b.mount_from, what="base repository")] if b.mount_from else []
        if b.data is None and b.path is None:  # a base layer: there, or mounted, or nothing to send
            how = await _mount_only(client, repository, b.digest, mount)
        else:
            source = _bytes_pieces(b.data) if b.data is not None else _file_pieces(b.path)
            how = await client.push_blob(repository, b.digest, source, mount_from=mount)
            if b.data is not None:
                client.wrote_blob(repository, b.digest, b.data)  # the config: verification reads it from here
        counts[how] += 1

    await asyncio.gather(*(one(b) for b in prepared.blobs))
    if prepared.sending:  # the early uploads of layers the registry held end by themselves
        await asyncio.wait(prepared.sending)
        for task in prepared.sending:  # what one of those raised does not matter: nothing needs it
            if not task.cancelled():
                task.exception()
    for body, media_type in prepared.manifests:
        await _put_manifest(client, repository, body, media_type, [b.digest for b in prepared.blobs])
    digest, media_type, size = prepared.child
    return digest, media_type, size, counts


BLOB_LINK_RETRIES = 3  # manifest PUTs refused while a blob's link is rewritten (see _put_manifest)


async def _put_manifest(client: RegistryClient, repository: Reference, body: bytes, media_type: str,
                        blobs: Sequence[str]) -> None:
    """PUT one manifest by its digest. distribution's filesystem driver rewrites a repository's
    blob link in place whenever anyone uploads or mounts that blob again, and a manifest PUT that
    reads the link meanwhile is refused with MANIFEST_BLOB_UNKNOWN (with DIGEST_INVALID for the
    half-written link). Within one process :meth:`RegistryClient.blob_writer` prevents it; another
    client pushing the same layer at that moment cannot be. So a refusal naming
    MANIFEST_BLOB_UNKNOWN while every blob is there (HEAD) is tried again, up to
    :data:`BLOB_LINK_RETRIES` times, after a short wait; a blob really missing is the error."""
    ref = repository.with_digest(sha256_digest(body))
    for attempt in range(BLOB_LINK_RETRIES + 1):
        try:
            await client.put_manifest(ref, body, media_type)
            return
        except RegistryError as exc:
            if attempt == BLOB_LINK_RETRIES or "MANIFEST_BLOB_UNKNOWN" not in exc.codes:
                raise
            present = await asyncio.gather(*(client.blob_exists(repository, d) for d in blobs))
            if not all(present):
                raise
            await asyncio.sleep(0.1 * (attempt + 1))


async def _mount_only(client: RegistryClient, dst: Reference, digest: str, sources: Sequence[Reference]) -> str:
    async with client.blob_writer(dst, digest):
        return await _mount_only_unlocked(client, dst, digest, sources)


async def _mount_only_unlocked(client: RegistryClient, dst: Reference, digest: str,
                               sources: Sequence[Reference]) -> str:
    if await client.blob_exists(dst, digest):
        return "skipped"
    for src in sources:
        if src.api_host == dst.api_host and src.repository != dst.repository:
            if await client.mount_blob(src, dst, digest):
                return "mounted"
    raise RegistryError(f"blob {digest} (a layer of the base image or the last child) could not be mounted "
                        f"into {dst.name} from {', '.join(s.name for s in sources) or 'its repository'}")


async def known_layers(client: RegistryClient, request: BuildRequest, platform: Platform,
                       repository: Reference) -> dict[str, Blob]:
    """diff_id -> the registry's blob of each layer that ``repository``'s registry already holds
    for ``platform``, which is then never compressed or sent, only found there or mounted:

    - the layers of its base images (as the pipeline resolved them, ``request.bases``);
    - the layers of the platform's last child archfleet pushed (``request.warm_for(platform)``,
      from history), each found there by HEAD: a rebuild whose cached steps give the same layers
      finds them by their diff_id, as dockerd's push does with the blobs it pushed before
      (distribution metadata), instead of compressing them again to learn their digest (a
      30 MB cached layer cost ~60 ms of compression on every build, a 300 MB one ~0.4 s).

    Only gzip layers of image manifests on the same registry; a base layer wins over the child's
    for the same diff_id. Reads only (two requests per image, a HEAD per layer of the child); an
    image that cannot be read contributes nothing (its layers are then compressed and uploaded
    like the others)."""

    async def layers_of(ref: Reference, digest: str) -> list[tuple[str, Blob]]:
        try:
            manifest = await client.get_manifest(ref.with_digest(digest))
            doc = manifest.json()
            if manifest.media_type not in mediatypes.MANIFESTS:
                return []
            config = json.loads(await client.get_blob(ref, doc["config"]["digest"]))
            diff_ids = config["rootfs"]["diff_ids"]
            layers = doc.get("layers") or []
        except (ArchfleetError, ValueError, KeyError, TypeError):
            return []
        if len(diff_ids) != len(layers):
            return []
        out = []
        for diff_id, layer in zip(diff_ids, layers):
            media_type = str(layer.get("mediaType") or "")
            if media_type.endswith("gzip"):  # Docker's .tar.gzip or OCI's +gzip: the same bytes
                out.append((diff_id, Blob(layer["digest"], int(layer["size"]), media_type, mount_from=ref.name)))
        return out

    async def base(b) -> list[tuple[str, Blob]]:
        ref = parse_reference(b.ref, what="base image")
        if ref.api_host != repository.api_host:
            return []
        return await layers_of(ref, b.digest_for(platform))

    async def last_child() -> list[tuple[str, Blob]]:
        warm = request.warm_for(platform)
        if warm is None:
            return []
        try:
            ref = parse_reference(warm.ref, what="last child")
        except ArchfleetError:
            return []
        if ref.api_host != repository.api_host or not ref.digest:
            return []
        found = await layers_of(ref, ref.digest)

        async def there(blob: Blob) -> bool:
            try:
                return await client.blob_exists(ref, blob.digest)
            except ArchfleetError:
                return False

        present = await asyncio.gather(*(there(b) for _, b in found))
        return [pair for pair, ok in zip(found, present) if ok]

    bases = await asyncio.gather(*(base(b) for b in request.bases), last_child())
    out: dict[str, Blob] = {}
    for pairs in bases:  # the bases first: theirs win
        for diff_id, blob in pairs:
            out.setdefault(diff_id, blob)
    return out


def manifest_annotations(annotations: Iterable[Annotation], platform: Platform) -> tuple[Annotation, ...]:
    """The ``manifest`` annotations that go on ``platform``'s child."""
    return tuple(a for a in annotations if a.kind == "manifest" and a.applies_to(platform))
