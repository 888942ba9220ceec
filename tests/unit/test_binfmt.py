from archfleet.binfmt import emulated_platforms, parse_entry


def test_parse_entry_and_platforms():
    text = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: OPF\noffset 0\nmagic 7f454c46\n"
    h = parse_entry("qemu-aarch64", text)
    assert h.enabled and h.flags == "OPF" and h.usable_in_containers
    assert [str(p) for p in h.platforms] == ["linux/arm64"]


def test_handler_without_fix_binary_is_not_counted():
    h = parse_entry("qemu-s390x", "enabled\ninterpreter /usr/bin/qemu-s390x\nflags: \n")
    assert not h.usable_in_containers
    assert emulated_platforms([h]) == ()


def test_disabled_handler_is_not_counted():
    h = parse_entry("qemu-arm", "disabled\ninterpreter /x\nflags: F\n")
    assert emulated_platforms([h]) == ()
