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


def scan_layer(fileobj: IO[bytes]) -> dict:
    """What one layer holds, on its own: ``{"entries": {path: [kind, value]}, "whiteouts": [...]}``
    (kind "file" with its ELF architecture or None, "link" with its target, "other"). Plain
    JSON, so it can be cached by the layer's digest: a layer never changes."""
    entries: dict[str, list] = {}
    whiteouts: list[str] = []
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            path = "/" + posixpath.normpath(member.name.lstrip("./")).lstrip("/")
            base = posixpath.basename(path)
            if base.startswith(".wh."):
                whiteouts.append(posixpath.join(posixpath.dirname(path), base[4:]))
                continue
            if path in entries:
                continue
            if member.issym():
                entries[path] = ["link", member.linkname]
            elif member.islnk():
                entries[path] = ["link", "/" + member.linkname.lstrip("./")]
            elif member.isfile():
                f = tar.extractfile(member)
                entries[path] = ["file", elf_arch(f.read(20)) if f else None]
            else:
                entries[path] = ["other", None]
    return {"entries": entries, "whiteouts": whiteouts}


class LayerIndex:
    """Paths seen in layers, top layer first: the first sighting of a path wins (like overlayfs)."""

    def __init__(self):
        self.entries: dict[str, tuple[str, str | None]] = {}  # path -> ("file", arch) | ("link", target) | ("other", None)
        self.whiteouts: set[str] = set()
        self.elf_counts: dict[str, int] = {}

    def add_layer(self, fileobj: IO[bytes]) -> None:
        self.add_scan(scan_layer(fileobj))

    def add_scan(self, scan: dict) -> None:
        """Add the next layer down (from :func:`scan_layer`)."""
        for path, (kind, value) in scan["entries"].items():
            if path in self.entries or path in self.whiteouts:
                continue
            self.entries[path] = (kind, value)
            if kind == "file" and value:
                self.elf_counts[value] = self.elf_counts.get(value, 0) + 1
        self.whiteouts.update(scan["whiteouts"])

    def resolve(self, path: str, hops: int = 16) -> tuple[str, str | None] | None:
        for _ in range(hops):
            entry = self.entries.get(path)
            if entry is None or entry[0] != "link":
                return entry
            target = entry[1] or ""
            path = posixpath.normpath(target if target.startswith("/") else posixpath.join(posixpath.dirname(path), target))
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
            entry = self.resolve(posixpath.normpath(cand))
            if entry and entry[0] == "file":
                return entry[1]
        return None

    def majority_arch(self) -> str | None:
        if not self.elf_counts:
            return None
        return max(sorted(self.elf_counts), key=lambda a: self.elf_counts[a])
