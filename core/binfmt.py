"""binfmt_misc: which emulators the kernel has, and registering QEMU's from qemu-user-static.

Registration writes the lines of ``/usr/lib/binfmt.d/qemu-*.conf`` (Debian's qemu-user-static)
to ``register``, with the fix-binary flag ``F`` so the emulator works inside containers, like
tonistiigi/binfmt does. Without ``F`` the kernel opens the interpreter path when a program
starts, inside the container's filesystem, where it does not exist: every ``RUN`` of that
platform fails with "exec format error" or "no such file". A handler already registered without
``F`` (as some distribution packages do) is re-registered with it, since the kernel cannot change
the flags of an entry in place (linux/Documentation/admin-guide/binfmt-misc.rst: an entry is
removed by writing ``-1`` to it).

Every function takes ``mount`` (default ``/proc/sys/fs/binfmt_misc``) so tests can point it at a
scratch directory holding ``register``, ``status`` and entry files.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import attrs

from .platforms import Platform, from_qemu_name

MOUNT = Path("/proc/sys/fs/binfmt_misc")
CONF_DIRS = (Path("/usr/lib/binfmt.d"), Path("/etc/binfmt.d"))

NO_F = "the fix-binary flag F"


@attrs.frozen
class Handler:
    """One binfmt_misc entry as the kernel shows it (``/proc/sys/fs/binfmt_misc/<name>``): its name (``qemu-aarch64``), whether it is enabled, the interpreter path and the flags (``F`` = fix-binary: the interpreter is opened at registration, so it works inside containers)."""
    name: str  # "qemu-aarch64"
    enabled: bool
    interpreter: str
    flags: str

    @property
    def platforms(self) -> tuple[Platform, ...]:
        """The platforms this handler runs, from its QEMU name (``qemu-arm`` runs linux/arm/v7, v6 and v5); empty for a handler that is not QEMU's."""
        if not self.name.startswith("qemu-"):
            return ()
        return from_qemu_name(self.name[len("qemu-"):])

    @property
    def usable_in_containers(self) -> bool:
        """Without F the kernel opens the interpreter path inside the container, where it is missing."""
        return self.enabled and "F" in self.flags

    @property
    def problem(self) -> str | None:
        """One line saying why this handler cannot emulate inside containers, or None if it can."""
        if not self.enabled:
            return f"{self.name} is registered but disabled"
        if "F" not in self.flags:
            return (f"{self.name} is registered without {NO_F}, so it cannot start programs inside "
                    "containers (RUN steps fail)")
        return None


def parse_entry(name: str, text: str) -> Handler:
    """A :class:`Handler` from the text of a binfmt_misc entry file (``enabled``, ``interpreter PATH``, ``flags: OCF``)."""
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
    """Every handler registered under ``mount`` (binfmt_misc), sorted by name; empty when it is not mounted or cannot be read."""
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
        except (OSError, UnicodeDecodeError):
            continue
    return out


def emulated_platforms(handlers: list[Handler]) -> tuple[Platform, ...]:
    """The platforms ``handlers`` can emulate inside containers (enabled, with ``F``), each once, in handler order."""
    out: list[Platform] = []
    for h in handlers:
        if h.usable_in_containers:
            out.extend(p for p in h.platforms if p not in out)
    return tuple(out)


def unusable(handlers: list[Handler]) -> tuple[tuple[Platform, str], ...]:
    """``(platform, why)`` for every platform whose handler is registered but cannot emulate
    inside containers (disabled, or no ``F``) and that no usable handler covers."""
    usable = set(emulated_platforms(handlers))
    out: list[tuple[Platform, str]] = []
    for h in handlers:
        if h.problem:
            out.extend((p, h.problem) for p in h.platforms if p not in usable and p not in dict(out))
    return tuple(out)


def ensure_mounted(mount: Path = MOUNT) -> None:
    """Mount binfmt_misc at ``mount`` if it is not (needs root). Raises ``subprocess.CalledProcessError`` or ``OSError`` when it cannot."""
    if (mount / "register").exists():
        return
    subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(mount)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def available_confs(dirs: tuple[Path, ...] = CONF_DIRS) -> dict[str, Path]:
    """qemu handler name -> its conf file, from qemu-user-static's binfmt.d files."""
    found: dict[str, Path] = {}
    for directory in dirs:
        if directory.is_dir():
            for conf in sorted(directory.glob("qemu-*.conf")):
                found.setdefault(conf.stem, conf)
    return found


def conf_for(platform: Platform) -> str | None:
    """The QEMU handler name for ``platform`` (``qemu-aarch64`` for linux/arm64), or None when QEMU has no emulator for it."""
    return f"qemu-{platform.qemu_arch}" if platform.qemu_arch else None


def register(conf: Path, mount: Path = MOUNT) -> str:
    """Register one handler from its conf file, with ``F`` added.

    Returns ``"installed"`` (there was none), ``"present"`` (one is registered, enabled and has
    ``F``: left alone) or ``"re-registered"`` (one was registered disabled or without ``F``: it
    is removed and registered again from ``conf`` with ``F``). Raises OSError when the kernel
    refuses (not root), ValueError when ``conf`` holds no registration line."""
    name = conf.stem
    entry = mount / name
    state = "installed"
    if entry.exists():
        if parse_entry(name, entry.read_text()).usable_in_containers:
            return "present"
        state = "re-registered"
    line = next((l for l in conf.read_text().splitlines() if l.startswith(":")), None)
    if line is None:
        raise ValueError(f"{conf} holds no ':name:type:...' registration line")
    fields = line.split(":")
    if "F" not in fields[-1]:
        fields[-1] += "F"
    if state == "re-registered":
        entry.write_text("-1")
    (mount / "register").write_text(":".join(fields))
    return state


def unregister(name: str, mount: Path = MOUNT) -> bool:
    """Remove handler ``name``; False if it was not registered. Raises OSError (not root)."""
    path = mount / name
    if not path.exists():
        return False
    path.write_text("-1")
    return True
