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
