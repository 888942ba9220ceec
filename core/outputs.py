"""Build outputs: ``-o type=local,dest=DIR``, ``-o type=tar,dest=FILE`` and ``--load``.

What ``-o`` writes is what buildx writes: the files of the result (the target stage's file
system), for each platform; with one platform at the top of ``DIR`` (or of the tar), with several
under ``<os>_<arch>[_<variant>]/`` each (``linux_amd64/``, ``linux_arm_v7/``: BuildKit's local
and tar exporters split by platform that way).

archfleet builds every platform into its node's image store and derives the files from the
image's layers, so every engine can produce them and one build gives the image (``--push``) and
the files (``-o``) together:

1. On the node's side, the image's export (:meth:`archfleet.engines.Engine.export`: ``docker
   save`` through the Engine API over the node's forwarded socket, ``podman save`` through its
   transport) is streamed into a spool file here, never held in memory (when the child is also
   pushed, the one export feeds both, :func:`tee`).
2. :func:`merge_layers` applies the layers in order as an overlay file system would: a later
   layer's entry replaces an earlier one, ``.wh.NAME`` removes ``NAME`` (and what is under it),
   ``.wh..wh..opq`` hides what earlier layers had in its directory, a file that replaces a
   directory hides the directory's contents. The result is one tar per platform (its entries
   under the platform's directory when there are several), in a spool file
   (``PlatformResult.output``), made before the push gate.
3. When every platform is done (and, with ``--push``, the index is pushed), :func:`write` puts
   the trees in place: ``local`` extracts them into ``DIR`` (Python's ``tar`` extraction filter:
   nothing lands outside ``DIR``, no set-uid bits); ``tar`` writes one tar file (to a temporary
   name beside it, then renamed). A platform the ``reuse`` strategy did not build is read from
   the registry instead (:func:`from_registry`: its layers downloaded and decompressed to spool
   files).

``--load`` (:func:`load`): the child of the local engine's platform (or of the one ``--platform``
names, when there is one) ends up in the local engine under each ``-t``: a child built here is
already there and is only tagged; one built on another node is exported from that node and
loaded (``docker load`` through the Engine API); a reused child is pulled by digest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import copy
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Sequence

from . import flagfields
from .errors import ArchfleetError, EnvironmentProblem, InfrastructureError, UsageError
from .model import BuildRequest, Output, PlatformResult
from .platforms import Platform

PIECE = 1024 * 1024
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


# -- the flag ---------------------------------------------------------------------------------------

def parse_output(text: str) -> Output:
    """One ``-o``/``--output`` value, buildx's syntax: ``type=local,dest=DIR``,
    ``type=tar,dest=FILE``, or a bare ``DIR`` (``type=local``). Checked now: a ``local`` ``DIR``
    is a directory or can be made (its parent exists); a ``tar`` ``FILE`` can be written. Other
    types say what to use instead (``registry``: ``--push``; ``docker``/``image``: ``--load``).
    Raises :class:`UsageError` (one line)."""
    flag = f"--output {text!r}"
    if "=" not in text:
        if text == "-":
            raise UsageError(f"{flag}: archfleet writes a tar to a file, not to stdout; use type=tar,dest=FILE")
        kind, dest = "local", text
    else:
        fields = dict(flagfields.fields(flag, text))
        kind = fields.get("type", "local").strip().lower()
        dest = fields.get("dest", "")
        # the type first: another type's keys (name=, push=) are not the mistake to name
        if kind == "registry":
            raise UsageError(f"{flag}: to push, use --push with -t")
        if kind in ("docker", "image"):
            raise UsageError(f"{flag}: to put the image in the local engine, use --load")
        if kind not in ("local", "tar"):
            raise UsageError(f"{flag}: type {kind!r} is not local or tar")
        for key in fields:
            if key not in ("type", "dest"):
                raise UsageError(f"{flag}: unknown key {key!r} (type, dest)")
        if not dest:
            raise UsageError(f"{flag}: name where with dest=" + ("DIR" if kind == "local" else "FILE"))
        if dest == "-":
            raise UsageError(f"{flag}: archfleet writes a tar to a file, not to stdout; give dest=FILE")
    path = Path(dest).expanduser()
    parent = path.absolute().parent
    if kind == "local":
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag}: {dest!r} exists and is not a directory")
        if not path.exists() and not parent.is_dir():
            raise UsageError(f"{flag}: directory {str(parent)!r} does not exist; create it first")
        if not os.access(path if path.exists() else parent, os.W_OK):
            raise UsageError(f"{flag}: {dest!r} is not writable")
    else:
        if path.is_dir():
            raise UsageError(f"{flag}: {dest!r} is a directory; name a file")
        if not parent.is_dir():
            raise UsageError(f"{flag}: directory {str(parent)!r} does not exist; create it first")
        if not os.access(parent, os.W_OK):
            raise UsageError(f"{flag}: cannot write in {str(parent)!r}")
    return Output(kind, path.absolute())


def check_outputs(outputs: Sequence[Output]) -> list[str]:
    """Problems of the ``-o`` flags together: two outputs to one place."""
    seen: dict[Path, Output] = {}
    problems = []
    for out in outputs:
        if out.dest in seen:
            problems.append(f"--output: {str(out.dest)!r} is named twice; give each output its own place")
        seen[out.dest] = out
    return problems


def platform_dir(platform: Platform) -> str:
    """``linux_arm_v7``: the directory a platform's files go under when several are built
    (BuildKit's ``platforms.Format`` with ``/`` as ``_``)."""
    return str(platform).replace("/", "_")


def prefix_for(request: BuildRequest, platform: Platform) -> str:
    """Where ``platform``'s files go in an output: ``""`` for a one-platform build, else
    ``<os>_<arch>[_<variant>]/``."""
    return "" if len(request.platforms) == 1 else platform_dir(platform) + "/"


def load_platform(request: BuildRequest, local: Platform) -> Platform | None:
    """The platform ``--load`` puts in the local engine: the one being built, else the local
    engine's own (``local``) when it is built; None when neither (the CLI refuses that)."""
    if len(request.platforms) == 1:
        return request.platforms[0]
    return local if local in request.platforms else None


# -- merging layers -----------------------------------------------------------------------------

def _norm(name: str) -> str:
    name = posixpath.normpath("/" + name).lstrip("/")
    return name


def _under(name: str, top: str) -> bool:
    return top == "" or name.startswith(top + "/")


def merge_layers(layers: Sequence[tarfile.TarFile]) -> dict[str, tuple[int, tarfile.TarInfo]]:
    """The file system ``layers`` (bottom first, each an open tar) make, as an overlay would
    (module doc): path -> (index of the layer it comes from, its entry). Paths are normalised
    (no leading ``/`` or ``./``); whiteouts are applied, never kept."""
    merged: dict[str, tuple[int, tarfile.TarInfo]] = {}
    for index, layer in enumerate(layers):
        own: dict[str, tarfile.TarInfo] = {}
        opaque: list[str] = []
        removed: list[str] = []
        for info in layer:
            name = _norm(info.name)
            if not name or name == ".":
                continue
            base, parent = posixpath.basename(name), posixpath.dirname(name)
            if base == OPAQUE:
                opaque.append(parent)
                continue
            if base.startswith(WHITEOUT):
                removed.append(posixpath.join(parent, base[len(WHITEOUT):]))
                continue
            own[name] = info
        for top in opaque:
            for name in [n for n in merged if _under(n, top)]:
                del merged[name]
        for gone in removed:
            for name in [n for n in merged if n == gone or _under(n, gone)]:
                del merged[name]
        for name, info in own.items():
            before = merged.get(name)
            if before is not None and before[1].isdir() and not info.isdir():
                for below in [n for n in merged if _under(n, name)]:
                    if below in merged and below not in own:
                        del merged[below]
            merged[name] = (index, info)
    return merged


def _order(name: str) -> list[str]:
    return name.split("/")


def write_tree(layers: Sequence[tarfile.TarFile], out: Path, prefix: str = "") -> int:
    """Write the merged file system of ``layers`` (:func:`merge_layers`) as one tar at ``out``,
    every entry under ``prefix``: directories before what they hold, hard links after their
    targets (a link whose target did not survive the merge gets the target's content). Returns
    the number of entries. Blocking (a thread)."""
    merged = merge_layers(layers)
    count = 0
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        links = []
        for name in sorted(merged, key=_order):
            index, info = merged[name]
            if info.islnk():
                links.append(name)
                continue
            entry = copy.copy(info)
            entry.name = prefix + name
            if info.isfile():
                dst.addfile(entry, layers[index].extractfile(info))
            else:
                dst.addfile(entry)
            count += 1
        for name in links:
            index, info = merged[name]
            target = _norm(info.linkname)
            entry = copy.copy(info)
            entry.name = prefix + name
            if target in merged and merged[target][0] == index and not merged[target][1].islnk():
                entry.linkname = prefix + target
                dst.addfile(entry)
            else:  # the target was replaced or removed above: the link keeps the content it had
                try:
                    source = layers[index].getmember(info.linkname)
                except KeyError:
                    continue
                entry.type = tarfile.REGTYPE
                entry.linkname = ""
                entry.size = source.size
                dst.addfile(entry, layers[index].extractfile(source))
            count += 1
    return count


# -- where the layers come from -------------------------------------------------------------------

async def tee(pieces: AsyncIterator[bytes], path: Path) -> AsyncIterator[bytes]:
    """``pieces`` as they come, each also written to ``path`` (one export feeds the push and the
    output). Closing the result closes ``pieces``. The writes run in a thread of the tee's own:
    an export already holds two threads of the default pool (the engine's stream and the push's
    reader), and with a few platforms at once a write queued behind them would never run."""
    loop = asyncio.get_running_loop()
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="archfleet-output")
    handle = None
    try:
        handle = await loop.run_in_executor(writer, open, path, "wb")
        async for piece in pieces:
            await loop.run_in_executor(writer, handle.write, piece)
            yield piece
    finally:
        if handle is not None:
            handle.close()
        writer.shutdown(wait=False)
        with contextlib.suppress(Exception):
            await pieces.aclose()


async def spool(pieces: AsyncIterator[bytes], path: Path) -> None:
    """Write all of ``pieces`` to ``path`` (an export, to disk, never whole in memory)."""
    async for _ in tee(pieces, path):
        pass


def _archive_layers(archive: tarfile.TarFile) -> list[tarfile.TarFile]:
    """The layers of an image archive (a docker-archive's ``manifest.json``, as ``docker save``
    and ``podman save`` write it; Docker 25's OCI layout has one too), bottom first, each an
    open tar over its member (uncompressed or gzip)."""
    def member(name: str) -> tarfile.TarInfo:
        seen = set()
        info = archive.getmember(name)
        while (info.issym() or info.islnk()) and info.name not in seen:
            seen.add(info.name)
            target = info.linkname if info.islnk() else posixpath.join(posixpath.dirname(info.name), info.linkname)
            info = archive.getmember(posixpath.normpath(target))
        return info

    try:
        entries = json.load(archive.extractfile(member("manifest.json")))
        names = list(entries[0]["Layers"])
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"not an image archive with a manifest.json ({exc})") from None
    layers = []
    for name in names:
        handle = archive.extractfile(member(name))
        head = handle.read(2)
        handle.seek(0)
        layers.append(tarfile.open(fileobj=handle, mode="r:gz" if head == b"\x1f\x8b" else "r:"))
    return layers


def tree_from_archive(archive_path: Path, out: Path, prefix: str = "") -> int:
    """The files of the image in the archive at ``archive_path`` (module doc, step 2) as one tar
    at ``out``, under ``prefix``. Blocking. Raises ``ValueError`` when it is no image archive."""
    with tarfile.open(archive_path, "r:") as archive:
        return write_tree(_archive_layers(archive), out, prefix)


async def from_export(export: AsyncIterator[bytes], workdir: Path, prefix: str, node: str) -> Path:
    """The files of an image from its engine's export (spooled in ``workdir``) as a tree tar
    there; the tar's path. Raises :class:`InfrastructureError` when the export cannot be read."""
    archive = workdir / "image.tar"
    await spool(export, archive)
    return await tree_of(archive, workdir, prefix, node)


async def tree_of(archive: Path, workdir: Path, prefix: str, node: str) -> Path:
    """:func:`tree_from_archive` in a thread, the archive removed afterwards; the tree's path."""
    out = workdir / "tree.tar"
    try:
        await asyncio.to_thread(tree_from_archive, archive, out, prefix)
    except (tarfile.TarError, OSError, ValueError, EOFError, zlib.error) as exc:
        raise InfrastructureError(node, f"the engine's export could not be read for --output: {exc}") from None
    finally:
        archive.unlink(missing_ok=True)
    return out


async def from_registry(client, ref: str, workdir: Path, prefix: str) -> Path:
    """The files of the child ``ref`` (``repo@sha256:...``) read from its registry: each layer
    streamed and decompressed into a spool file, then merged (a platform the ``reuse`` strategy
    did not build). The tree tar's path."""
    from .reference import parse_reference

    source = parse_reference(ref, what="child")
    manifest = (await client.get_manifest(source)).json()
    paths = []
    for i, layer in enumerate(manifest.get("layers") or []):
        path = workdir / f"layer-{i}.tar"
        resp = await client.request("GET", source.api_host, f"/v2/{source.repository}/blobs/{layer['digest']}",
                                    scope=f"repository:{source.repository}:pull", stream=True)
        gzipped = str(layer.get("mediaType", "")).endswith("gzip")
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
        try:
            with open(path, "wb") as handle:
                async for piece in resp.aiter_bytes(PIECE):
                    await asyncio.to_thread(handle.write, inflate.decompress(piece) if inflate else piece)
                if inflate:
                    handle.write(inflate.flush())
        finally:
            await resp.aclose()
        paths.append(path)
    out = workdir / "tree.tar"

    def merge() -> None:
        with contextlib.ExitStack() as stack:
            layers = [stack.enter_context(tarfile.open(p, "r:")) for p in paths]
            write_tree(layers, out, prefix)

    await asyncio.to_thread(merge)
    for p in paths:
        p.unlink(missing_ok=True)
    return out


_SPOOLS: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("archfleet_output_spools", default=None)


@contextlib.asynccontextmanager
async def spools() -> AsyncIterator[list[Path]]:
    """One run's output spools: every :func:`workdir` made inside the block (also in the tasks
    it starts) is removed when the block ends, however it ends."""
    made: list[Path] = []
    token = _SPOOLS.set(made)
    try:
        yield made
    finally:
        _SPOOLS.reset(token)
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def workdir() -> Path:
    """A fresh spool directory for one platform's output (where exports are spooled:
    :func:`archfleet.publish.spool_dir`), removed when the run's :func:`spools` block ends."""
    from .publish import spool_dir

    path = Path(tempfile.mkdtemp(prefix="archfleet-output-", dir=spool_dir()))
    made = _SPOOLS.get()
    if made is not None:
        made.append(path)
    return path


def discard(result: PlatformResult) -> None:
    """Remove ``result``'s output spool (safe to call twice)."""
    if result.output:
        shutil.rmtree(Path(result.output).parent, ignore_errors=True)


# -- writing the outputs ------------------------------------------------------------------------------

def _extract(tree: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tree, "r:") as tar:
        tar.extractall(dest, filter="tar")


def _write_tar(trees: Sequence[Path], dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.archfleet-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
            for tree in trees:
                with tarfile.open(tree, "r:") as src:
                    for info in src:
                        out.addfile(info, src.extractfile(info) if info.isfile() else None)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


async def write(outputs: Sequence[Output], trees: Sequence[Path]) -> None:
    """Put each platform's tree (``trees``, in platform order) in every output (module doc, step
    3). Raises :class:`EnvironmentProblem` when a destination cannot be written."""
    for out in outputs:
        try:
            if out.kind == "local":
                for tree in trees:
                    await asyncio.to_thread(_extract, tree, out.dest)
            else:
                await asyncio.to_thread(_write_tar, trees, out.dest)
        except (OSError, tarfile.TarError) as exc:
            raise EnvironmentProblem(f"--output {out}: cannot write it: {exc}") from None


# -- --load -------------------------------------------------------------------------------------------

async def load_into(client_of: Callable[[], object], archive: Path | None, image: str | None,
                    tags: Sequence[str]) -> str:
    """Put an image in the local Docker engine (``client_of()``: its docker-py client) and tag it
    with each of ``tags``: from the image ``archive`` (``docker load``), or ``image`` already
    there. Returns the image id. Blocking work runs in a thread."""
    def run() -> str:
        client = client_of()
        ident = image
        if archive is not None:
            with open(archive, "rb") as handle:
                for event in client.api.load_image(handle):
                    if isinstance(event, dict):
                        if event.get("error"):
                            raise EnvironmentProblem(f"--load: the local engine refused the image: {event['error']}")
                        stream = str(event.get("stream", ""))
                        if "Loaded image ID: " in stream:
                            ident = stream.split("Loaded image ID: ", 1)[1].strip()
                        elif "Loaded image: " in stream and ident is None:
                            ident = stream.split("Loaded image: ", 1)[1].strip()
        if not ident:
            raise EnvironmentProblem("--load: the local engine did not say which image it loaded")
        for tag in tags:
            repo, _, name = tag.rpartition(":")
            if "/" in name or not repo:
                repo, name = tag, "latest"
            client.api.tag(ident, repo, name)
        return ident

    try:
        return await asyncio.to_thread(run)
    except ArchfleetError:
        raise
    except Exception as exc:
        raise EnvironmentProblem(f"--load: the local engine could not take the image: "
                                 f"{str(exc) or type(exc).__name__}") from None


def tag_names(tags: Iterable[str]) -> list[str]:
    """The ``-t`` tags as the local engine names them (``docker.io/library/app:1`` is ``app:1``)."""
    from .reference import parse_reference

    out = []
    for t in tags:
        ref = parse_reference(t)
        name = ref.repository.removeprefix("library/") if ref.registry == "docker.io" else ref.name
        out.append(f"{name}:{ref.tag or 'latest'}")
    return out
