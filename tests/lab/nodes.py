#!/usr/bin/env python3
"""Lab nodes: network namespaces on a bridge, each with its own sshd and its own dockerd.

    python tests/lab/nodes.py up [N]      # N nodes (default 3), prints the nodes.toml path
    python tests/lab/nodes.py down        # stop everything, remove namespaces and links
    python tests/lab/nodes.py status
    python tests/lab/nodes.py fault NODE sshd-stop|sshd-kill|sshd-start|dockerd-stop|dockerd-kill|dockerd-start|
                                         link-down|link-up

Addresses: bridge ``afbr0`` is 10.231.0.1/24 on this machine; node ``nI`` is 10.231.0.(10+I) in
namespace ``af-nI``. The registry is served at 10.231.0.1:5000 too (a second registry process
on the same storage as the loopback one), and every node's dockerd trusts it as insecure.
Each node logs in as its own user ``afnI`` (home under the lab dir, member of group docker), so
nodes share no cache. All traffic stays on this machine, between namespaces we created.
Needs root. Idempotent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

LAB = Path(os.environ.get("ARCHFLEET_LAB_DIR", "/var/tmp/archfleet-lab"))
BRIDGE = "afbr0"
# Routed nowhere: with the bridge gone (lab down), a test or a hand-run command aimed at a lab
# address fails at once instead of leaving through the default route for someone else's network.
GUARD_NET = "10.231.0.0/16"
NET = "10.231.0"
HOST_IP = f"{NET}.1"
REGISTRY = f"{HOST_IP}:5000"
NODES_DIR = LAB / "nodes"
KEY = LAB / "id_ed25519"
KNOWN_HOSTS = LAB / "known_hosts"
NODES_TOML = LAB / "nodes.toml"


def sh(*argv, check=True, quiet=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=check, text=True,
                          stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE if quiet else None, **kw)


def ns(name: str) -> str:
    return f"af-{name}"


def ip_of(index: int) -> str:
    return f"{NET}.{10 + index}"


def node_dir(name: str) -> Path:
    return NODES_DIR / name


def sock(name: str) -> str:
    return f"/var/run/{ns(name)}/docker.sock"


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _kill(path: Path, sig=signal.SIGTERM, wait: float = 20.0) -> None:
    pid = _pid(path)
    if pid is None:
        return
    os.kill(pid, sig)
    deadline = time.time() + wait
    while time.time() < deadline and _pid(path) == pid:
        time.sleep(0.1)
    if _pid(path) == pid:
        os.kill(pid, signal.SIGKILL)


def _wait(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"lab: {what} did not come up in {timeout:.0f}s")


# --- network ---------------------------------------------------------------------------------

def guard() -> None:
    sh("ip", "route", "replace", "blackhole", GUARD_NET)


def bridge_up() -> None:
    guard()
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    if HOST_IP not in sh("ip", "-4", "addr", "show", BRIDGE).stdout:
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def netns_up(name: str, index: int) -> None:
    n, veth = ns(name), f"afv-{name}"
    if n not in sh("ip", "netns", "list").stdout.split():
        sh("ip", "netns", "add", n)
    if sh("ip", "link", "show", veth, check=False).returncode != 0:
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n)
        sh("ip", "link", "set", veth, "master", BRIDGE)
    sh("ip", "link", "set", veth, "up")
    sh("ip", "netns", "exec", n, "ip", "link", "set", "lo", "up")
    if ip_of(index) not in sh("ip", "netns", "exec", n, "ip", "-4", "addr", "show", "eth0").stdout:
        sh("ip", "netns", "exec", n, "ip", "addr", "add", f"{ip_of(index)}/24", "dev", "eth0")
    sh("ip", "netns", "exec", n, "ip", "link", "set", "eth0", "up")
    sh("ip", "netns", "exec", n, "ip", "route", "replace", "default", "via", HOST_IP)


# --- registry on the bridge address -----------------------------------------------------------

def registry_up() -> None:
    import urllib.request

    def answers() -> bool:
        try:
            return urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2).status == 200
        except OSError:
            return False

    if answers():
        return
    cfg = LAB / "registry-lab.yml"
    (LAB / "registry").mkdir(parents=True, exist_ok=True)
    cfg.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {LAB}/registry
  delete:
    enabled: true
http:
  addr: {REGISTRY}
""")
    log = open(LAB / "registry-lab.log", "a")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log, start_new_session=True)
    (LAB / "registry-lab.pid").write_text(str(proc.pid))
    _wait(answers, f"registry on {REGISTRY}", 30)


# --- per node ---------------------------------------------------------------------------------

def user_up(name: str) -> str:
    user = f"af{name}"
    home = node_dir(name) / "home"
    if sh("id", user, check=False).returncode != 0:
        node_dir(name).mkdir(parents=True, exist_ok=True)
        sh("useradd", "--home-dir", home, "--create-home", "--shell", "/bin/sh", "--groups", "docker", user)
    # "*": no password login, but not "locked" ("!"), which sshd without PAM refuses outright.
    sh("usermod", "-p", "*", user)
    home.mkdir(parents=True, exist_ok=True)
    shutil.chown(home, user, user)
    return user


def sshd_config(name: str, index: int) -> Path:
    d = node_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    hostkey = d / "ssh_host_ed25519_key"
    if not hostkey.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"archfleet-lab-{name}", "-f", hostkey)
    cfg = d / "sshd_config"
    cfg.write_text(f"""ListenAddress {ip_of(index)}
Port 22
HostKey {hostkey}
PidFile {d}/sshd.pid
AuthorizedKeysFile {LAB}/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowStreamLocalForwarding yes
AllowTcpForwarding yes
ClientAliveInterval 5
LogLevel ERROR
""")
    return cfg


def sshd_start(name: str, index: int | None = None) -> None:
    index = index if index is not None else int(name.lstrip("n"))
    d = node_dir(name)
    if _pid(d / "sshd.pid"):
        return
    Path("/run/sshd").mkdir(exist_ok=True)
    cfg = sshd_config(name, index)
    sh("ip", "netns", "exec", ns(name), "/usr/sbin/sshd", "-f", cfg, "-E", d / "sshd.log")
    _wait(lambda: _pid(d / "sshd.pid") is not None, f"sshd on {name}", 15)


def sshd_stop(name: str) -> None:
    """Stop the listener: new connections fail, open sessions go on (like `systemctl stop ssh`)."""
    _kill(node_dir(name) / "sshd.pid")


def _netns_pids(name: str, comm: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns(name), check=False).stdout.split()
    pids = []
    for pid in out:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def _sigkill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def sshd_kill(name: str) -> None:
    """Kill the listener and every session: open connections drop at once."""
    sshd_stop(name)
    _sigkill(_netns_pids(name, "sshd"))


def dockerd_kill(name: str) -> None:
    """SIGKILL the node's dockerd (and so its builds), like a crash."""
    pid = _pid(Path(f"/var/run/{ns(name)}/docker.pid"))
    if pid:
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline and _pid(Path(f"/var/run/{ns(name)}/docker.pid")) == pid:
            time.sleep(0.1)
    _sigkill(_netns_pids(name, "containerd"))


def dockerd_start(name: str, index: int | None = None) -> None:
    index = index if index is not None else int(name.lstrip("n"))
    d = node_dir(name)
    pidfile = Path(f"/var/run/{ns(name)}/docker.pid")
    if _pid(pidfile):
        return
    Path(f"/var/run/{ns(name)}").mkdir(parents=True, exist_ok=True)
    pidfile.unlink(missing_ok=True)  # left by a killed daemon
    log = open(d / "dockerd.log", "a")
    # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then fails on cgroups.
    subprocess.Popen([
        "nsenter", f"--net=/var/run/netns/{ns(name)}", "dockerd",
        "--data-root", str(d / "docker"), "--exec-root", f"/var/run/{ns(name)}",
        "-H", f"unix://{sock(name)}", "--pidfile", str(pidfile), "--bip", f"172.31.{index}.1/24",
        # "http://" too: BuildKit in dockerd 20.10 ignores a bare insecure-registry entry when it
        # resolves FROM images (docker/cli#3186, docker/buildx#1642); the prefixed form works.
        "--insecure-registry", REGISTRY, "--insecure-registry", f"http://{REGISTRY}", "--log-level", "warn",
    ], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    _wait(lambda: sh("/usr/bin/docker", "-H", f"unix://{sock(name)}", "version", check=False).returncode == 0,
          f"dockerd on {name}", 60)


def dockerd_stop(name: str) -> None:
    _kill(Path(f"/var/run/{ns(name)}/docker.pid"), wait=30)


def link(name: str, state: str) -> None:
    sh("ip", "link", "set", f"afv-{name}", state)


# --- whole lab ------------------------------------------------------------------------------------

def names(count: int) -> list[str]:
    return [f"n{i}" for i in range(1, count + 1)]


def ensure_key() -> None:
    LAB.mkdir(parents=True, exist_ok=True)
    if not KEY.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "archfleet-lab", "-f", KEY)


def up(count: int = 3) -> Path:
    if os.geteuid() != 0:
        raise SystemExit("lab: needs root")
    ensure_key()
    (LAB / "authorized_keys").write_text(Path(f"{KEY}.pub").read_text())
    bridge_up()
    registry_up()
    known, toml = [], [
        "# archfleet lab nodes (tests/lab/nodes.py): network namespaces on bridge afbr0",
        "[nodes.local]", "enabled = true", "",
    ]
    for i, name in enumerate(names(count), 1):
        user = user_up(name)
        netns_up(name, i)
        sshd_start(name, i)
        dockerd_start(name, i)
        pub = Path(node_dir(name) / "ssh_host_ed25519_key.pub").read_text().split()
        known.append(f"{ip_of(i)} {pub[0]} {pub[1]}")
        toml += [f"[nodes.{name}]", f'host = "{ip_of(i)}"', f'user = "{user}"', f'identity = "{KEY}"',
                 f'known_hosts = "{KNOWN_HOSTS}"', f'docker_host = "unix://{sock(name)}"',
                 'engine_cli = "/usr/bin/docker"', "max_builds = 2", ""]
    KNOWN_HOSTS.write_text("\n".join(known) + "\n")
    NODES_TOML.write_text("\n".join(toml))
    return NODES_TOML


def down() -> None:
    out = sh("ip", "netns", "list", check=False).stdout
    present = sorted({w[3:] for w in out.split() if w.startswith("af-n")})
    for name in present:
        sshd_stop(name)
        dockerd_stop(name)
        sh("ip", "link", "del", f"afv-{name}", check=False)
        sh("ip", "netns", "del", ns(name), check=False)
    _kill(LAB / "registry-lab.pid")
    sh("ip", "link", "del", BRIDGE, check=False)
    guard()  # stays: lab addresses lead nowhere while the lab is down


def status() -> str:
    lines = []
    for d in sorted(NODES_DIR.glob("n*")) if NODES_DIR.exists() else []:
        name = d.name
        lines.append(f"{name}: sshd={'up' if _pid(d / 'sshd.pid') else 'down'} "
                     f"dockerd={'up' if _pid(Path(f'/var/run/{ns(name)}/docker.pid')) else 'down'}")
    return "\n".join(lines) or "no lab nodes"


FAULTS = {
    "sshd-stop": sshd_stop, "sshd-kill": sshd_kill, "sshd-start": sshd_start, "dockerd-stop": dockerd_stop,
    "dockerd-kill": dockerd_kill,
    "dockerd-start": dockerd_start, "link-down": lambda n: link(n, "down"), "link-up": lambda n: link(n, "up"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "fault"):
        print(__doc__)
        return 2
    if argv[0] == "up":
        print(up(int(argv[1]) if len(argv) > 1 else 3))
    elif argv[0] == "down":
        down()
    elif argv[0] == "status":
        print(status())
    else:
        FAULTS[argv[2]](argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
