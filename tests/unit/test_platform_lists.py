"""``--platform`` values (platforms.py ``parse_list``/``parse_target``): empty items between
commas are skipped, not the end of the list; another OS is refused with the Linux platform to
use instead, variant included."""

import pytest

from archfleet.platforms import PlatformError, parse_list, parse_target


def test_empty_items_are_skipped_and_the_rest_kept():
    assert [str(p) for p in parse_list("linux/amd64,,linux/arm64,")] == ["linux/amd64", "linux/arm64"]
    assert [str(p) for p in parse_list([" ,linux/s390x", "linux/amd64,linux/s390x"])] == ["linux/s390x", "linux/amd64"]


@pytest.mark.parametrize("text,instead", [("windows/arm/v7", "linux/arm/v7"), ("windows/amd64", "linux/amd64")])
def test_another_os_is_refused_naming_the_linux_platform_to_use(text, instead):
    with pytest.raises(PlatformError) as err:
        parse_target(text)
    assert str(err.value) == (f"platform {text!r}: archfleet builds Linux images only (no engine here runs windows "
                              f"containers); use {instead}")
