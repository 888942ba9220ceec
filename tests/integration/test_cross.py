"""Cross-compilation against the real engine: examples/cross-c, emulated-c and cross-run."""

from __future__ import annotations

import json

from labtools import child_labels, one_line_error, unique

FOUR = ["linux/arm64", "linux/arm/v7", "linux/s390x", "linux/ppc64le"]


def plan(lab, *args):
    proc = lab.archfleet("plan", "--format", "json", *args, check=True)
    return {p["platform"]: p for p in json.loads(proc.stdout)["platforms"]}


def test_plan_cross_c_chooses_cross_on_amd64_without_emulator(lab):
    got = plan(lab, "--platform", "linux/arm64,linux/s390x", "examples/cross-c")
    for p in ("linux/arm64", "linux/s390x"):
        assert got[p]["strategy"] == "cross" and got[p]["node"] == "local"
        assert "no emulation needed" in got[p]["why"] and "build@$BUILDPLATFORM" in got[p]["why"]
    table = lab.archfleet("plan", "--platform", "linux/arm64,linux/s390x", "examples/cross-c", check=True).stdout
    assert "cross@local" in table and "linux/amd64" in table


def test_plan_emulated_c_chooses_qemu(lab):
    got = plan(lab, "--platform", "linux/arm64,linux/s390x", "examples/emulated-c")
    assert {p["strategy"] for p in got.values()} == {"qemu"}


def test_cross_c_for_four_platforms_runs_everywhere(lab, tmp_path):
    tag = f"{lab.registry}/promises/cross-c:{unique('t')}"
    meta = tmp_path / "m.json"
    lab.archfleet("build", "-q", "--platform", ",".join(FOUR), "-t", tag, "--push", "--metadata-file", str(meta),
                  "examples/cross-c", check=True)
    placed = {p: (e["strategy"], e["node"]) for p, e in json.loads(meta.read_text())["archfleet.platforms"].items()}
    assert placed == {p: ("cross", "local") for p in FOUR}  # cross-compiled, not built under QEMU
    expected = {"linux/arm64": "aarch64", "linux/arm/v7": "armv7l", "linux/s390x": "s390x", "linux/ppc64le": "ppc64le"}
    for p in FOUR:
        out = lab.run_image(tag, p).split()
        assert out[0] == expected[p] and out[1] == "233303358"  # same checksum everywhere: same program


def test_cross_with_a_run_in_the_final_stage_is_a_blend_and_builds(lab, tmp_path):
    got = plan(lab, "--platform", "linux/arm64", "examples/cross-run")
    entry = got["linux/arm64"]
    assert entry["strategy"] == "cross" and "1 target RUN under qemu-aarch64" in entry["why"]
    tag = f"{lab.registry}/promises/cross-run:{unique('t')}"
    meta = tmp_path / "m.json"
    lab.archfleet("build", "-q", "--platform", "linux/arm64,linux/s390x", "-t", tag, "--push",
                  "--metadata-file", str(meta), "examples/cross-run", check=True)
    assert {e["strategy"] for e in json.loads(meta.read_text())["archfleet.platforms"].values()} == {"cross"}
    assert lab.run_image(tag, "linux/s390x").split("\n")[-1] == "s390x"


def test_toolchain_args_reach_only_declaring_dockerfiles(lab, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        f"FROM --platform=$BUILDPLATFORM {lab.base} AS b\nRUN true\nFROM {lab.base}\n"
        "ARG GOARCH\nARG RUST_TARGET\nARG GNU_TRIPLE=unset\nLABEL goarch=$GOARCH rust=$RUST_TARGET triple=$GNU_TRIPLE\n"
        "COPY --from=b /bin/busybox /x\nCMD [\"uname\", \"-m\"]\n")
    repo, t = "promises/toolargs", unique("t")
    proc = lab.archfleet("build", "--progress", "plain", "--platform", "linux/arm/v7", "-t",
                         f"{lab.registry}/{repo}:{t}", "--push", "--build-arg", "GNU_TRIPLE=mine", str(tmp_path),
                         check=True)
    assert "not consumed" not in proc.stderr  # nothing undeclared was passed
    labels = child_labels(lab.registry, repo, t)["linux/arm/v7"]
    assert {k: labels[k] for k in ("goarch", "rust", "triple")} == {
        "goarch": "arm", "rust": "armv7-unknown-linux-gnueabihf", "triple": "mine"}
    assert labels["org.archfleet.platform"] == "linux/arm/v7" and "org.archfleet.context-digest" in labels


def test_dockerfile_errors_are_one_line_exit_2(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("ARG A=x\nFROM $MISSING\n")
    proc = cli.archfleet("plan", "--platform", "linux/arm64", str(tmp_path))
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "Dockerfile:2:" in line and "$MISSING" in line
    proc = cli.archfleet("build", "--platform", "linux/arm64", "--target", "nope", "examples/cross-c")
    assert proc.returncode == 2 and "--target: no stage named 'nope'" in one_line_error(proc)


def test_example_sources_are_one_program():
    from conftest import REPO

    texts = {(REPO / "examples" / d / "hello.c").read_text() for d in ("cross-c", "emulated-c", "cross-run")}
    assert len(texts) == 1  # the benchmark compares the same program, compiled two ways
