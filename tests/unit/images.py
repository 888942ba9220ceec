"""Image content for verification tests: ELF headers for a machine and layer tarballs."""

from __future__ import annotations

import io
import struct
import tarfile


def elf(machine: int, elf_class: int = 2, little: bool = True) -> bytes:
    """The start of an ELF executable for ``machine`` (``e_machine``: 62 x86-64, 183 AArch64,
    40 ARM, 3 i386, 22 s390, 21 PowerPC64), of ``elf_class`` (1 32-bit, 2 64-bit) and byte order."""
    head = b"\x7fELF" + bytes([elf_class, 1 if little else 2, 1]) + b"\0" * 9
    return head + struct.pack("<H" if little else ">H", 2) + struct.pack("<H" if little else ">H", machine) + b"\0" * 40


AMD64, ARM64, S390X = elf(62), elf(183), elf(22, 2, False)


def layer(files: dict[str, bytes | str]) -> io.BytesIO:
    """A gzipped layer tar: a ``bytes`` value is a file, a ``str`` value a symlink to it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    buf.seek(0)
    return buf


def layer_bytes(files: dict[str, bytes | str]) -> bytes:
    return layer(files).getvalue()
