"""What CPU an image's programs are really for, read from the ELF headers in its layers.

An image config's ``architecture`` is not proof: Docker 20.10's BuildKit writes the requested
platform into the config even when the final stage is ``FROM --platform=linux/amd64``. The
program the image runs (ENTRYPOINT/CMD, found through PATH and symlinks) carries the truth in
its ELF header (``e_machine``, class, byte order).
"""

from __future__ import annotations

import posixpath
import struct
import tarfile
from typing import IO, Iterable

from .platforms import Platform

# e_machine -> {(ELF class, little endian): architecture}
_MACHINES = {
    3: {(1, True): "386"},
    62: {(2, True): "amd64"},
    40: {(1, True): "arm"},
    183: {(2, True): "arm64"},
    22: {(2, False): "s390x"},
    21: {(2, True): "ppc64le", (2, False): "ppc64"},
    243: {(2, True): "riscv64"},
    8: {(2, True): "mips64le", (2, False): "mips64", (1, True): "mipsle", (1, False): "mips"},
    258: {(2, True): "loong64"},
}


def elf_arch(header: bytes) -> str | None:
    """The architecture of an ELF header (first 20 bytes), or None if not ELF/unknown."""
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    elf_class, data = header[4], header[5]
    little = data == 1
    machine = struct.unpack("<H" if little else ">H", header[18:20])[0]
    return _MACHINES.get(machine, {}).get((elf_class, little))


def matches(arch: str, platform: Platform) -> bool:
    """ELF cannot tell arm/v6 from arm/v7; everything else must be equal."""
    return arch == platform.architecture


OPAQUE = ".wh..wh..opq"  # OCI image spec, layer.md "Opaque Whiteout"
WHITEOUT = ".wh."  # OCI image spec, layer.md "Whiteouts"; ".wh..wh.*" other than OPAQUE are reserved


def member_path(name: str) -> str:
    """A layer tar member's name as an absolute path in the image: ``./a``, ``a``, ``/a`` and
    ``a/`` are all ``/a``; a hidden name keeps its dots (``./.local`` is ``/.local``); ``..``
    never climbs above ``/``."""
    return "/" + posixpath.normpath("/" + name).lstrip("/")


def scan_layer(fileobj: IO[bytes]) -> dict:
    """What one layer holds, on its own: ``{"entries": {path: [kind, value]}, "whiteouts":
    [path, ...], "opaque": [dir, ...]}``. Kinds: "file" with its ELF architecture or None,
    "link" with its target (a hard link's as an absolute path), "dir", "other".

    Whiteouts follow the OCI image spec (layer.md): ``<dir>/.wh.<name>`` removes ``<dir>/<name>``
    (and all under it) from the layers below; ``<dir>/.wh..wh..opq`` removes everything under
    ``<dir>`` from the layers below but keeps what this layer puts there. Later members win over
    earlier ones with the same path, as when the tar is applied. Plain JSON, so it can be cached
    by the layer's digest: a layer never changes."""
    entries: dict[str, list] = {}
    whiteouts: list[str] = []
    opaque: list[str] = []
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            path = member_path(member.name)
            parent, base = posixpath.split(path)
            if base == OPAQUE:
                opaque.append(parent)
                continue
            if base.startswith(WHITEOUT + WHITEOUT):
                continue  # reserved (aufs hard-link and metadata directories)
            if base.startswith(WHITEOUT):
                whiteouts.append(posixpath.join(parent, base[len(WHITEOUT):]))
                continue
            if member.issym():
                entries[path] = ["link", member.linkname]
            elif member.islnk():
                entries[path] = ["link", member_path(member.linkname)]
            elif member.isfile():
                f = tar.extractfile(member)
                entries[path] = ["file", elf_arch(f.read(20)) if f else None]
            elif member.isdir():
                entries[path] = ["dir", None]
            else:
                entries[path] = ["other", None]
    return {"entries": entries, "whiteouts": whiteouts, "opaque": opaque}


def _ancestors(path: str) -> Iterable[str]:
    while path != "/":
        path = posixpath.dirname(path)
        yield path


class LayerIndex:
    """Paths seen in layers, added top layer first, as the merged image shows them (like
    overlayfs): the first sighting of a path wins, and a path is hidden when a layer above
    whited it or one of its directories out, made one of its directories opaque, or put a
    non-directory (a file or a symlink) where one of its directories was."""

    def __init__(self):
        self.entries: dict[str, tuple[str, str | None]] = {}  # path -> ("file", arch) | ("link", target) | ("dir"|"other", None)
        self.whiteouts: set[str] = set()
        self.opaque: set[str] = set()
        self.elf_counts: dict[str, int] = {}

    def add_layer(self, fileobj: IO[bytes]) -> None:
        """Scan the tar stream ``fileobj`` (a layer, gzip or plain) and add it as the next layer down."""
        self.add_scan(scan_layer(fileobj))

    def _hidden(self, path: str) -> bool:
        if path in self.whiteouts:
            return True
        for up in _ancestors(path):
            if up in self.whiteouts or up in self.opaque:
                return True
            above = self.entries.get(up)
            if above is not None and above[0] != "dir":
                return True
        return False

    def add_scan(self, scan: dict) -> None:
        """Add the next layer down (from :func:`scan_layer`)."""
        for path, (kind, value) in scan["entries"].items():
            if path in self.entries or self._hidden(path):
                continue
            self.entries[path] = (kind, value)
            if kind == "file" and value:
                self.elf_counts[value] = self.elf_counts.get(value, 0) + 1
        # this layer's whiteouts hide the layers below it, not its own entries
        self.whiteouts.update(scan["whiteouts"])
        self.opaque.update(scan.get("opaque", ()))

    def resolve(self, path: str, hops: int = 16) -> tuple[str, str | None] | None:
        """The entry ``path`` names, following symlinks in every component as the kernel does
        (``/bin/sh`` through a ``/bin -> usr/bin`` link), at most ``hops`` links; None if there
        is none."""
        todo = [p for p in path.split("/") if p]
        cur = "/"
        links = 0
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":
                cur = posixpath.dirname(cur)
                continue
            here = posixpath.join(cur, name)
            entry = self.entries.get(here)
            if entry is not None and entry[0] == "link":
                links += 1
                if links > hops:
                    return None
                target = entry[1] or ""
                if target.startswith("/"):
                    cur = "/"
                todo = [p for p in target.split("/") if p] + todo
                continue
            if not todo:
                return entry
            cur = here
        return None

    def program_arch(self, argv0: str, env: Iterable[str]) -> str | None:
        """The architecture of the program ``argv0`` names, looked up like execvp would."""
        if "/" in argv0:
            candidates = [argv0 if argv0.startswith("/") else "/" + argv0]
        else:
            path_var = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")),
                            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            candidates = [posixpath.join(d or "/", argv0) for d in path_var.split(":")]
        for cand in candidates:
            entry = self.resolve(cand)  # ".." taken after the links before it, as the kernel does
            if entry and entry[0] == "file":
                return entry[1]
        return None

    def majority_arch(self) -> str | None:
        """The ELF architecture most files seen have (ties go to the name first in order), or None when no ELF was seen."""
        if not self.elf_counts:
            return None
        return max(sorted(self.elf_counts), key=lambda a: self.elf_counts[a])
