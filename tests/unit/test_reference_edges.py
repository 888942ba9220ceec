"""References at the edges of distribution's grammar, and the one line each refusal prints.

Each limit is checked on both sides (the last value allowed and the first refused), and each
error names the flag, the value given and the rule it breaks (cli.md: every error is one line
saying what to fix).
"""

import pytest

from archfleet.errors import UsageError
from archfleet.reference import (NAME_MAX, Reference, child_ref, parse_push_target, parse_reference,
                                 parse_registry_host)

DIGEST = "sha256:" + "0" * 64
OTHER = "sha256:" + "1" * 64


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as err:
        call(*args, **kwargs)
    return str(err.value)


@pytest.mark.parametrize("port", [1, 65535])
def test_registry_ports_1_and_65535_are_allowed(port):
    assert parse_reference(f"127.0.0.1:{port}/app").registry == f"127.0.0.1:{port}"
    assert parse_registry_host(f"10.0.0.5:{port}") == f"10.0.0.5:{port}"


@pytest.mark.parametrize("port", [0, 65536])
def test_registry_ports_0_and_65536_are_refused_naming_the_port(port):
    assert refusal(parse_reference, f"127.0.0.1:{port}/app", what="--tag") == (
        f"invalid --tag '127.0.0.1:{port}/app': registry port {port} is not 1-65535")
    assert refusal(parse_registry_host, f"10.0.0.5:{port}") == (
        f"--insecure-registry '10.0.0.5:{port}': port {port} is not 1-65535")


def test_a_registry_host_without_a_port_is_returned_unchanged():
    assert parse_registry_host("registry.lab") == "registry.lab"
    assert parse_registry_host("[::1]") == "[::1]"


def test_a_registry_host_with_a_path_is_refused_with_an_example():
    assert refusal(parse_registry_host, "reg.io/app", what="doctor --registry") == (
        "doctor --registry 'reg.io/app': give HOST[:PORT] only, e.g. 10.0.0.5:5000")


def test_a_name_of_exactly_255_characters_is_allowed_256_is_not():
    """distribution's NameTotalLengthMax counts registry, '/' and path."""
    assert len("r.io/" + "a" * 250) == NAME_MAX
    assert parse_reference("r.io/" + "a" * 250).name == "r.io/" + "a" * 250
    assert refusal(parse_reference, "r.io/" + "a" * 251) == (
        f"invalid tag 'r.io/{'a' * 251}': the name is longer than 255 characters")


@pytest.mark.parametrize("text,rule", [
    ("a b", "references are printable ASCII without whitespace (distribution's reference grammar)"),
    ("app:t\u00e5g", "references are printable ASCII without whitespace (distribution's reference grammar)"),
    ("r.io/app@sha256:zz", "digest must be sha256:<64 lowercase hex digits>"),
    # only the first '@' starts the digest: a second one makes the digest invalid
    (f"r.io/app@{DIGEST}@{OTHER}", "digest must be sha256:<64 lowercase hex digits>"),
    ("reg_x.io/app", "bad registry host 'reg_x.io'"),
    ("r.io/App", "repository 'App' must be lowercase letters, digits and separators (. _ __ -), "
                 "in /-separated parts"),
    # a tag is what follows ':' in the last /-separated part only: here ':' sits in the path
    ("r.io/a:b/c", "repository 'a:b/c' must be lowercase letters, digits and separators (. _ __ -), "
                   "in /-separated parts"),
])
def test_each_refusal_is_one_line_naming_the_flag_the_value_and_the_rule(text, rule):
    assert refusal(parse_reference, text) == f"invalid tag {text!r}: {rule}"
    assert refusal(parse_reference, text, what="--tag") == f"invalid --tag {text!r}: {rule}"


def test_push_targets_are_named_by_their_flag():
    assert refusal(parse_push_target, "App") == (
        "invalid --tag 'App': repository 'library/App' must be lowercase letters, digits and separators "
        "(. _ __ -), in /-separated parts")
    assert refusal(parse_push_target, f"r.io/app@{DIGEST}").startswith(f"invalid --tag 'r.io/app@{DIGEST}': ")


def test_with_tag_drops_the_digest_and_with_digest_drops_the_tag():
    """A reference names one manifest: by tag or by digest, never a tag pinned to another digest."""
    ref = parse_reference(f"r.io/app:v1@{DIGEST}")
    assert ref.with_tag("v2") == Reference("r.io", "app", "v2", None)
    assert ref.with_digest(OTHER) == Reference("r.io", "app", None, OTHER)


def test_str_gives_back_tag_and_digest():
    assert str(parse_reference(f"r.io/app:v1@{DIGEST}")) == f"r.io/app:v1@{DIGEST}"
    assert str(parse_reference(f"r.io/app@{DIGEST}")) == f"r.io/app@{DIGEST}"


def test_a_child_of_a_reference_without_a_tag_is_latest_dash_platform():
    assert child_ref(parse_reference(f"r.io/app@{DIGEST}"), "linux-arm64").tag == "latest-linux-arm64"


def test_a_child_tag_too_long_names_the_flag_the_tag_and_the_cut():
    ref = parse_reference("reg.io/app:" + "a" * 116)
    assert refusal(child_ref, ref, "linux-arm-v7") == (
        f"invalid --tag 'reg.io/app:{'a' * 116}': the per-platform tag {'a' * 20}...-linux-arm-v7 would be 129 "
        "characters, more than the registry's 128; shorten the tag by 1")


def test_an_empty_reference_says_it_is_empty_and_what_to_give():
    import pytest

    from archfleet.errors import UsageError
    from archfleet.reference import parse_reference

    for text in ("", "  "):
        with pytest.raises(UsageError, match=r"^invalid -t '\s*': it is empty; give \[REGISTRY/\]NAME\[:TAG\]"):
            parse_reference(text, what="-t")
