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


# --- distribution's grammar, by rule ------------------------------------------------------------

from archfleet.reference import TAG_MAX, child_ref, parse_push_target  # noqa: E402

DIGEST = "sha256:" + "0" * 64


@pytest.mark.parametrize("text,rule", [
    ("reg.io/app:t\u00e5g", "printable ASCII"),           # distribution's \w is ASCII: å is not a tag character
    ("reg.io/app:v\u00e9", "printable ASCII"),
    ("app:" + "a" * (TAG_MAX + 1), "must be 1-128"),     # 129 characters
    ("app:x\n", "printable ASCII"),                      # `$` would have let a trailing newline through
    ("app:.hidden", "must be 1-128"),                    # a tag starts with a word character
    ("127.0.0.1:99999/app:1", "registry port 99999 is not 1-65535"),
    ("127.0.0.1:0/app:1", "registry port 0 is not 1-65535"),
    ("r.io/" + "a" * 251, "longer than 255"),
])
def test_rejects_what_distribution_rejects(text, rule):
    with pytest.raises(UsageError) as err:
        parse_reference(text, what="--tag")
    assert rule in str(err.value) and str(err.value).startswith("invalid --tag ")


def test_longest_tag_is_128():
    assert parse_reference("app:" + "a" * TAG_MAX).tag == "a" * TAG_MAX


@pytest.mark.parametrize("text,name", [
    ("docker.io/app", "docker.io/library/app"),          # normalize.go: official images under library/
    ("index.docker.io/app:1", "docker.io/library/app"),
    ("registry-1.docker.io/user/app", "docker.io/user/app"),
    ("app", "docker.io/library/app"),
    ("127.0.0.1:65535/app", "127.0.0.1:65535/app"),
])
def test_docker_hub_normalisation(text, name):
    assert parse_reference(text).name == name


@pytest.mark.parametrize("text", [f"127.0.0.1:5000/app@{DIGEST}", f"reg.io/app:tag@{DIGEST}"])
def test_push_target_refuses_digests(text):
    """-t names where to push; a digest cannot be a push target (and tag@digest pins the tag)."""
    assert parse_reference(text).digest == DIGEST  # a valid reference all the same
    with pytest.raises(UsageError, match="a digest cannot be pushed to"):
        parse_push_target(text)


def test_child_tag_must_fit_128():
    """<tag>-<os>-<arch>[-<variant>] is a tag too: at most 128 characters."""
    ref = parse_reference("reg.io/app:" + "a" * 115)  # 115 + len("-linux-arm-v7") = 128
    assert child_ref(ref, "linux-arm-v7").tag == "a" * 115 + "-linux-arm-v7"
    with pytest.raises(UsageError, match="would be 129 characters.*shorten the tag by 1"):
        child_ref(parse_reference("reg.io/app:" + "a" * 116), "linux-arm-v7")
