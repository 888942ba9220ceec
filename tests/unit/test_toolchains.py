from archfleet.platforms import parse
from archfleet.toolchains import build_args, values


def test_values_per_platform():
    v7 = values(parse("linux/arm/v7"))
    assert (v7["GOARCH"], v7["GOARM"], v7["GNU_TRIPLE"], v7["RUST_TARGET"], v7["ZIG_TARGET"]) == (
        "arm", "7", "arm-linux-gnueabihf", "armv7-unknown-linux-gnueabihf", "arm-linux-musleabihf")
    s390 = values(parse("linux/s390x"))
    assert (s390["GNU_TRIPLE"], s390["ZIG_TARGET"], "GOARM" in s390) == ("s390x-linux-gnu", "s390x-linux-musl", False)
    assert values(parse("linux/arm64"))["RUST_TARGET"] == "aarch64-unknown-linux-gnu"
    assert values(parse("linux/ppc64le"))["ZIG_TARGET"] == "powerpc64le-linux-musl"


def test_only_declared_and_never_over_the_user():
    got = dict(build_args(parse("linux/arm64"), {"ZIG_TARGET", "GOARCH", "OTHER"}, [("GOARCH", "mine")]))
    assert got == {"ZIG_TARGET": "aarch64-linux-musl"}
