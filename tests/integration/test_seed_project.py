"""The seed article's project, end to end (issue 13, item 5), on the lab's multi-arch Debian base
(tests/lab/debian.sh: $REGISTRY/library/debian:bookworm).

- The article's first Dockerfile (``FROM debian`` + ``CMD uname -m``) builds as written, with
  the lab's registry path for the image, for five platforms, and each prints its machine.
- examples/seed-rust in the Trow shape: a default Dockerfile (amd64, compiled where it runs) and
  one file per ARM platform whose $BUILDPLATFORM stage installs Debian's Rust and cross linker
  and runs ``cargo build --target``, its final stage pinned to that platform. archfleet plans
  ``cross`` where the file cross-compiles (no emulation at all), builds and pushes one index, and
  each child says it was compiled for its CPU and runs on it.

Pushes go to $REGISTRY/seed/... The first run downloads Debian's Rust (apt's cache mount keeps it
for the next); later runs reuse BuildKit's layer cache.
"""

from __future__ import annotations

import json

import pytest

from conftest import missing
from labtools import unique

FIVE = {"linux/amd64": "x86_64", "linux/arm64": "aarch64", "linux/arm/v7": "armv7l", "linux/s390x": "s390x",
        "linux/ppc64le": "ppc64le"}
RUST = {"linux/amd64": ("x86_64", "x86_64"), "linux/arm64": ("aarch64", "aarch64"), "linux/arm/v7": ("arm", "armv7l")}
PER_PLATFORM = ["-f", "linux/arm64=examples/seed-rust/Dockerfile.arm64",
                "-f", "linux/arm/v7=examples/seed-rust/Dockerfile.armv7"]


@pytest.fixture(scope="module")
def debian(lab) -> str:
    """The lab's multi-arch Debian bookworm base (made by tests/lab/debian.sh from bootstrap.sh)."""
    if lab.manifest("library/debian", "bookworm").status_code != 200:
        missing(f"{lab.registry}/library/debian:bookworm is missing (run tests/lab/debian.sh)")
    return f"{lab.registry}/library/debian:bookworm"


def test_the_seed_articles_first_dockerfile_builds_as_written(lab, debian, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {debian}\nCMD uname -m\n")
    tag = f"{lab.registry}/seed/uname:{unique('t')}"
    lab.archfleet("build", "-q", "--platform", ",".join(FIVE), "-t", tag, "--push", str(tmp_path), check=True)
    for platform, machine in FIVE.items():
        assert lab.run_image(tag, platform) == machine


def test_seed_rust_is_planned_cross_where_its_file_cross_compiles(lab, debian):
    proc = lab.archfleet("plan", "--format", "json", "--platform", ",".join(RUST), *PER_PLATFORM,
                         "--build-arg", f"DEBIAN={debian}", "examples/seed-rust", check=True)
    got = {p["platform"]: p for p in json.loads(proc.stdout)["platforms"]}
    assert (got["linux/amd64"]["strategy"], got["linux/amd64"]["node"]) == ("native", "local")
    for platform in ("linux/arm64", "linux/arm/v7"):
        entry = got[platform]
        assert (entry["strategy"], entry["node"]) == ("cross", "local"), entry
        assert f"build@$BUILDPLATFORM (2 RUN), #1@{platform}" in entry["why"] and "no emulation needed" in entry["why"]


def test_seed_rust_builds_one_index_and_each_child_runs_its_own_cpu(lab, debian, tmp_path):
    tag = f"{lab.registry}/seed/seed-rust:{unique('t')}"
    meta = tmp_path / "meta.json"
    lab.archfleet("build", "-q", "--platform", ",".join(RUST), *PER_PLATFORM, "--build-arg", f"DEBIAN={debian}",
                  "-t", tag, "--push", "--metadata-file", str(meta), "examples/seed-rust", check=True, timeout=1800)
    doc = json.loads(meta.read_text())["archfleet.platforms"]
    assert {p: (e["strategy"], e["dockerfile"].rsplit("/", 1)[1]) for p, e in doc.items()} == {
        "linux/amd64": ("native", "Dockerfile"), "linux/arm64": ("cross", "Dockerfile.arm64"),
        "linux/arm/v7": ("cross", "Dockerfile.armv7")}
    index = lab.manifest("seed/seed-rust", tag.rsplit(":", 1)[1]).json()
    assert sorted("/".join(filter(None, (m["platform"]["os"], m["platform"]["architecture"],
                                         m["platform"].get("variant")))) for m in index["manifests"]) == sorted(RUST)
    sums = set()
    for platform, (compiled, machine) in RUST.items():
        words = lab.run_image(tag, platform).split()
        assert words[:7] == ["seed-rust", "built", "for", f"{compiled},", "running", "on", machine], words
        sums.add(words[7])
    assert len(sums) == 1  # the same program on every CPU
