import pytest

from archfleet.platforms import (Platform, PlatformError, emulable, from_qemu_name, from_uname,
                                 native_platforms, parse, parse_list, x86_64_level)

L = "linux"


@pytest.mark.parametrize("text,expected", [
    ("linux/arm64", (L, "arm64", "")),
    ("aarch64", (L, "arm64", "")),
    ("arm64/v8", (L, "arm64", "")),
    ("linux/arm64/v8", (L, "arm64", "")),
    ("linux/aarch64", (L, "arm64", "")),
    ("linux/arm", (L, "arm", "v7")),
    ("armhf", (L, "arm", "v7")),
    ("armv7l", (L, "arm", "v7")),
    ("linux/arm/7", (L, "arm", "v7")),
    ("linux/arm/v6", (L, "arm", "v6")),
    ("armel", (L, "arm", "v6")),
    ("armv6l", (L, "arm", "v6")),
    ("arm/v5", (L, "arm", "v5")),
    ("x86_64", (L, "amd64", "")),
    ("linux/x86-64", (L, "amd64", "")),
    ("linux/amd64", (L, "amd64", "")),
    ("linux/amd64/v3", (L, "amd64", "v3")),
    ("linux/amd64/v1", (L, "amd64", "")),
    ("i386", (L, "386", "")),
    ("i686", (L, "386", "")),
    ("linux/386", (L, "386", "")),
    ("s390x", (L, "s390x", "")),
    ("linux/ppc64le", (L, "ppc64le", "")),
    ("ppc64el", (L, "ppc64le", "")),
    ("linux/riscv64", (L, "riscv64", "")),
    ("linux/mips64le", (L, "mips64le", "")),
    ("mips64el", (L, "mips64le", "")),
    ("LINUX/ARM64", (L, "arm64", "")),
    ("windows/amd64", ("windows", "amd64", "")),
    ("linux/loongarch64", (L, "loong64", "")),
])
def test_parse_normalises_like_containerd(text, expected):
    assert parse(text) == Platform(*expected)


@pytest.mark.parametrize("text", ["", "linux", "linux/foo", "linux/arm/v9", "linux/amd64/v7", "a/b/c/d",
                                  "linux/s390x/v2", "linux/arm64;rm", "nosuchos/amd64", "linux//arm64",
                                  "linux/arm64/v8.10", "linux/arm64/v10", "linux(/amd64", "amd64(1)/x"])
def test_parse_rejects(text):
    with pytest.raises(PlatformError):
        parse(text)


@pytest.mark.parametrize("platform,text,suffix,qemu,debian", [
    ("linux/arm/v7", "linux/arm/v7", "linux-arm-v7", "arm", "armhf"),
    ("linux/arm64", "linux/arm64", "linux-arm64", "aarch64", "arm64"),
    ("linux/ppc64le", "linux/ppc64le", "linux-ppc64le", "ppc64le", "ppc64el"),
    ("linux/386", "linux/386", "linux-386", "i386", "i386"),
])
def test_names(platform, text, suffix, qemu, debian):
    p = parse(platform)
    assert (str(p), p.tag_suffix, p.qemu_arch, p.debian_arch) == (text, suffix, qemu, debian)


@pytest.mark.parametrize("machine,native", [
    ("x86_64", ["linux/amd64", "linux/386"]),
    ("aarch64", ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    ("armv7l", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    ("s390x", ["linux/s390x"]),
    ("ppc64le", ["linux/ppc64le"]),
])
def test_native_platforms(machine, native):
    assert [str(p) for p in from_uname(machine).native_also()] == native


def test_parse_list_splits_dedupes_and_keeps_order():
    got = parse_list(["linux/amd64,aarch64", "linux/arm64", "armhf"])
    assert [str(p) for p in got] == ["linux/amd64", "linux/arm64", "linux/arm/v7"]


def test_oci_platform_object():
    assert parse("linux/arm/v7").to_oci() == {"architecture": "arm", "os": "linux", "variant": "v7"}
    assert parse("linux/arm64").to_oci() == {"architecture": "arm64", "os": "linux"}


def test_qemu_handler_names():
    assert [str(p) for p in from_qemu_name("aarch64")] == ["linux/arm64"]
    assert [str(p) for p in from_qemu_name("arm")] == ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert from_qemu_name("sparc") == ()


# --- containerd's normalizeArch and platformVector, by rule ------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("linux/arm64/v8.2", (L, "arm64", "v8.2")),   # containerd keeps arm64 v8.x
    ("linux/arm64/8.2", (L, "arm64", "v8.2")),
    ("linux/arm64/v8.0", (L, "arm64", "")),       # 8, v8, v8.0 -> ""
    ("linux/arm64/9", (L, "arm64", "v9")),        # 9, 9.0, v9.0 -> v9
    ("linux/arm64/v9.0", (L, "arm64", "v9")),
    ("linux/arm64/v9.3", (L, "arm64", "v9.3")),
    ("linux/amd64/2", (L, "amd64", "v2")),
    ("linux/i386/v7", (L, "386", "")),            # normalizeArch: i386 drops the variant ...
    ("linux/386/v7", (L, "386", "")),             # ... and 386 itself the same way: one answer for one CPU
    ("windows(10.0.17763)/amd64", ("windows", "amd64", "")),  # containerd's os(version) syntax
    ("plan9/amd64", ("plan9", "amd64", "")),      # an OS containerd knows
])
def test_normalise_arch_like_containerd(text, expected):
    assert parse(text) == Platform(*expected)


@pytest.mark.parametrize("text", ["darwin/arm64", "windows/amd64", "windows(10.0.17763)/amd64", "freebsd/amd64",
                                  "macos/arm64"])
def test_platform_flag_is_linux_only(text):
    """--platform: archfleet's engines build Linux images; other OSes are refused up front."""
    with pytest.raises(PlatformError, match="archfleet builds Linux images only"):
        parse_list([text])


@pytest.mark.parametrize("platform,vector", [
    # containerd's platformVector: amd64/vN runs the lower levels and 386
    ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
    ("linux/amd64", ["linux/amd64", "linux/386"]),
    # arm/vN runs arm/v(N-1) .. v5; arm/v8 includes v7
    ("linux/arm/v8", ["linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    ("linux/arm/v5", ["linux/arm/v5"]),
    # arm64/v8.x runs v8.(x-1) .. v8 and arm/v8 .. v5
    ("linux/arm64/v8.2", ["linux/arm64/v8.2", "linux/arm64/v8.1", "linux/arm64",
                          "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    # arm64/v9.x runs v9.(x-1) .. v9 and v8.(x+5) .. v8
    ("linux/arm64/v9.1", ["linux/arm64/v9.1", "linux/arm64/v9", "linux/arm64/v8.6", "linux/arm64/v8.5",
                          "linux/arm64/v8.4", "linux/arm64/v8.3", "linux/arm64/v8.2", "linux/arm64/v8.1",
                          "linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
])
def test_platform_vector_like_containerd(platform, vector):
    assert [str(p) for p in parse(platform).native_also()] == vector


V2 = "cx16 lahf_lm popcnt sse4_1 sse4_2 ssse3"
V3 = V2 + " avx avx2 bmi1 bmi2 f16c fma abm movbe xsave"
V4 = V3 + " avx512f avx512bw avx512cd avx512dq avx512vl"


@pytest.mark.parametrize("flags,level", [("", 1), ("sse2 sse4_2", 1), (V2, 2), (V3, 3), (V4, 4),
                                         (V2 + " avx512f avx512bw avx512cd avx512dq avx512vl", 2)])
def test_x86_64_level_from_cpu_flags(flags, level):
    """The psABI levels are cumulative: v4 flags without v3's do not make a v4 CPU."""
    assert x86_64_level(flags) == level


def test_native_platforms_of_an_x86_node_include_its_amd64_levels():
    """An x86-64-v3 CPU runs linux/amd64/v3 natively; the machine's own platform stays first."""
    assert [str(p) for p in native_platforms("x86_64", V3)] == [
        "linux/amd64", "linux/amd64/v3", "linux/amd64/v2", "linux/386"]
    assert [str(p) for p in native_platforms("x86_64", "")] == ["linux/amd64", "linux/386"]
    assert [str(p) for p in native_platforms("aarch64")] == [str(p) for p in from_uname("aarch64").native_also()]


def test_emulable_is_what_a_qemu_handler_claims():
    """qemu-x86_64 is claimed for linux/amd64 only, so amd64/v3 is not 'emulable' (no binfmt advice)."""
    assert emulable(parse("linux/arm64")) and emulable(parse("linux/arm/v6")) and emulable(parse("linux/amd64"))
    assert not emulable(parse("linux/amd64/v3"))
    assert not emulable(parse("linux/arm64/v8.2"))
