"""What a node's CPU runs natively, from /proc/cpuinfo: the first ``flags`` line, the x86-64
level those flags reach, and the platforms that level runs (platforms.py)."""

from archfleet.platforms import native_platforms, parse, read_cpu_flags, x86_64_level

V2 = "cx16 lahf_lm popcnt sse4_1 sse4_2 ssse3"

CPUINFO = (
    "processor\t: 0\n"
    "model name\t: Intel\u00ae Xeon\u00ae (flags: none of these)\n"  # not ASCII, and mentions flags
    f"flags\t\t: fpu  {V2} \n"
    "bugs\t\t: spectre_v1\n"
    "\n"
    "processor\t: 1\n"
    "flags\t\t: fpu\n"
)


def test_the_first_flags_line_is_read_whatever_bytes_come_before_it(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_bytes(CPUINFO.encode("utf-8") + b"\xff\n")
    assert read_cpu_flags(str(path)) == f"fpu  {V2}"


def test_no_flags_line_or_no_file_means_no_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # what an arm64 kernel writes
    assert read_cpu_flags(str(path)) == ""
    assert read_cpu_flags(str(tmp_path / "missing")) == ""
    assert x86_64_level(read_cpu_flags(str(path))) == 1


def test_x86_64_level_2_runs_amd64_v2_and_below_but_not_v3():
    assert x86_64_level(V2) == 2
    assert x86_64_level(None) == 1
    assert [str(p) for p in native_platforms("x86_64", V2)] == ["linux/amd64", "linux/amd64/v2", "linux/386"]


def test_runs_is_native_also():
    """A CPU runs its own platform and what native_also lists, nothing else."""
    arm64 = parse("linux/arm64")
    assert arm64.runs(parse("linux/arm64")) and arm64.runs(parse("linux/arm/v7"))
    assert not arm64.runs(parse("linux/amd64"))
    assert not parse("linux/arm/v6").runs(parse("linux/arm/v7"))  # an older ARM does not run newer code


def test_by_default_the_flags_are_this_machines():
    assert read_cpu_flags() == read_cpu_flags("/proc/cpuinfo")
