"""Shared fixtures. Integration tests need the lab (tests/lab/bootstrap.sh): dockerd, a registry,
binfmt handlers and the multi-arch base image. Without it they skip, except under CI=true where
a missing prerequisite is a failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
REGISTRY = os.environ.get("ARCHFLEET_REGISTRY", "127.0.0.1:5000")
BASE = os.environ.get("ARCHFLEET_BASE", f"{REGISTRY}/archfleet/busybox:latest")
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config):
    """Every test session starts from an empty build history (as CI's fresh machine does), so
    what the planner learned from earlier runs on this machine cannot make a test pass here and
    fail there. ARCHFLEET_HISTORY set by the caller wins. Each test also gets its own (see
    ``own_cache``)."""
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
        accept = ", ".join([
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ])
        return httpx.get(f"http://{self.registry}/v2/{repo}/manifests/{ref}", headers={"Accept": accept})

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
    if not os.path.exists("/proc/sys/fs/binfmt_misc/qemu-aarch64"):
        missing("QEMU binfmt handlers not registered (archfleet binfmt --install all)")
    return Lab()


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


@pytest.fixture(scope="module")
def armvm(lab):
    """The arm64 VM node, booted for the tests of one module and shut down after them (an idle
    TCG guest still costs CPU); its image is built once and cached."""
    if os.geteuid() != 0 or not shutil.which("qemu-system-aarch64") and not IN_CI:
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
