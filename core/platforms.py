"""Platform values: parse, normalise and match the way containerd's ``platforms`` package does
(github.com/containerd/platforms: ``normalizeArch`` in database.go, ``platformVector`` in compare.go).

``linux/arm64``, ``aarch64`` and ``arm64/v8`` are all ``linux/arm64``; ``arm64/9`` is
``linux/arm64/v9``; ``armhf``, ``armv7l`` and ``linux/arm`` are ``linux/arm/v7``; ``armel`` is
``linux/arm/v6``; ``x86_64`` is ``linux/amd64`` and ``amd64/v1`` too; ``i386`` (any variant) is
``linux/386``. An OS may carry a version in containerd's syntax (``windows(10.0.17763)/amd64``).
archfleet builds Linux images only: :func:`parse_target` (``--platform``) refuses other OSes.

Which platforms a CPU runs without emulation is containerd's ``platformVector``: amd64/vN also
runs the lower amd64 levels and 386; arm/vN runs arm/v(N-1) down to v5; arm64/v8.x and v9.x run
the lower arm64 versions and arm/v8 down to v5. Also the names QEMU and Debian use for each.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["Platform", "PlatformError", "parse", "parse_target", "parse_list", "from_uname", "native_platforms",
           "x86_64_level", "KNOWN_ARCHES"]


class PlatformError(ValueError):
    """A platform string that does not name a platform we know."""


# containerd's normalizeArch, extended with the names `uname -m` and Debian use.
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    # name: (architecture, forced variant or None to keep the given one)
    "amd64": ("amd64", None),
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "386": ("386", ""),  # 386 has no variants: containerd drops any given with i386, so do we with both
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
# containerd's knownOS (database.go), with "macos" read as darwin.
KNOWN_OSES = frozenset({"aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js",
                        "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos"})

# arm64 versions containerd knows (compare.go's arm64variantToVersion); v8 itself is "".
_ARM64_VERSIONS = ("",) + tuple(f"v8.{n}" for n in range(1, 10)) + ("v9",) + tuple(f"v9.{n}" for n in range(1, 8))

_VARIANTS = {
    "arm": {"": "v7", "5": "v5", "v5": "v5", "6": "v6", "v6": "v6", "7": "v7", "v7": "v7", "8": "v8", "v8": "v8"},
    "arm64": {"": "", "8": "", "v8": "", "v8.0": "", "9": "v9", "9.0": "v9", "v9.0": "v9",
              **{v: v for v in _ARM64_VERSIONS if v}, **{v[1:]: v for v in _ARM64_VERSIONS if "." in v}},
    "amd64": {"": "", "v1": "", "1": "", "v2": "v2", "2": "v2", "v3": "v3", "3": "v3", "v4": "v4", "4": "v4"},
}

# x86-64 micro-architecture levels (the x86-64 psABI), as /proc/cpuinfo names the CPU flags.
_X86_64_LEVELS = (
    (2, frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"})),
    (3, frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})),
    (4, frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})),
)
X86_64_LEVEL_NEEDS = {level: ", ".join(sorted(flags)) for level, flags in _X86_64_LEVELS}

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
        """Platforms a CPU of this platform runs without emulation, itself first: containerd's
        ``platformVector``.

        amd64/vN runs amd64/v(N-1) .. amd64 and 386; arm/vN (N > 5) runs arm/v(N-1) .. arm/v5;
        arm64 (v8) runs arm/v8 .. arm/v5, arm64/v8.x also the lower v8.y, arm64/v9.x also v9.y
        and v8.0 .. v8.(x+5). The arm64 -> arm step assumes the kernel runs 32-bit code, as
        containerd does (the probe cannot always tell)."""
        out: list[Platform] = [self]

        def add(arch: str, variant: str) -> None:
            p = Platform(self.os, arch, variant)
            if p not in out:
                out.append(p)

        if self.architecture == "amd64":
            for level in range(_level(self.variant) - 1, 1, -1):
                add("amd64", f"v{level}")
            add("amd64", "")
            add("386", "")
        elif self.architecture == "arm":
            for n in range(_level(self.variant) - 1, 4, -1):
                add("arm", f"v{n}")
        elif self.architecture == "arm64":
            major, minor = _arm64_version(self.variant)
            versions = [(major, m) for m in range(minor, -1, -1)]
            if major == 9:
                versions += [(8, m) for m in range(min(minor + 5, 9), -1, -1)]
            for ma, mi in versions:
                add("arm64", "" if (ma, mi) == (8, 0) else f"v{ma}" if mi == 0 else f"v{ma}.{mi}")
            for n in range(8, 4, -1):
                add("arm", f"v{n}")
        return tuple(out)

    def runs(self, other: "Platform") -> bool:
        """True when a CPU of this platform runs ``other`` natively (see :meth:`native_also`)."""
        return other in self.native_also()


def _level(variant: str) -> int:
    """The number in ``vN`` (amd64's level, arm's version); 1 for amd64's "" (v1)."""
    try:
        return int(variant.lstrip("v") or 1)
    except ValueError:
        return 1


def _arm64_version(variant: str) -> tuple[int, int]:
    major, _, minor = (variant.lstrip("v") or "8").partition(".")
    return int(major), int(minor or 0)


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
            known = sorted({v for v in table.values() if v})
            raise PlatformError(f"unknown variant {variant!r} for {arch} in platform {original!r}"
                                + (f" (known: {', '.join(known)})" if known else ""))
        variant = table[variant]
    elif variant:
        raise PlatformError(f"{arch} has no variants, got {variant!r} in platform {original!r}")
    return Platform(os_, arch, variant)


_PART = re.compile(r"[A-Za-z0-9_.-]+")
# containerd's osRe: an OS with an optional (os.version[+os.feature...])
_OS = re.compile(r"([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?")


def parse(text: str) -> Platform:
    """Parse ``os[(version)][/arch[/variant]]`` or a bare architecture (``aarch64``, ``armhf``).

    Any OS containerd knows parses (``windows(10.0.17763)/amd64`` too; the OS version is checked
    for syntax, then dropped: nothing here builds for it). Raises :class:`PlatformError` with one
    line naming the value."""
    original = text
    parts = text.strip().split("/")
    os_part = _OS.fullmatch(parts[0])
    if len(parts) > 3 or os_part is None or not all(_PART.fullmatch(p) for p in parts[1:]):
        raise PlatformError(f"invalid platform {original!r}: expected os/arch[/variant], e.g. linux/arm64")
    name, versioned = os_part.group(1).lower(), os_part.group(2) is not None
    if len(parts) == 1:
        if versioned or name in KNOWN_OSES:
            raise PlatformError(f"platform {original!r} names only an OS; add the architecture (e.g. {name}/amd64)")
        return _normalise("linux", name, None, original)
    if len(parts) == 2 and not versioned and name not in KNOWN_OSES and name != "macos":
        return _normalise("linux", parts[0], parts[1], original)  # "arm64/v8": arch/variant, OS left out
    return _normalise(name, parts[1], parts[2] if len(parts) == 3 else None, original)


def parse_target(text: str) -> Platform:
    """A platform to build (``--platform``): :func:`parse`, and the OS must be Linux.

    archfleet's engines are Linux Docker engines: BuildKit there builds Linux images only."""
    p = parse(text)
    if p.os != "linux":
        raise PlatformError(f"platform {text.strip()!r}: archfleet builds Linux images only "
                            f"(no engine here runs {p.os} containers); use linux/{p.architecture}"
                            + (f"/{p.variant}" if p.variant else ""))
    return p


def parse_list(values: str | list[str] | tuple[str, ...]) -> tuple[Platform, ...]:
    """Parse comma-separated and repeated ``--platform`` values (:func:`parse_target`);
    duplicates collapse, order kept."""
    if isinstance(values, str):
        values = [values]
    out: list[Platform] = []
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            p = parse_target(item)
            if p not in out:
                out.append(p)
    return tuple(out)


def from_uname(machine: str, os_: str = "linux") -> Platform:
    """Normalise ``uname -m`` output (``aarch64`` -> linux/arm64, ``armv7l`` -> linux/arm/v7)."""
    return parse(f"{os_}/{machine.strip()}")


def x86_64_level(cpu_flags: str | None) -> int:
    """The x86-64 psABI level (1-4) a CPU with these ``/proc/cpuinfo`` flags reaches."""
    flags = set((cpu_flags or "").split())
    level = 1
    for n, needs in _X86_64_LEVELS:
        if not needs <= flags:
            break
        level = n
    return level


def native_platforms(machine: str, cpu_flags: str | None = None) -> tuple[Platform, ...]:
    """What a node runs without emulation, from its ``uname -m`` and CPU flags: the machine's
    platform first, then the higher amd64 levels its CPU reaches (``linux/amd64/v3`` needs
    AVX2, BMI2, FMA, ...), then the rest of :meth:`Platform.native_also`."""
    base = from_uname(machine)
    if base.architecture != "amd64":
        return base.native_also()
    level = x86_64_level(cpu_flags)
    top = Platform(base.os, "amd64", f"v{level}" if level > 1 else "")
    return (base,) + tuple(p for p in top.native_also() if p != base)


def read_cpu_flags(path: str = "/proc/cpuinfo") -> str:
    """This machine's CPU flags (the first ``flags`` line of /proc/cpuinfo), or "" if unknown."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def from_qemu_name(name: str) -> tuple[Platform, ...]:
    """Platforms a ``qemu-<name>`` binfmt handler runs (``arm`` covers v7, v6 and v5).

    Conservative: only the base level of each architecture is claimed (qemu-x86_64 gives
    linux/amd64, not amd64/v3), since which CPU features QEMU's default CPU model has depends on
    the QEMU version."""
    for arch, qemu in _QEMU.items():
        if qemu == name:
            if arch == "arm":
                return tuple(Platform("linux", "arm", v) for v in ("v7", "v6", "v5"))
            return (Platform("linux", arch, ""),)
    return ()


def emulable(platform: Platform) -> bool:
    """True when a QEMU binfmt handler would run ``platform`` (see :func:`from_qemu_name`)."""
    return platform.qemu_arch is not None and platform in from_qemu_name(platform.qemu_arch)
