import pytest

from archfleet.errors import UsageError
from archfleet.reference import Reference, is_loopback_host, parse_reference


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:5000/arch-test:blog", ("127.0.0.1:5000", "arch-test", "blog", None)),
    ("localhost/app", ("localhost", "app", "latest", None)),
    ("registry.lab:5000/team/app:1.2", ("registry.lab:5000", "team/app", "1.2", None)),
    ("app", ("docker.io", "library/app", "latest", None)),
    ("user/app:v1", ("docker.io", "user/app", "v1", None)),
    ("[::1]:5000/app:x", ("[::1]:5000", "app", "x", None)),
    ("r.io/a@sha256:" + "a" * 64, ("r.io", "a", None, "sha256:" + "a" * 64)),
])
def test_parse(text, expected):
    assert parse_reference(text) == Reference(*expected)


@pytest.mark.parametrize("text", ["", "app/UPPER", "app:bad tag", "app:$(id)", "r.io/app;rm -rf", "app:" + "x" * 129,
                                  "r.io/app@sha256:zz", "r.io/-app", "a b", "app:`id`", "app\n:x"])
def test_rejects(text):
    with pytest.raises(UsageError):
        parse_reference(text)


def test_str_round_trip():
    ref = parse_reference("127.0.0.1:5000/a/b:c")
    assert str(ref) == "127.0.0.1:5000/a/b:c"
    assert str(ref.with_tag("c-linux-arm64")) == "127.0.0.1:5000/a/b:c-linux-arm64"
    assert ref.with_digest("sha256:" + "0" * 64).reference == "sha256:" + "0" * 64


@pytest.mark.parametrize("host,loop", [("127.0.0.1:5000", True), ("localhost:5000", True), ("127.3.2.1", True),
                                       ("[::1]:5000", True), ("10.0.0.1:5000", False), ("registry.lab", False)])
def test_loopback(host, loop):
    assert is_loopback_host(host) is loop
