import pytest

from archfleet.platforms import Platform, PlatformError, from_qemu_name, from_uname, parse, parse_list

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
                                  "linux/s390x/v2", "linux/arm64;rm", "plan9/amd64", "linux//arm64"])
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
    ("aarch64", ["linux/arm64", "linux/arm/v7", "linux/arm/v6"]),
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
