"""Platform values: parse and normalise the way containerd's ``platforms`` package does.

``linux/arm64``, ``aarch64`` and ``arm64/v8`` are all ``linux/arm64``; ``armhf``, ``armv7l`` and
``linux/arm`` are ``linux/arm/v7``; ``armel`` is ``linux/arm/v6``; ``x86_64`` is ``linux/amd64``.
Also: which platforms a machine of one architecture runs without emulation, and the names QEMU,
Debian and the Go toolchain use for each.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["Platform", "PlatformError", "parse", "parse_list", "from_uname", "KNOWN_ARCHES"]


class PlatformError(ValueError):
    """A platform string that does not name a platform we know."""


# containerd's normalizeArch, extended with the names `uname -m` and Debian use.
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    # name: (architecture, forced variant or None to keep the given one)
    "amd64": ("amd64", None),
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "386": ("386", None),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "arm64": ("arm64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "arm": ("arm", None),
    "armv5l": ("arm", "v5"),
    "armv6l": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "armv8l": ("arm", "v7"),  # 32-bit userland on an ARMv8 CPU runs v7 code
    "ppc64le": ("ppc64le", None),
    "ppc64el": ("ppc64le", None),
    "ppc64": ("ppc64", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64le": ("mips64le", None),
    "mips64el": ("mips64le", None),
    "mips64": ("mips64", None),
    "mipsle": ("mipsle", None),
    "mipsel": ("mipsle", None),
    "mips": ("mips", None),
    "loong64": ("loong64", None),
    "loongarch64": ("loong64", None),
}

KNOWN_ARCHES = frozenset(a for a, _ in _ARCH_ALIASES.values())
KNOWN_OSES = frozenset({"linux", "windows", "darwin", "freebsd"})

_VARIANTS = {
    "arm": {"": "v7", "5": "v5", "v5": "v5", "6": "v6", "v6": "v6", "7": "v7", "v7": "v7", "8": "v8", "v8": "v8"},
    "arm64": {"": "", "8": "", "v8": "", "v8.0": ""},
    "amd64": {"": "", "v1": "", "1": "", "v2": "v2", "v3": "v3", "v4": "v4"},
}

# architecture -> what QEMU calls it (binfmt handler names are "qemu-" + this).
_QEMU = {
    "amd64": "x86_64",
    "386": "i386",
    "arm64": "aarch64",
    "arm": "arm",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64le": "mips64el",
    "mips64": "mips64",
    "mipsle": "mipsel",
    "mips": "mips",
    "loong64": "loongarch64",
}

# (architecture, variant) -> Debian's architecture name.
_DEBIAN = {
    ("amd64", ""): "amd64",
    ("386", ""): "i386",
    ("arm64", ""): "arm64",
    ("arm", "v7"): "armhf",
    ("arm", "v6"): "armel",
    ("arm", "v5"): "armel",
    ("ppc64le", ""): "ppc64el",
    ("s390x", ""): "s390x",
    ("riscv64", ""): "riscv64",
    ("mips64le", ""): "mips64el",
    ("loong64", ""): "loong64",
}


@attrs.frozen(order=True)
class Platform:
    """An OS/architecture/variant triple, always normalised (build it with :func:`parse`)."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    @property
    def tag_suffix(self) -> str:
        """``linux-arm-v7``: the per-platform tag suffix ``<os>-<arch>[-<variant>]``."""
        return str(self).replace("/", "-")

    @property
    def qemu_arch(self) -> str | None:
        """The QEMU name for this architecture (``aarch64``), or None if QEMU has none."""
        return _QEMU.get(self.architecture)

    @property
    def debian_arch(self) -> str | None:
        """Debian's architecture name (``armhf``), or None."""
        return _DEBIAN.get((self.architecture, self.variant))

    def to_oci(self) -> dict[str, str]:
        """The ``platform`` object of an OCI descriptor."""
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def native_also(self) -> tuple["Platform", ...]:
        """Platforms a CPU of this platform runs without emulation, itself first.

        x86_64 runs 386; arm64 runs arm/v7 and arm/v6 (when its kernel has 32-bit support,
        which the probe cannot always tell; containerd assumes it too); arm/v7 runs v6 and v5.
        """
        extra: list[tuple[str, str]] = []
        if self.architecture == "amd64":
            extra = [("386", "")]
        elif self.architecture == "arm64":
            extra = [("arm", "v7"), ("arm", "v6")]
        elif self.architecture == "arm" and self.variant in ("v7", "v8"):
            extra = [("arm", "v6"), ("arm", "v5")]
        elif self.architecture == "arm" and self.variant == "v6":
            extra = [("arm", "v5")]
        return (self,) + tuple(Platform(self.os, a, v) for a, v in extra)


def _normalise(os_: str, arch: str, variant: str | None, original: str) -> Platform:
    os_ = os_.lower()
    if os_ == "macos":
        os_ = "darwin"
    if os_ not in KNOWN_OSES:
        raise PlatformError(f"unknown operating system {os_!r} in platform {original!r}")
    key = arch.lower()
    if key not in _ARCH_ALIASES:
        raise PlatformError(
            f"unknown architecture {arch!r} in platform {original!r} "
            f"(known: {', '.join(sorted(KNOWN_ARCHES))})"
        )
    arch, forced = _ARCH_ALIASES[key]
    if forced is not None:
        if variant and forced and variant.lstrip("v") != forced.lstrip("v"):
            raise PlatformError(f"{key!r} implies variant {forced}, not {variant!r}, in {original!r}")
        variant = forced
    variant = (variant or "").lower()
    table = _VARIANTS.get(arch)
    if table is not None:
        if variant not in table:
            raise PlatformError(f"unknown variant {variant!r} for {arch} in platform {original!r}")
        variant = table[variant]
    elif variant:
        raise PlatformError(f"{arch} has no variants, got {variant!r} in platform {original!r}")
    return Platform(os_, arch, variant)


_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse(text: str) -> Platform:
    """Parse ``os[/arch[/variant]]`` or a bare architecture (``aarch64``, ``armhf``)."""
    original = text
    text = text.strip()
    parts = text.split("/")
    if not text or not all(_PART.match(p) for p in parts) or len(parts) > 3:
        raise PlatformError(f"invalid platform {original!r}: expected os/arch[/variant], e.g. linux/arm64")
    if len(parts) == 1:
        p = parts[0].lower()
        if p in _ARCH_ALIASES:
            return _normalise("linux", p, None, original)
        if p in KNOWN_OSES:
            raise PlatformError(f"platform {original!r} names only an OS; add the architecture (e.g. {p}/amd64)")
        return _normalise("linux", p, None, original)
    if len(parts) == 2:
        if parts[0].lower() in KNOWN_OSES or parts[0].lower() == "macos":
            return _normalise(parts[0], parts[1], None, original)
        # "arm64/v8", "arm/v7": architecture/variant with the OS left out.
        return _normalise("linux", parts[0], parts[1], original)
    return _normalise(parts[0], parts[1], parts[2], original)


def parse_list(values: str | list[str] | tuple[str, ...]) -> tuple[Platform, ...]:
    """Parse comma-separated and repeated ``--platform`` values; duplicates collapse, order kept."""
    if isinstance(values, str):
        values = [values]
    out: list[Platform] = []
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            p = parse(item)
            if p not in out:
                out.append(p)
    return tuple(out)


def from_uname(machine: str, os_: str = "linux") -> Platform:
    """Normalise ``uname -m`` output (``aarch64`` -> linux/arm64, ``armv7l`` -> linux/arm/v7)."""
    return parse(f"{os_}/{machine.strip()}")


def from_qemu_name(name: str) -> tuple[Platform, ...]:
    """Platforms a ``qemu-<name>`` binfmt handler runs (``arm`` covers v7, v6 and v5)."""
    for arch, qemu in _QEMU.items():
        if qemu == name:
            if arch == "arm":
                return tuple(Platform("linux", "arm", v) for v in ("v7", "v6", "v5"))
            return (Platform("linux", arch, ""),)
    return ()
