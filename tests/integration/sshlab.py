"""A throwaway sshd on a loopback port, for tests of the SSH transport (needs root and
openssh-server; the login shells under test, fish and tcsh, come from tests/lab/bootstrap.sh).

:func:`start` makes a directory with a host key, a client key and an ``sshd_config``, starts
``sshd`` listening on 127.0.0.1:PORT only, and returns an :class:`Sshd`. :func:`add_user`
creates a throwaway system user with a given login shell whose key is the client key (and,
optionally, in the ``docker`` group, so builds can run as it); :func:`remove_user` removes it.
Nothing else on the machine is changed.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import attrs

SSHD = "/usr/sbin/sshd"


@attrs.frozen
class Sshd:
    dir: Path
    port: int
    pid: int
    host_key_pub: str  # "ssh-ed25519 AAAA..."
    key: Path  # client private key (authorized for every user made by add_user)

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key_pub}\n"

    def stop(self) -> None:
        try:
            os.kill(self.pid, 15)
        except ProcessLookupError:
            pass


def available() -> str | None:
    """Why the lab cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (throwaway users and sshd)"
    if not os.path.exists(SSHD):
        return "openssh-server is not installed"
    return None


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def start(d: Path, port: int, *, extra: str = "") -> Sshd:
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    host_pub = _keygen(d / "hostkey", "archfleet-test-host")
    _keygen(d / "key", "archfleet-test-client")
    (d / "authorized_keys").write_text((d / "key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o644)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
        f"MaxSessions 10\n{extra}")
    # sshd (and so every session) runs in a private mount namespace whose /dev/null is a fresh
    # 0666 node: this machine has been seen with /dev/null chmod'ed 0644 by something else,
    # which breaks every "2>/dev/null" of a non-root user, and the transport is what is tested.
    null = d / "null"
    if not null.exists():
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(null, 0o666)
    subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    'mount --bind "$1" /dev/null && exec "$2" -f "$3" -E "$4"', "sh", str(null), SSHD,
                    str(d / "sshd_config"), str(d / "sshd.log")], check=True)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise RuntimeError(f"sshd on 127.0.0.1:{port} did not start: {(d / 'sshd.log').read_text()[-500:]}")
    # sshd listens before it writes its pid file: on a busy machine the file comes a moment later
    for _ in range(100):
        if (d / "sshd.pid").exists() and (d / "sshd.pid").read_text().strip():
            break
        time.sleep(0.1)
    pid = int((d / "sshd.pid").read_text())
    return Sshd(d, port, pid, host_pub, d / "key")


def add_user(prefix: str, shell: str, home_parent: Path, *, docker: bool = False) -> str:
    """A throwaway system user (login shell ``shell``, home under ``home_parent``); its name."""
    name = f"{prefix}{secrets.token_hex(3)}"[:31]
    home = home_parent / name
    cmd = ["useradd", "--system", "--no-create-home", "--home-dir", str(home), "--shell", shell]
    if docker:
        cmd += ["--groups", "docker"]
    subprocess.run([*cmd, name], check=True, capture_output=True)
    # sshd without PAM refuses accounts whose password field starts with "!" (locked), which is
    # what useradd writes; "*" is "no password" and lets key logins in.
    subprocess.run(["usermod", "-p", "*", name], check=True)
    home.mkdir(parents=True)
    pw = pwd.getpwnam(name)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    return name


def remove_user(name: str) -> None:
    home = Path(pwd.getpwnam(name).pw_dir) if _exists(name) else None
    if home is not None:
        for pid in processes_of(pwd.getpwnam(name).pw_uid):  # what a test left running as it
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    subprocess.run(["userdel", name], capture_output=True)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def processes_of(uid: int) -> list[int]:
    """Pids of the processes running as ``uid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def cmdlines() -> dict[int, bytes]:
    """Every process's argv as /proc shows it (NUL-separated), by pid."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                pass
    return out
