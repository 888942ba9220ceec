"""binfmt_misc: which emulators the kernel has, and registering QEMU's from qemu-user-static.

Registration writes the lines of ``/usr/lib/binfmt.d/qemu-*.conf`` (Debian's qemu-user-static)
to ``register``, with the fix-binary flag ``F`` so the emulator works inside containers, like
tonistiigi/binfmt does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import attrs

from .platforms import Platform, from_qemu_name

MOUNT = Path("/proc/sys/fs/binfmt_misc")
CONF_DIRS = (Path("/usr/lib/binfmt.d"), Path("/etc/binfmt.d"))


@attrs.frozen
class Handler:
    name: str  # "qemu-aarch64"
    enabled: bool
    interpreter: str
    flags: str

    @property
    def platforms(self) -> tuple[Platform, ...]:
        if not self.name.startswith("qemu-"):
            return ()
        return from_qemu_name(self.name[len("qemu-"):])

    @property
    def usable_in_containers(self) -> bool:
        """Without F the kernel opens the interpreter path inside the container, where it is missing."""
        return self.enabled and "F" in self.flags


def parse_entry(name: str, text: str) -> Handler:
    enabled = False
    interpreter = flags = ""
    for line in text.splitlines():
        line = line.strip()
        if line == "enabled":
            enabled = True
        elif line.startswith("interpreter "):
            interpreter = line.split(" ", 1)[1]
        elif line.startswith("flags:"):
            flags = line.split(":", 1)[1].strip()
    return Handler(name, enabled, interpreter, flags)


def read_handlers(mount: Path = MOUNT) -> list[Handler]:
    out = []
    try:
        names = sorted(os.listdir(mount))
    except OSError:
        return []
    for name in names:
        if name in ("register", "status"):
            continue
        try:
            out.append(parse_entry(name, (mount / name).read_text()))
        except OSError:
            continue
    return out


def emulated_platforms(handlers: list[Handler]) -> tuple[Platform, ...]:
    out: list[Platform] = []
    for h in handlers:
        if h.usable_in_containers:
            out.extend(p for p in h.platforms if p not in out)
    return tuple(out)


def ensure_mounted(mount: Path = MOUNT) -> None:
    if (mount / "register").exists():
        return
    subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(mount)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def available_confs() -> dict[str, Path]:
    """qemu handler name -> its conf file, from qemu-user-static's binfmt.d files."""
    found: dict[str, Path] = {}
    for directory in CONF_DIRS:
        if directory.is_dir():
            for conf in sorted(directory.glob("qemu-*.conf")):
                found.setdefault(conf.stem, conf)
    return found


def conf_for(platform: Platform) -> str | None:
    return f"qemu-{platform.qemu_arch}" if platform.qemu_arch else None


def register(conf: Path, mount: Path = MOUNT) -> bool:
    """Register one handler (with F added); False if it was already registered."""
    name = conf.stem
    if (mount / name).exists():
        return False
    line = next(l for l in conf.read_text().splitlines() if l.startswith(":"))
    fields = line.split(":")
    if "F" not in fields[-1]:
        fields[-1] += "F"
    (mount / "register").write_text(":".join(fields))
    return True


def unregister(name: str, mount: Path = MOUNT) -> bool:
    path = mount / name
    if not path.exists():
        return False
    path.write_text("-1")
    return True
