"""Estimates in parts against a real build (issue 17): the metadata file records, per platform,
the estimate and the measured parts, and each Dockerfile step's time as this machine's BuildKit
reported it; a second build of the same steps is estimated from those times, and a ``sleep``
under QEMU is not multiplied by the QEMU factor."""

from __future__ import annotations

import json
import uuid

from conftest import REPO
from labtools import unique


def build(lab, ctx, meta, tag):
    lab.archfleet("build", "-q", "--platform", "linux/amd64,linux/arm64", "--node", "local", "-t", tag, "--push",
                  "--build-arg", f"N={uuid.uuid4().hex}", "--metadata-file", str(meta), str(ctx), check=True)
    return json.loads(meta.read_text())


def test_the_metadata_records_each_steps_time_and_the_next_build_learns_it(lab, tmp_path):
    import jsonschema

    schema = json.loads((REPO / "docs" / "schema" / "metadata.schema.json").read_text())
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lab.base}\nARG N\nRUN echo $N > /n && sleep 2\nCMD [\"uname\",\"-m\"]\n")
    tag = f"{lab.registry}/estimates/parts:{unique('t')}"
    first = build(lab, ctx, tmp_path / "1.json", tag)
    jsonschema.validate(first, schema)
    for platform, entry in first["archfleet.platforms"].items():
        actual = entry["actual"]
        assert set(actual["parts"]) == {"fixed", "transfer", "work", "push"}, entry
        assert abs(sum(actual["parts"].values()) - actual["seconds"]) < 0.05, entry
        (step,) = [s for s in entry["steps"] if s["step"].startswith("RUN")]
        # BuildKit's own time for the step: the sleep, not QEMU-multiplied, not the whole build
        assert not step["cached"] and 2.0 <= step["seconds"] < 6.0, step
        assert step["basis"] == "prior (sleep)" and step["estimate"] < 4.0, step
    second = build(lab, ctx, tmp_path / "2.json", tag)
    for platform, entry in second["archfleet.platforms"].items():
        (step,) = [s for s in entry["steps"] if s["step"].startswith("RUN")]
        assert step["basis"].startswith("learned"), (platform, step)
        assert abs(step["estimate"] - step["seconds"]) < 1.0, (platform, step)
        assert "learned" in entry["estimate"]["basis"], entry["estimate"]


def _cached_against_buildkit(lab, ctx, meta) -> list[tuple[str, bool, bool]]:
    """One build of ``ctx`` on this machine: each step as (text, plan said cached, BuildKit said CACHED)."""
    lab.archfleet("build", "-q", "--platform", "linux/amd64", "--node", "local", "--metadata-file", str(meta),
                  str(ctx), check=True)
    (entry,) = json.loads(meta.read_text())["archfleet.platforms"].values()
    return [(s["step"], s["basis"] == "cached", s["cached"]) for s in entry["steps"]]


def test_plans_cached_steps_are_the_steps_buildkit_finds_cached_after_each_kind_of_edit(lab, tmp_path):
    """Rule (issue 17: a change to one step re-estimates that step): after each kind of edit,
    the steps the plan calls cached are exactly those BuildKit prints CACHED for. The kinds the
    fresh-user helpers found wrong: a touch or a fresh checkout (mtimes only), an edit of a file
    only a later COPY copies, an ignored file, a mode, a file reached through a symlinked
    directory, the Dockerfile's own tail."""
    import os

    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "dir").mkdir()
    (ctx / "go.mod").write_text(uuid.uuid4().hex)  # new content per run: the first build builds
    (ctx / "src" / "main.c").write_text("int main(){}\n")
    (ctx / "dir" / "x").write_text("x\n")
    (ctx / "link").symlink_to("dir")
    (ctx / "build.log").write_text("out\n")
    (ctx / ".dockerignore").write_text("*.log\n")
    dockerfile = (f"FROM {lab.base}\nCOPY go.mod /w/\nRUN cat /w/go.mod\nCOPY src/ /w/src/\nRUN ls /w/src\n"
                  "COPY link/x /w/x\nRUN cat /w/x\n")
    (ctx / "Dockerfile").write_text(dockerfile)
    meta = tmp_path / "meta.json"
    first = _cached_against_buildkit(lab, ctx, meta)
    assert not any(bk for _, _, bk in first), first  # the first build ran every step

    def touch_all():
        for p in ctx.rglob("*"):
            if not p.is_symlink():
                os.utime(p, None)

    T, F = True, False
    edits = [  # the edit, and which steps BuildKit finds CACHED after it
        ("nothing", lambda: None, [T] * 6),
        ("a touch of every file", touch_all, [T] * 6),
        ("an ignored file", lambda: (ctx / "build.log").write_text("other\n"), [T] * 6),
        ("a file only the second COPY copies", lambda: (ctx / "src" / "main.c").write_text("int main(){return 1;}\n"),
         [T, T, F, F, F, F]),
        ("a file reached through a symlinked directory", lambda: (ctx / "dir" / "x").write_text("y\n"),
         [T, T, T, T, F, F]),
        ("a mode", lambda: (ctx / "go.mod").chmod(0o755), [F] * 6),
        ("a step added at the end", lambda: (ctx / "Dockerfile").write_text(dockerfile + "RUN true\n"), [T] * 6 + [F]),
    ]
    for what, edit, expected in edits:
        edit()
        steps = _cached_against_buildkit(lab, ctx, meta)
        assert [bk for _, _, bk in steps] == expected, (what, steps)  # what BuildKit did, as this test expects
        assert [plan for _, plan, _ in steps] == expected, (what, steps)  # and what the plan said
