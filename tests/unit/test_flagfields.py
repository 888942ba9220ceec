"""buildx reads the key=value lists of --secret, --cache-from/--cache-to and -o as one line of
CSV (util/buildflags): a field holding a comma is quoted. One reader serves all three here."""

import pytest

from archfleet.buildcache import parse_cache
from archfleet.errors import UsageError
from archfleet.flagfields import fields
from archfleet.outputs import parse_output
from archfleet.secrets import parse_secret


def test_a_quoted_field_keeps_its_comma_and_keys_are_lower_cased():
    assert fields("--x", 'Type=local,"dest=out,2"') == [("type", "local"), ("dest", "out,2")]


def test_a_field_without_equals_or_broken_quoting_is_one_line_naming_the_flag():
    with pytest.raises(UsageError, match=r"^--x: 'dest' is not key=value$"):
        fields("--x", "type=local,dest")
    with pytest.raises(UsageError, match=r"^--x: cannot read it as comma-separated key=value fields$"):
        fields("--x", 'type=local,"dest=a')


def test_output_dest_with_a_comma_is_one_path(tmp_path):
    out = parse_output(f'type=local,"dest={tmp_path}/out,2"')
    assert (out.kind, str(out.dest)) == ("local", f"{tmp_path}/out,2")


def test_secret_src_with_a_comma_is_one_path(tmp_path):
    src = tmp_path / "npm,rc"
    src.write_text("token")
    assert parse_secret(f'id=npmrc,"src={src}"').src == str(src)


def test_cache_ref_fields_are_read_the_same_way():
    spec = parse_cache("--cache-from", '"type=registry","ref=127.0.0.1:5000/app:cache"')
    assert spec.ref == "127.0.0.1:5000/app:cache"
