"""A context file whose contents change while its size and mtime do not (``cp -p``, ``rsync -t``,
``touch -r``), on this machine's dockerd: BuildKit's transfer of a local context compares size
and mtime, so it builds its old copy (plain ``docker build`` does too), and archfleet would
push that image under the new contents' reuse key and keep reusing it after a ``touch``. The
build is refused before anything is built, ``plan`` warns, and after a ``touch`` the image
holds the new contents. Images go to 127.0.0.1:5000/stale/... only."""

from __future__ import annotations

import os
import subprocess
import time

from labtools import unique

MESSAGE = ("context file blob: its contents changed but not its size and modification time; BuildKit compares "
           "only those and would build its old copy: touch it and build again")


def test_new_contents_under_an_old_size_and_mtime_are_refused_before_building(lab, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "blob").write_text(unique("a")[:12] + "\n")
    (ctx / "Dockerfile").write_text(f'FROM {lab.base}\nCOPY blob /blob\nCMD ["cat", "/blob"]\n')
    tag = f"{lab.registry}/stale/app:{unique('t')}"
    build = ("build", "-q", "--platform", "linux/amd64", "--node", "local", "-t", tag, "--push", str(ctx))
    first = lab.archfleet(*build, check=True).stdout.strip()
    st = os.stat(ctx / "blob")
    time.sleep(0.05)
    new = unique("b")[:12] + "\n"  # the same length
    (ctx / "blob").write_text(new)
    os.utime(ctx / "blob", ns=(st.st_atime_ns, st.st_mtime_ns))

    plan = lab.archfleet("plan", "--platform", "linux/amd64", "--node", "local", str(ctx))
    assert plan.returncode == 0 and plan.stderr.splitlines()[0] == f"archfleet: warning: {MESSAGE}", plan.stderr
    refused = lab.archfleet(*build)
    assert (refused.returncode, refused.stderr) == (2, f"archfleet: error: {MESSAGE}\n")
    assert lab.manifest("stale/app", tag.rsplit(":", 1)[1]).headers["docker-content-digest"] == first  # untouched

    os.utime(ctx / "blob")  # the fix the line names
    lab.archfleet(*build, check=True)
    assert lab.run_image(tag, "linux/amd64") == new.strip()
    # what BuildKit alone does with such a file: its old copy (the reason for the refusal)
    (ctx / "Dockerfile").write_text(f'FROM {lab.base}\nCOPY blob /blob\nCMD ["cat", "/blob"]\n')
    st = os.stat(ctx / "blob")
    (ctx / "blob").write_text(unique("c")[:12] + "\n")
    os.utime(ctx / "blob", ns=(st.st_atime_ns, st.st_mtime_ns))
    plain = subprocess.run([lab.docker, "build", "-q", "--platform", "linux/amd64", str(ctx)], capture_output=True,
                           text=True, env=dict(os.environ, DOCKER_BUILDKIT="1"), timeout=300)
    image = plain.stdout.strip()
    held = subprocess.run([lab.docker, "run", "--rm", image], capture_output=True, text=True, timeout=60).stdout
    assert held.strip() == new.strip(), "BuildKit saw the change: the refusal would no longer be needed"
