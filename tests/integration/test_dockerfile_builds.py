"""Dockerfiles BuildKit builds that archfleet's analysis once refused or misread (review
findings 12 and 13), built end to end on the local node and pushed to <registry>/dockerfile/."""

from __future__ import annotations

import json
import platform
import uuid

HOST = platform.machine()  # the build stage runs here, natively
UNAME = {"linux/amd64": "x86_64", "linux/arm64": "aarch64", "linux/s390x": "s390x"}


def tag(lab, name: str) -> str:
    return f"{lab.registry}/dockerfile/{name}:{uuid.uuid4().hex[:8]}"


def plan(lab, *args) -> dict:
    proc = lab.archfleet("plan", "--format", "json", *args, check=True)
    return {p["platform"]: p for p in json.loads(proc.stdout)["platforms"]}


def test_a_dockerfile_starting_with_a_byte_order_mark_builds(lab, tmp_path):
    # BuildKit skips a leading UTF-8 BOM (moby#23234); the analysis must too
    (tmp_path / "Dockerfile").write_bytes(
        b'\xef\xbb\xbfARG BASE\nFROM $BASE\nRUN echo "bom-ok $(uname -m)" > /ok\nCMD ["cat", "/ok"]\n')
    ref = tag(lab, "bom")
    proc = lab.archfleet("build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64",
                         "--build-arg", f"BASE={lab.base}", "-t", ref, "--push", str(tmp_path), check=True)
    assert "Traceback" not in proc.stderr
    for p in ("linux/amd64", "linux/arm64"):
        assert lab.run_image(ref, p) == f"bom-ok {UNAME[p]}"


def test_from_platform_linux_buildarch_is_the_build_platform(lab, tmp_path):
    # --platform=linux/$BUILDARCH names the build machine as $BUILDPLATFORM does: the stage runs
    # natively, only the final stage (no RUN) is per target, so the plan is cross with no QEMU
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE\nFROM --platform=linux/$BUILDARCH $BASE AS build\nARG TARGETARCH\n"
        'RUN echo "built-on=$(uname -m) for=$TARGETARCH" > /stamp\n'
        'FROM $BASE\nCOPY --from=build /stamp /stamp\nCMD ["cat", "/stamp"]\n')
    args = ["--platform", "linux/arm64,linux/s390x", "--build-arg", f"BASE={lab.base}"]
    got = plan(lab, *args, str(tmp_path))
    for p in ("linux/arm64", "linux/s390x"):
        assert got[p]["strategy"] == "cross" and got[p]["node"] == "local", got[p]
        assert "build@$BUILDPLATFORM (1 RUN)" in got[p]["why"] and "no emulation needed" in got[p]["why"]
    ref = tag(lab, "buildarch")
    lab.archfleet("build", "--progress", "plain", *args, "-t", ref, "--push", str(tmp_path), check=True)
    for p in ("linux/arm64", "linux/s390x"):
        assert lab.run_image(ref, p) == f"built-on={HOST} for={p.split('/')[1]}"


def test_a_stage_pinned_to_the_local_platform_is_cross_compiled_there(lab, tmp_path):
    # FROM --platform=<this machine's platform> behaves like $BUILDPLATFORM (finding 13)
    from archfleet.platforms import from_uname

    local = from_uname(HOST)
    target = "linux/arm64" if local.architecture != "arm64" else "linux/amd64"
    (tmp_path / "Dockerfile").write_text(
        f"ARG BASE\nFROM --platform={local} $BASE AS build\nARG TARGETARCH\n"
        'RUN echo "built-on=$(uname -m) for=$TARGETARCH" > /stamp\n'
        'FROM $BASE\nCOPY --from=build /stamp /stamp\nCMD ["cat", "/stamp"]\n')
    args = ["--platform", target, "--build-arg", f"BASE={lab.base}"]
    entry = plan(lab, *args, str(tmp_path))[target]
    assert (entry["strategy"], entry["node"]) == ("cross", "local"), entry
    assert f"build@{local} (1 RUN)" in entry["why"] and "no emulation needed" in entry["why"]
    ref = tag(lab, "pinned")
    lab.archfleet("build", "--progress", "plain", *args, "-t", ref, "--push", str(tmp_path), check=True)
    assert lab.run_image(ref, target) == f"built-on={HOST} for={target.split('/')[1]}"
