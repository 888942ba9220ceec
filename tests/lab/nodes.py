#!/usr/bin/env python3
"""Lab nodes: network namespaces on a bridge, each with its own sshd and its own engine.

    python tests/lab/nodes.py up [N] [--engines]  # N docker nodes (1-3, default 3), prints the nodes.toml path;
                                                  # --engines: also n4 (podman) and n5 (rootless docker),
                                                  # and prints the engines.toml path after it
    python tests/lab/nodes.py down                # stop everything, remove namespaces and links
    python tests/lab/nodes.py status
    python tests/lab/nodes.py fault NODE sshd-stop|sshd-kill|sshd-start|dockerd-stop|dockerd-kill|dockerd-start|
                                         podman-kill|link-down|link-up

Addresses: bridge ``afbr0`` is 10.231.0.1/24 on this machine; node ``nI`` is 10.231.0.(10+I) in
namespace ``af-nI``. The registry is served at 10.231.0.1:5000 too (a second registry process
on the same storage as the loopback one), and every node's engine trusts it as insecure.
Each node logs in as its own user ``afnI`` (home under the lab dir), so nodes share no cache.
All traffic stays on this machine, between namespaces we created. Needs root. Idempotent.

The engines (``nodes.toml`` lists n1..nN; ``engines.toml`` lists n1, n4 and n5, one node of each
kind):

- n1..n3: a rootful dockerd of their own (``/var/run/af-nI/docker.sock``); the user is in group
  docker.
- n4: **podman**, rootless, as its user (no daemon; its own storage in its home,
  ``~/.local/share/containers``, overlay; ``~/.config/containers/registries.conf`` lists the lab
  registry as insecure; cgroupfs, file events: there is no systemd user session).
- n5: **rootless dockerd** (``dockerd-rootless.sh`` from Debian's docker.io, RootlessKit and
  slirp4netns), run as its user, socket ``/run/user/UID/docker.sock``; the user is not in group
  docker.

Rootless engines give their containers a network through slirp4netns, which opens
``/dev/net/tun`` inside the user's namespace. This machine's node is ``crw-------`` (root only,
where distributions ship 0666), so n4's and n5's processes run in a private mount namespace
whose ``/dev/net/tun`` is a 0666 node of the lab's (the machine's own is left as it is).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
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
ENGINES_TOML = LAB / "engines.toml"
PODMAN_NODE, ROOTLESS_NODE = "n4", "n5"
ROOTLESS_PATH = "/usr/share/docker.io/contrib:/usr/sbin:/usr/bin:/sbin:/bin"  # dockerd-rootless.sh is there


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

def user_up(name: str, docker_group: bool = True) -> str:
    """The node's login user ``afNAME`` (made once; subordinate ids come with useradd, which
    rootless engines need), in group docker when its node's dockerd is root's."""
    user = f"af{name}"
    home = node_dir(name) / "home"
    if sh("id", user, check=False).returncode != 0:
        node_dir(name).mkdir(parents=True, exist_ok=True)
        sh("useradd", "--home-dir", home, "--create-home", "--shell", "/bin/sh",
           *(["--groups", "docker"] if docker_group else []), user)
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
    if name in (PODMAN_NODE, ROOTLESS_NODE):
        sh(*in_node(name), "/usr/sbin/sshd", "-f", cfg, "-E", d / "sshd.log")
    else:
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
    if name == ROOTLESS_NODE:
        return rootless_dockerd_kill(name)
    pid = _pid(Path(f"/var/run/{ns(name)}/docker.pid"))
    if pid:
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline and _pid(Path(f"/var/run/{ns(name)}/docker.pid")) == pid:
            time.sleep(0.1)
    _sigkill(_netns_pids(name, "containerd"))


def tun_node(name: str) -> Path:
    """A ``/dev/net/tun`` for the node's private mount namespace: 0666, as distributions ship it."""
    path = node_dir(name) / "tun"
    if not path.exists():
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    os.chmod(path, 0o666)
    return path


def in_node(name: str) -> list[str]:
    """The argv prefix that runs a command in node ``name``'s network namespace and, for n4 and
    n5, in a private mount namespace whose /dev/net/tun is :func:`tun_node` (module doc)."""
    prefix = ["nsenter", f"--net=/var/run/netns/{ns(name)}"]
    if name not in (PODMAN_NODE, ROOTLESS_NODE):
        return prefix
    return [*prefix, "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /dev/net/tun && exec "$@"', str(tun_node(name))]


def uid_of(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def runtime_dir(user: str) -> Path:
    """The user's XDG_RUNTIME_DIR, as systemd-logind would make it (the lab has no logind)."""
    path = Path(f"/run/user/{uid_of(user)}")
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, user, user)
    os.chmod(path, 0o700)
    return path


def as_user(user: str, home: Path, *extra_env: str) -> list[str]:
    """The argv prefix that runs a command as ``user`` with a clean login environment."""
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "env", "-i", f"HOME={home}",
            f"USER={user}", f"LOGNAME={user}", *extra_env]


def podman_up(name: str) -> None:
    """n4's podman configuration, in its user's home: the lab registries as insecure, overlay
    storage in the home, cgroupfs and file events (no systemd user session here)."""
    user, home = f"af{name}", node_dir(name) / "home"
    conf = home / ".config" / "containers"
    conf.mkdir(parents=True, exist_ok=True)
    # every registry on the lab bridge's address, whatever its port (a test's own registry too)
    (conf / "registries.conf").write_text(f'[[registry]]\nlocation = "{HOST_IP}"\ninsecure = true\n')
    (conf / "storage.conf").write_text('[storage]\ndriver = "overlay"\n')
    (conf / "containers.conf").write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    for path in (home / ".config", conf, *conf.iterdir()):
        shutil.chown(path, user, user)
    tun_node(name)


def podman_kill(name: str) -> None:
    """SIGKILL every podman (and buildah) process of the node's user, like an OOM kill."""
    uid = uid_of(f"af{name}")
    _sigkill([pid for pid, comm in _user_processes(uid) if comm.startswith(("podman", "buildah", "conmon"))])


def _user_processes(uid: int) -> list[tuple[int, str]]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid == uid:
                out.append((int(proc.name), (proc / "comm").read_text().strip()))
        except OSError:
            pass
    return out


def rootless_pidfile(name: str) -> Path:
    return node_dir(name) / "rootlesskit.pid"


def rootless_sock(name: str) -> str:
    return f"/run/user/{uid_of(f'af{name}')}/docker.sock"


def rootless_dockerd_start(name: str) -> None:
    """n5's dockerd, rootless, as its user: dockerd-rootless.sh (RootlessKit + slirp4netns)."""
    user, home, d = f"af{name}", node_dir(name) / "home", node_dir(name)
    if _pid(rootless_pidfile(name)):
        return
    run = runtime_dir(user)
    log = open(d / "dockerd.log", "a")
    # nsenter, unshare, sh, setpriv, env and dockerd-rootless.sh all exec in place: the pid is
    # RootlessKit's, whose children are the namespaced dockerd and slirp4netns
    proc = subprocess.Popen([
        *in_node(name), *as_user(user, home, f"XDG_RUNTIME_DIR={run}", f"PATH={ROOTLESS_PATH}"),
        "dockerd-rootless.sh", "--insecure-registry", REGISTRY, "--insecure-registry", f"http://{REGISTRY}",
        "--log-level", "warn",
    ], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, cwd="/")
    rootless_pidfile(name).write_text(str(proc.pid))
    _wait(lambda: sh("/usr/bin/docker", "-H", f"unix://{rootless_sock(name)}", "version", check=False).returncode == 0,
          f"rootless dockerd on {name}", 90)


def rootless_dockerd_stop(name: str) -> None:
    _kill(rootless_pidfile(name), wait=30)


def rootless_dockerd_kill(name: str) -> None:
    """SIGKILL the node's rootless dockerd (its pid file is in the runtime dir), like a crash."""
    pid = _pid(Path(f"/run/user/{uid_of(f'af{name}')}/docker.pid"))
    if pid:
        os.kill(pid, signal.SIGKILL)
    _kill(rootless_pidfile(name), sig=signal.SIGKILL, wait=10)


def dockerd_start(name: str, index: int | None = None) -> None:
    if name == ROOTLESS_NODE:
        return rootless_dockerd_start(name)
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
    if name == ROOTLESS_NODE:
        return rootless_dockerd_stop(name)
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


def _node_toml(name: str, index: int, user: str) -> list[str]:
    lines = [f"[nodes.{name}]", f'host = "{ip_of(index)}"', f'user = "{user}"', f'identity = "{KEY}"',
             f'known_hosts = "{KNOWN_HOSTS}"']
    if name == PODMAN_NODE:
        lines += ['engine = "podman"', 'engine_cli = "/usr/bin/podman"']
    elif name == ROOTLESS_NODE:
        lines += [f'docker_host = "unix://{rootless_sock(name)}"', 'engine_cli = "/usr/bin/docker"']
    else:
        lines += [f'docker_host = "unix://{sock(name)}"', 'engine_cli = "/usr/bin/docker"']
    return lines + ["max_builds = 2", ""]


def up(count: int = 3, engines: bool = False) -> Path:
    """The lab with ``count`` docker nodes (``nodes.toml``) and, with ``engines``, the podman
    node n4 and the rootless docker node n5 (``engines.toml``: n1, n4, n5)."""
    if os.geteuid() != 0:
        raise SystemExit("lab: needs root")
    if not 1 <= count <= 3:
        raise SystemExit("lab: 1 to 3 docker nodes (n4 and n5 are the podman and rootless docker nodes: --engines)")
    ensure_key()
    (LAB / "authorized_keys").write_text(Path(f"{KEY}.pub").read_text())
    bridge_up()
    registry_up()
    known, toml = [], [
        "# archfleet lab nodes (tests/lab/nodes.py): network namespaces on bridge afbr0",
        "[nodes.local]", "enabled = true", "",
    ]
    entries: dict[str, list[str]] = {}
    wanted = [(i, name) for i, name in enumerate(names(count), 1)]
    if engines:
        wanted += [(int(n[1:]), n) for n in (PODMAN_NODE, ROOTLESS_NODE)]
    for i, name in wanted:
        user = user_up(name, docker_group=name not in (PODMAN_NODE, ROOTLESS_NODE))
        netns_up(name, i)
        if name == PODMAN_NODE:
            podman_up(name)
        sshd_start(name, i)
        if name != PODMAN_NODE:
            dockerd_start(name, i)
        entries[name] = _node_toml(name, i, user)
    for d in sorted(NODES_DIR.glob("n*")):  # every node up, so one known_hosts serves both files
        pub = d / "ssh_host_ed25519_key.pub"
        if pub.exists() and d.name[1:].isdigit() and _pid(d / "sshd.pid"):
            key = pub.read_text().split()
            known.append(f"{ip_of(int(d.name[1:]))} {key[0]} {key[1]}")
    KNOWN_HOSTS.write_text("\n".join(known) + "\n")
    NODES_TOML.write_text("\n".join(toml + [line for name in names(count) for line in entries[name]]))
    if engines:
        ENGINES_TOML.write_text("\n".join(
            ["# archfleet lab: one node of each engine kind (tests/lab/nodes.py up --engines)",
             "[nodes.local]", "enabled = true", ""]
            + [line for name in ("n1", PODMAN_NODE, ROOTLESS_NODE) for line in
               entries.get(name) or _node_toml(name, int(name[1:]), f"af{name}")]))
        os.chmod(ENGINES_TOML, 0o644)
    return NODES_TOML


def down() -> None:
    out = sh("ip", "netns", "list", check=False).stdout
    present = sorted({w[3:] for w in out.split() if w.startswith("af-n")})
    for name in present:
        sshd_stop(name)
        dockerd_stop(name)
        if name in (PODMAN_NODE, ROOTLESS_NODE):
            _stop_user(f"af{name}")  # podman's pause process, slirp4netns, what a cut session left
        sh("ip", "link", "del", f"afv-{name}", check=False)
        sh("ip", "netns", "del", ns(name), check=False)
    _kill(LAB / "registry-lab.pid")
    sh("ip", "link", "del", BRIDGE, check=False)
    guard()  # stays: lab addresses lead nowhere while the lab is down


def _stop_user(user: str) -> None:
    """End what the lab's rootless user still runs (the lab made the user; nothing else is its)."""
    try:
        uid = uid_of(user)
    except KeyError:
        return
    _sigkill([pid for pid, _ in _user_processes(uid)])


def status() -> str:
    lines = []
    for d in sorted(NODES_DIR.glob("n*")) if NODES_DIR.exists() else []:
        name = d.name
        if name == PODMAN_NODE:
            engine = "podman (no daemon)"
        elif name == ROOTLESS_NODE:
            engine = f"rootless dockerd={'up' if _pid(rootless_pidfile(name)) else 'down'}"
        else:
            engine = f"dockerd={'up' if _pid(Path(f'/var/run/{ns(name)}/docker.pid')) else 'down'}"
        lines.append(f"{name}: sshd={'up' if _pid(d / 'sshd.pid') else 'down'} {engine}")
    return "\n".join(lines) or "no lab nodes"


FAULTS = {
    "sshd-stop": sshd_stop, "sshd-kill": sshd_kill, "sshd-start": sshd_start, "dockerd-stop": dockerd_stop,
    "dockerd-kill": dockerd_kill,
    "dockerd-start": dockerd_start, "podman-kill": podman_kill,
    "link-down": lambda n: link(n, "down"), "link-up": lambda n: link(n, "up"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "fault"):
        print(__doc__)
        return 2
    if argv[0] == "up":
        engines = "--engines" in argv
        rest = [a for a in argv[1:] if a != "--engines"]
        print(up(int(rest[0]) if rest else 3, engines=engines))
        if engines:
            print(ENGINES_TOML)
    elif argv[0] == "down":
        down()
    elif argv[0] == "status":
        print(status())
    else:
        FAULTS[argv[2]](argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
