"""Shared fixtures. Integration tests need the lab (tests/lab/bootstrap.sh): dockerd, a registry,
binfmt handlers and the multi-arch base image. Without it they skip, except under CI=true where
a missing prerequisite is a failure."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
LAB_DIR = Path(os.environ.get("ARCHFLEET_LAB_DIR", "/var/tmp/archfleet-lab"))
REGISTRY = os.environ.get("ARCHFLEET_REGISTRY", "127.0.0.1:5000")
BASE = os.environ.get("ARCHFLEET_BASE", f"{REGISTRY}/archfleet/busybox:latest")
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config):
    """Every test session starts from an empty build history (as CI's fresh machine does), so
    what the planner learned from earlier runs on this machine cannot make a test pass here and
    fail there. ARCHFLEET_HISTORY set by the caller wins. Each test also gets its own (see
    ``own_cache``)."""
    # a server the developer started (archfleet server start) would run the commands the tests
    # start; only tests/unit/test_server.py starts its own, in a runtime dir of its own
    os.environ["ARCHFLEET_SERVER"] = "0"
    if "ARCHFLEET_HISTORY" not in os.environ:
        import tempfile

        os.environ["ARCHFLEET_HISTORY"] = str(Path(tempfile.mkdtemp(prefix="archfleet-test-")) / "history.sqlite")


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Each test starts from empty user caches: its own XDG cache dir (node scores, link rates,
    layer scans) and its own build history, so no test's placement depends on what benchmarks,
    earlier runs or earlier tests learned. archfleet subprocesses inherit both."""
    d = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(d))
    monkeypatch.setenv("ARCHFLEET_HISTORY", str(d / "history.sqlite"))
    return d


def pytest_sessionstart(session):
    """Undo what a crashed earlier session changed on the machine (see :func:`machine_change`)."""
    recover_machine_changes()


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a skipped test is a failure: CI must run everything it claims to."""
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        if reporter:
            reporter.write_line(f"CI=true: {skipped} test(s) skipped; in CI a skip is a failure", red=True)
        session.exitstatus = 1


@contextlib.contextmanager
def extra_registry(d: Path, addr: str, *, http_extra: str = "", auth: str = "", scheme: str = "http",
                   ready_status: int = 200, verify=True):
    """A second docker-registry for one test module, on ``addr``, its config and storage under
    ``d``: ``http_extra`` adds lines under ``http:`` (TLS), ``auth`` the ``auth:`` section's
    body. Yields once ``/v2/`` answers ``ready_status``; stopped afterwards."""
    (d / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n"
        f"http:\n  addr: {addr}\n{http_extra}" + (f"auth:\n{auth}" if auth else ""))
    proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{scheme}://{addr}/v2/", verify=verify).status_code == ready_status:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"the registry on {addr} did not come up")
        yield addr
    finally:
        proc.terminate()
        proc.wait()


# --- machine-wide changes, undone even after a crash -------------------------------------------
#
# A few tests must change the machine itself: remove QEMU handlers (a build without an
# emulator), put a CA in /etc/docker/certs.d (a registry trusted like dockerd trusts it), add an
# /etc/hosts line. Each change is written to a journal under $ARCHFLEET_LAB_DIR/undo *before* it
# is made; the fixture undoes it and deletes the journal; a session that finds the journal of a
# process that is gone (a test run killed mid-way) undoes it first.

UNDO_DIR = LAB_DIR / "undo"
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def machine_change(kind: str, **data):
    """Journal a machine-wide change of ``kind`` (see :func:`_undo`) for the block's duration:
    the block makes the change; on leaving it, whatever happened, it is undone."""
    UNDO_DIR.mkdir(parents=True, exist_ok=True)
    journal = UNDO_DIR / f"{os.getpid()}-{kind}-{uuid.uuid4().hex[:8]}.json"
    journal.write_text(json.dumps({"pid": os.getpid(), "kind": kind, "data": data}))
    try:
        yield
    finally:
        _undo(kind, data)
        journal.unlink(missing_ok=True)


def recover_machine_changes() -> list[str]:
    """Undo the journalled changes of test processes that no longer run; what was undone."""
    done = []
    for journal in sorted(UNDO_DIR.glob("*.json")) if UNDO_DIR.is_dir() else []:
        try:
            entry = json.loads(journal.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(entry.get("pid", 0))):
            continue  # another test session, still running
        _undo(entry["kind"], entry["data"])
        journal.unlink(missing_ok=True)
        done.append(f"{entry['kind']} {entry['data']}")
    return done


def _undo(kind: str, data: dict) -> None:
    if kind == "binfmt":
        restore_binfmt(data["handlers"])
    elif kind == "path":  # a file or directory a test put in place, and what it replaced
        path, saved = Path(data["path"]), data.get("saved")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if saved and os.path.lexists(saved):
            os.rename(saved, path)
    elif kind == "line":  # a line appended to a file (/etc/hosts), marked; the file rewritten in place
        with contextlib.suppress(FileNotFoundError), open(data["file"], "r+") as f:
            kept = [line for line in f.read().splitlines(keepends=True) if data["marker"] not in line]
            f.seek(0)
            f.write("".join(kept))
            f.truncate()
    elif kind == "user":
        subprocess.run(["userdel", data["name"]], capture_output=True)
    else:
        raise ValueError(f"unknown machine change {kind!r}")


def binfmt_handlers() -> dict[str, dict]:
    """Every QEMU binfmt_misc handler as the kernel shows it: name -> enabled, interpreter,
    flags, offset, magic, mask (hex)."""
    out = {}
    for entry in sorted(BINFMT.glob("qemu-*")):
        fields: dict = {"enabled": False}
        for line in entry.read_text().splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "enabled":
                fields["enabled"] = True
            elif key in ("interpreter", "offset", "magic", "mask"):
                fields[key] = value.strip()
            elif key == "flags:":
                fields["flags"] = value.strip()
        out[entry.name] = fields
    return out


def restore_binfmt(saved: dict[str, dict]) -> None:
    """Make the QEMU handlers exactly ``saved`` again: handlers added since are removed, handlers
    removed or changed are registered again as they were (magic, mask, interpreter, flags,
    enabled or not)."""
    now = binfmt_handlers()
    for name, fields in now.items():
        if saved.get(name) != fields:
            (BINFMT / name).write_text("-1")
    for name, fields in saved.items():
        if now.get(name) == fields:
            continue
        magic = "".join(f"\\x{fields['magic'][i:i + 2]}" for i in range(0, len(fields["magic"]), 2))
        mask = "".join(f"\\x{fields['mask'][i:i + 2]}" for i in range(0, len(fields.get("mask", "")), 2))
        (BINFMT / "register").write_text(
            f":{name}:M:{fields.get('offset', '0')}:{magic}:{mask}:{fields['interpreter']}:{fields.get('flags', '')}")
        if not fields["enabled"]:
            (BINFMT / name).write_text("0")
    assert binfmt_handlers() == saved, "the QEMU handlers could not be restored as they were"


@pytest.fixture
def emulators_removed(request, lab):
    """The QEMU handlers of ``request.param`` removed for one test: platforms separated by
    commas (``"linux/s390x"``), or ``"all"`` for every ``qemu-*`` handler. Use it through
    ``@pytest.mark.parametrize("emulators_removed", [...], indirect=True)``. Afterwards the
    handlers are exactly those that were there before (even after a crash: see
    :func:`machine_change`). Yields the names removed."""
    from archfleet.platforms import parse

    if os.geteuid() != 0:
        missing("removing QEMU handlers needs root")
    saved = binfmt_handlers()
    if request.param == "all":
        names = sorted(saved)
    else:
        names = [f"qemu-{parse(p).qemu_arch}" for p in request.param.split(",")]
    with machine_change("binfmt", handlers=saved):
        for name in names:
            if name in saved:
                (BINFMT / name).write_text("-1")
        assert not set(names) & set(binfmt_handlers())
        yield names


@contextlib.contextmanager
def placed(path: Path, content: bytes):
    """``path`` holds ``content`` (its directory made) while the block runs; afterwards the
    directories made are gone and what was there before is back, even after a crash."""
    top = path
    while not top.parent.exists():
        top = top.parent
    saved = None
    if os.path.lexists(top):
        saved = f"{top}.archfleet-test-saved-{os.getpid()}"
    with machine_change("path", path=str(top), saved=saved):
        if saved:
            os.rename(top, saved)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        yield path


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory) -> dict[str, str]:
    """The documentation's example plugin (docs/examples/fast_pool.py) as the package
    docs/plugins.md shows (entry point ``fast-pool``), installed for the archfleet processes a
    test starts, never into .venv: built into a directory of its own and put on their PYTHONPATH
    (entry points are found there). Returns the environment to pass to ``lab.archfleet(...,
    env=...)``."""
    src = tmp_path_factory.mktemp("fast-pool-src")
    shutil.copy(REPO / "docs" / "examples" / "fast_pool.py", src / "fast_pool.py")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "archfleet-fast-pool"\nversion = "0.1.0"\ndependencies = ["archfleet"]\n'
        '[project.entry-points.archfleet]\nfast-pool = "fast_pool"\n'
        '[tool.setuptools]\npy-modules = ["fast_pool"]\n')
    target = tmp_path_factory.mktemp("fast-pool")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                           str(target), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def htpasswd_auth(d: Path, user: str, password: str) -> str:
    """``d/htpasswd`` with ``user``'s bcrypt hash; returns the ``auth:`` section of a
    docker-registry (:func:`extra_registry`) that asks for it (basic auth)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import crypt  # deprecated, present through 3.12: bcrypt hashes through libxcrypt

        (d / "htpasswd").write_text(f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    return f"  htpasswd:\n    realm: archfleet-test\n    path: {d}/htpasswd\n"


def register_without_f(name: str) -> None:
    """Register QEMU handler ``name`` from qemu-user-static's own line with the fix-binary flag
    F taken out, as a distribution package without F does (use inside emulators_removed)."""
    conf = Path("/usr/lib/binfmt.d") / f"{name}.conf"
    fields = next(line for line in conf.read_text().splitlines() if line.startswith(":")).split(":")
    fields[-1] = fields[-1].replace("F", "")
    if (BINFMT / name).exists():
        (BINFMT / name).write_text("-1")
    (BINFMT / "register").write_text(":".join(fields))
    assert "F" not in binfmt_handlers()[name]["flags"]


def missing(reason: str):
    if IN_CI:
        pytest.fail(f"lab prerequisite missing in CI: {reason}")
    pytest.skip(reason)


class Lab:
    registry = REGISTRY
    base = BASE
    docker = "/usr/bin/docker"

    def archfleet(self, *args, check=False, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.run([sys.executable, "-m", "archfleet.cli", *args], capture_output=True, text=True,
                              env=full_env, timeout=timeout, cwd=cwd or REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"archfleet {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    def manifest(self, repo: str, ref: str) -> httpx.Response:
        """``ref`` (tag or digest) of ``repo`` in the lab registry (:func:`labtools.manifest`)."""
        from labtools import manifest

        return manifest(self.registry, repo, ref)

    def run_image(self, ref: str, platform: str) -> str:
        out = subprocess.run([self.docker, "run", "--rm", "--pull", "always", "--platform", platform, ref],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()


@pytest.fixture(scope="session")
def lab() -> Lab:
    if shutil.which("dockerd") is None or not os.path.exists("/usr/bin/docker"):
        missing("docker.io is not installed (run tests/lab/bootstrap.sh)")
    if subprocess.run(["/usr/bin/docker", "info"], capture_output=True).returncode != 0:
        missing("dockerd is not running (run tests/lab/bootstrap.sh)")
    try:
        httpx.get(f"http://{REGISTRY}/v2/", timeout=3).raise_for_status()
    except httpx.HTTPError:
        missing(f"no registry at {REGISTRY} (run tests/lab/bootstrap.sh)")
    if Lab().manifest("archfleet/busybox", "latest").status_code != 200:
        missing(f"base image {BASE} missing (run tests/lab/bootstrap.sh)")
    absent = [h for h in LAB_HANDLERS if not (BINFMT / h).exists()]
    if absent:
        missing(f"QEMU binfmt handlers not registered: {', '.join(absent)} (archfleet binfmt --install all)")
    return Lab()


@pytest.fixture(scope="session")
def cli() -> Lab:
    """The CLI alone, for input it refuses before anything is probed: needs no engine, registry
    or handlers, so these tests run (and fail) on any machine, lab or not."""
    return Lab()


# the emulated platforms the integration tests build: arm64, arm/v7, s390x, ppc64le
LAB_HANDLERS = ("qemu-aarch64", "qemu-arm", "qemu-s390x", "qemu-ppc64le")


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.integration)


LAB_NODES = REPO / "tests" / "lab" / "nodes.py"


class Nodes:
    """The three-node lab: namespaces n1..n3 with sshd and dockerd, registry at 10.231.0.1:5000."""

    registry = "10.231.0.1:5000"
    base = "10.231.0.1:5000/archfleet/busybox:latest"

    def __init__(self, toml: Path):
        self.toml = toml

    def fault(self, node: str, what: str) -> None:
        subprocess.run([sys.executable, str(LAB_NODES), "fault", node, what], check=True, capture_output=True)

    def clear_leases(self) -> None:
        """After a fault is undone: a build the fault cut off could not drop its lease (its run
        could not reach the node), so the slot reads busy until the lease's heartbeat is 75 s old.
        Right for a real lab; a test that restores the node also clears that, so the next test
        starts from idle nodes. A node user whose shared lease root failed the ownership check
        keeps its leases in its own ~/.cache/archfleet/leases: those go too."""
        from archfleet.leases import shared_root

        shutil.rmtree(shared_root(), ignore_errors=True)
        for home in (self.toml.parent / "nodes").glob("*/home"):
            shutil.rmtree(home / ".cache" / "archfleet" / "leases", ignore_errors=True)

    def args(self, *extra) -> list[str]:
        """Flags every lab build needs: the nodes file and the bridge registry as insecure."""
        return ["--nodes", str(self.toml), "--insecure-registry", self.registry, *extra]


@pytest.fixture(scope="session")
def nodes(lab) -> Nodes:
    if os.geteuid() != 0 or shutil.which("sshd") is None and not os.path.exists("/usr/sbin/sshd"):
        missing("the node lab needs root and openssh-server")
    proc = subprocess.run([sys.executable, str(LAB_NODES), "up", "3"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"lab nodes did not come up: {proc.stderr[-2000:]}")
    yield Nodes(Path(proc.stdout.strip()))
    subprocess.run([sys.executable, str(LAB_NODES), "down"], capture_output=True)


@pytest.fixture(scope="session")
def engine_nodes(lab) -> Nodes:
    """One lab node of each engine kind (tests/lab/nodes.py up --engines): n1 (rootful dockerd),
    n4 (rootless podman), n5 (rootless dockerd), in engines.toml; the docker lab n1..n3 as
    usual beside them (nodes.toml)."""
    if os.geteuid() != 0 or shutil.which("sshd") is None and not os.path.exists("/usr/sbin/sshd"):
        missing("the node lab needs root and openssh-server")
    for tool in ("podman", "rootlesskit", "newuidmap", "slirp4netns"):
        if shutil.which(tool) is None:
            missing(f"the engines lab needs {tool} (tests/lab/bootstrap.sh installs it)")
    proc = subprocess.run([sys.executable, str(LAB_NODES), "up", "3", "--engines"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"lab nodes did not come up: {proc.stderr[-2000:]}")
    yield Nodes(Path(proc.stdout.split()[-1]))
    subprocess.run([sys.executable, str(LAB_NODES), "down"], capture_output=True)


@pytest.fixture(scope="module")
def armvm(lab):
    """The arm64 VM node, booted for the tests of one module and shut down after them (an idle
    TCG guest still costs CPU); its image is built once and cached."""
    # (in CI the VM script installs qemu-system itself, so only its absence outside CI skips)
    if os.geteuid() != 0 or (not shutil.which("qemu-system-aarch64") and not IN_CI):
        missing("the arm64 VM needs root and qemu-system-arm")
    sys.path.insert(0, str(REPO / "tests" / "lab"))
    try:
        import armvm as vm
    finally:
        sys.path.pop(0)
    started = time.time()
    try:
        toml = vm.up()
    except SystemExit as exc:
        pytest.fail(f"arm64 VM did not come up: {exc}")
    boot = time.time() - started
    yield type("ArmVM", (), {"toml": toml, "boot_seconds": boot, "name": vm.NAME})()
    vm.down()


FIGURES: list[str] = []  # measurements tests want in the log (pytest captures their output)


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
