import io
import struct
import tarfile

from archfleet.elfcheck import LayerIndex, elf_arch


def elf(machine: int, elf_class: int = 2, little: bool = True) -> bytes:
    head = b"\x7fELF" + bytes([elf_class, 1 if little else 2, 1]) + b"\0" * 9
    return head + struct.pack("<H" if little else ">H", 2) + struct.pack("<H" if little else ">H", machine) + b"\0" * 40


def layer(files: dict[str, bytes | str]) -> io.BytesIO:
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


def test_elf_machines():
    assert elf_arch(elf(62)) == "amd64"
    assert elf_arch(elf(3, 1)) == "386"
    assert elf_arch(elf(183)) == "arm64"
    assert elf_arch(elf(40, 1)) == "arm"
    assert elf_arch(elf(22, 2, False)) == "s390x"
    assert elf_arch(elf(21, 2, True)) == "ppc64le"
    assert elf_arch(b"#!/bin/sh\n" + b"\0" * 20) is None


def test_program_found_through_path_and_symlinks_top_layer_wins():
    idx = LayerIndex()
    idx.add_layer(layer({"bin/uname": "busybox"}))  # top layer: a relative symlink
    idx.add_layer(layer({"bin/busybox": elf(183), "usr/bin/other": elf(62)}))
    assert idx.program_arch("uname", ["PATH=/usr/sbin:/bin"]) == "arm64"
    assert idx.program_arch("/usr/bin/other", []) == "amd64"
    assert idx.program_arch("missing", []) is None


def test_whiteout_hides_lower_file():
    idx = LayerIndex()
    idx.add_layer(layer({"bin/.wh.tool": b""}))
    idx.add_layer(layer({"bin/tool": elf(62)}))
    assert idx.program_arch("/bin/tool", []) is None
