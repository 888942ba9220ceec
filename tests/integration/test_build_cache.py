"""--cache-from / --cache-to and the cross-node warm cache end to end (issue 14, docs/cli.md
"Build caches"), on the lab's Docker 20.10 nodes (BuildKit without buildx: inline caches)."""

from __future__ import annotations

import json
import re

import httpx

from labtools import manifest, unique

DOCKERFILE = """\
ARG BASE
FROM $BASE
ARG N
RUN echo "$N" > /n && sleep 2 && echo one > /one
RUN echo two > /two
"""


def _context(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def _run_steps(stderr: str, where: str) -> dict[str, bool]:
    """Each RUN step of ``where``'s (``[linux/amd64@n2]``) BuildKit log, in order -> whether it
    was CACHED."""
    steps, cached = {}, set()
    for line in stderr.splitlines():
        if not line.startswith(where):
            continue
        m = re.match(r".*#(\d+) \[\d+/\d+\] (RUN .*)$", line)
        if m:
            steps[m.group(1)] = m.group(2)[:40]
        m = re.match(r".*#(\d+) CACHED$", line)
        if m:
            cached.add(m.group(1))
    return {text: n in cached for n, text in steps.items()}


def _build(lab, nodes, ctx, node, tag, n, *extra, env=None):
    proc = lab.archfleet("build", "--progress", "plain", *nodes.args("--no-local", "--node", node),
                         "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}", "--build-arg", f"N={n}",
                         "-t", tag, "--push", *extra, str(ctx), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cache_to_on_docker_20_10_is_the_inline_cache_under_the_platform_s_ref_and_cache_from_reads_it(
        lab, nodes, tmp_path):
    """buildx's --cache-to type=registry,ref=REF on a node without buildx: the pushed child
    carries its inline cache and is tagged REF-linux-amd64 (plan and the build say it is
    degraded to inline); another node with --cache-from REF (and no shared history) runs no
    RUN step again."""
    ctx, n = _context(tmp_path), unique("n")
    repo, cache = "features/cache", f"{nodes.registry}/features/cache:c-{unique('c')}"
    proc = _build(lab, nodes, ctx, "n1", f"{nodes.registry}/{repo}:{unique('t')}", n,
                  "--cache-to", f"type=registry,ref={cache}")
    assert "inline cache (mode=min)" in proc.stderr and f"cache (inline) -> {cache}-linux-amd64" in proc.stderr
    tag = cache.rsplit(":", 1)[1] + "-linux-amd64"
    child = manifest(lab.registry, repo, tag)
    assert child.status_code == 200, child.text
    config = httpx.get(f"http://{lab.registry}/v2/{repo}/blobs/{child.json()['config']['digest']}").json()
    assert "moby.buildkit.cache.v0" in config  # BuildKit's inline cache, kept by archfleet's push

    fresh = {"ARCHFLEET_HISTORY": str(tmp_path / "other-history.sqlite")}  # no warm start from history
    proc = _build(lab, nodes, ctx, "n2", f"{nodes.registry}/{repo}:{unique('t')}", n, "--cache-from", cache, env=fresh)
    assert "cache source" not in proc.stderr
    steps = _run_steps(proc.stderr, "[linux/amd64@n2]")
    assert list(steps.values()) == [True, True], steps  # both RUN steps CACHED


def test_a_platform_moved_to_another_node_starts_warm_from_the_last_child(lab, nodes, tmp_path):
    """The cross-node warm cache: n1 built the platform's last child; pinned to n2 now, plan says
    n2 starts warm from it (and estimates less), and n2's RUN steps come from it (CACHED)."""
    ctx, n = _context(tmp_path), unique("n")
    repo = "features/warm"
    first = _build(lab, nodes, ctx, "n1", f"{nodes.registry}/{repo}:{unique('t')}", n)
    assert first.stdout.strip().startswith("sha256:")
    plan = lab.archfleet("plan", "--format", "json", *nodes.args("--no-local", "--node", "n2"),
                         "--platform", "linux/amd64", "--build-arg", f"BASE={nodes.base}", "--build-arg", f"N={n}",
                         "-t", f"{nodes.registry}/{repo}:x", "--push", str(ctx))
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    (note,) = doc["features"]
    assert note["node"] == "n2" and "linux/amd64 starts warm" in note["note"] and "built on n1" in note["note"]
    assert "starts warm from n1's child" in doc["platforms"][0]["estimate_basis"]
    second = _build(lab, nodes, ctx, "n2", f"{nodes.registry}/{repo}:{unique('t')}", n)
    assert f"cache source: {nodes.registry}/{repo}@sha256:" in second.stderr and "built on n1" in second.stderr
    steps = _run_steps(second.stderr, "[linux/amd64@n2]")
    assert list(steps.values()) == [True, True], steps  # both RUN steps CACHED


def test_mode_max_is_not_offered_to_a_node_without_buildx_and_plan_says_why(lab, nodes, tmp_path):
    """Docker 20.10 without buildx cannot export every stage's cache: plan rejects the node with
    the reason (exit 3 when no node is left), never builds without it."""
    ctx = _context(tmp_path)
    proc = lab.archfleet("plan", *nodes.args("--no-local", "--node", "n1"), "--platform", "linux/amd64",
                         "--build-arg", f"BASE={nodes.base}", "-t", f"{nodes.registry}/features/max:x", "--push",
                         "--cache-to", f"type=registry,ref={nodes.registry}/features/max:c,mode=max", str(ctx))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "mode=max" in proc.stderr and "n1" in proc.stderr, proc.stderr
