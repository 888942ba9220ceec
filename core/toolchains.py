"""Per-platform build args that cross toolchains need and BuildKit does not give.

BuildKit predefines TARGETPLATFORM, TARGETOS, TARGETARCH and TARGETVARIANT. Cross toolchains
want other spellings; archfleet passes these, for the platform being built, but only the ones
the Dockerfile declares with ``ARG`` (and never over a ``--build-arg`` the user gave):

| ARG | linux/arm64 | linux/arm/v7 | linux/s390x |
|---|---|---|---|
| GOOS | linux | linux | linux |
| GOARCH | arm64 | arm | s390x |
| GOARM | (none) | 7 | (none) |
| GNU_TRIPLE | aarch64-linux-gnu | arm-linux-gnueabihf | s390x-linux-gnu |
| CLANG_TARGET | aarch64-linux-gnu | armv7-linux-gnueabihf | s390x-linux-gnu |
| RUST_TARGET | aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf | s390x-unknown-linux-gnu |
| ZIG_TARGET | aarch64-linux-musl | arm-linux-musleabihf | s390x-linux-musl |
| ZIG_CPU | baseline | baseline | baseline (arm/v6: arm1176jzf_s) |
"""

from __future__ import annotations

from .platforms import Platform

NAMES = ("GOOS", "GOARCH", "GOARM", "GNU_TRIPLE", "CLANG_TARGET", "RUST_TARGET", "ZIG_TARGET", "ZIG_CPU")

# (architecture, variant) -> (GNU triple, clang target, Rust target, Zig target, Zig CPU)
_TABLE = {
    ("amd64", ""): ("x86_64-linux-gnu", "x86_64-linux-gnu", "x86_64-unknown-linux-gnu", "x86_64-linux-musl", "baseline"),
    ("386", ""): ("i686-linux-gnu", "i686-linux-gnu", "i686-unknown-linux-gnu", "x86-linux-musl", "baseline"),
    ("arm64", ""): ("aarch64-linux-gnu", "aarch64-linux-gnu", "aarch64-unknown-linux-gnu", "aarch64-linux-musl",
                    "baseline"),
    ("arm", "v7"): ("arm-linux-gnueabihf", "armv7-linux-gnueabihf", "armv7-unknown-linux-gnueabihf",
                    "arm-linux-musleabihf", "baseline"),
    ("arm", "v6"): ("arm-linux-gnueabihf", "armv6-linux-gnueabihf", "arm-unknown-linux-gnueabihf",
                    "arm-linux-musleabihf", "arm1176jzf_s"),
    ("arm", "v5"): ("arm-linux-gnueabi", "armv5te-linux-gnueabi", "armv5te-unknown-linux-gnueabi",
                    "arm-linux-musleabi", "arm926ej_s"),
    ("s390x", ""): ("s390x-linux-gnu", "s390x-linux-gnu", "s390x-unknown-linux-gnu", "s390x-linux-musl", "baseline"),
    ("ppc64le", ""): ("powerpc64le-linux-gnu", "powerpc64le-linux-gnu", "powerpc64le-unknown-linux-gnu",
                      "powerpc64le-linux-musl", "baseline"),
    ("riscv64", ""): ("riscv64-linux-gnu", "riscv64-linux-gnu", "riscv64gc-unknown-linux-gnu",
                      "riscv64-linux-musl", "baseline"),
    ("mips64le", ""): ("mips64el-linux-gnuabi64", "mips64el-linux-gnuabi64", "mips64el-unknown-linux-gnuabi64",
                       "mips64el-linux-musl", "baseline"),
}


def values(platform: Platform) -> dict[str, str]:
    """Every toolchain arg archfleet knows for ``platform``."""
    out = {"GOOS": platform.os, "GOARCH": platform.architecture}
    if platform.architecture == "arm" and platform.variant:
        out["GOARM"] = platform.variant.lstrip("v")
    row = _TABLE.get((platform.architecture, platform.variant))
    if row:
        out.update(zip(("GNU_TRIPLE", "CLANG_TARGET", "RUST_TARGET", "ZIG_TARGET", "ZIG_CPU"), row))
    return out


def build_args(platform: Platform, declared, given) -> list[tuple[str, str]]:
    """The toolchain args to pass: declared by the Dockerfile, not given by the user."""
    given_names = {k for k, _ in given}
    return [(k, v) for k, v in values(platform).items() if k in declared and k not in given_names]
