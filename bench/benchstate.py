"""The state a benchmark starts from: empty user caches of its own, said in its output.

archfleet learns as it runs (node scores, link rates, layer scans, build history, all in the
user's cache dir). A benchmark that shared them with the test suite or with earlier runs would
measure whatever those left behind, so each benchmark calls :func:`isolate` first: a fresh
``XDG_CACHE_HOME`` and ``ARCHFLEET_HISTORY`` for itself and every archfleet it starts. Pass
``--keep-state`` (or set ``ARCHFLEET_BENCH_STATE=keep``) to measure with the user's caches instead;
the line printed says which. The directory is removed when the benchmark exits (set
``ARCHFLEET_BENCH_STATE=leave`` to keep it for a look).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


def isolate(name: str) -> Path | None:
    """Point the caches at a new empty directory (unless asked to keep them); return it. The
    archfleet servers the bench's commands start (the default, docs/cli.md) live in a runtime
    dir of the bench's own (:func:`own_servers`), stopped at its end."""
    own_servers()
    keep = "--keep-state" in sys.argv or os.environ.get("ARCHFLEET_BENCH_STATE") == "keep"
    if keep:
        sys.argv = [a for a in sys.argv if a != "--keep-state"]
        print(f"{name}: state: the user's caches and history as they are (--keep-state)")
        return None
    d = Path(tempfile.mkdtemp(prefix=f"archfleet-bench-{name}-"))
    os.environ["XDG_CACHE_HOME"] = str(d)
    os.environ["ARCHFLEET_HISTORY"] = str(d / "history.sqlite")
    print(f"{name}: state: empty caches and history in {d}")
    if os.environ.get("ARCHFLEET_BENCH_STATE") != "leave":
        atexit.register(shutil.rmtree, d, True)  # ignore_errors: a run's files may be root's or gone
    return d


def cache_file(name: str) -> Path:
    """A file in archfleet's cache dir as archfleet itself finds it (platformdirs, XDG aware)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("archfleet")) / name


def own_servers() -> Path:
    """``XDG_RUNTIME_DIR`` for this bench and what it starts: a new private directory (short: a
    socket path has 107 bytes). At exit, ``archfleet server stop`` there, then it is removed."""
    runtime = Path(tempfile.mkdtemp(prefix="afb-", dir="/tmp"))
    runtime.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    atexit.register(_stop_servers, runtime)
    return runtime


def server_said() -> str:
    """What ``archfleet server status`` says of the bench's servers (how many commands each served)."""
    import subprocess

    done = subprocess.run([str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "archfleet"), "server",
                           "status"], capture_output=True, text=True)
    return " | ".join((done.stdout.strip() or done.stderr.strip()).replace("archfleet server ", "").splitlines())


def _stop_servers(runtime: Path) -> None:
    import subprocess
    import time

    subprocess.run([str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "archfleet"), "server", "stop"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while any(runtime.glob("archfleet/*.sock")) and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(runtime, ignore_errors=True)
