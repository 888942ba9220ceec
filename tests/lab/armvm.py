#!/usr/bin/env python3
"""A real arm64 node: a Debian arm64 VM under full-system emulation, reached over SSH.

    python tests/lab/armvm.py build      # make the disk image (cached; ~5-10 min the first time)
    python tests/lab/armvm.py up         # build if needed, boot (~2 min), print the nodes.toml path
    python tests/lab/armvm.py down

The image: debootstrap arm64 (minbase + systemd, openssh-server, docker.io, socat), the kernel
and its modules from Debian's linux-image package (unpacked here, never run under qemu-user),
a hand-made initramfs (busybox-static and the virtio/ext4 modules; mkinitramfs under qemu-user
takes too long), an ext4 disk image. Cached under ~/.cache/archfleet-lab/armvm-<key>, the key
being a hash of everything that goes in, so a changed recipe builds a new image. Each boot runs
on a qcow2 overlay, so the cached image is never modified.

Inside the guest the host's loopback is 10.0.2.2 (QEMU user networking); a socat unit forwards
the guest's 127.0.0.1:5000 there, so the lab registry has the same name on the coordinator and
on the VM. SSH: 127.0.0.1:2222 with the VM's own host key in the lab known_hosts.
The package mirror is read from this machine's apt sources at run time, never written down.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nodes as lab  # noqa: E402  (the lab's key, known_hosts and paths)

RECIPE_VERSION = "6"
SUITE = "bookworm"
PACKAGES = ["systemd-sysv", "openssh-server", "docker.io", "socat", "iproute2", "ifupdown", "kmod",
            "ca-certificates", "iptables"]
INITRD_MODULES = ["crc32c_generic", "crc16", "mbcache", "jbd2", "ext4", "virtio_pci_legacy_dev",
                  "virtio_pci_modern_dev", "virtio_pci", "virtio_mmio", "virtio_blk", "failover", "net_failover",
                  "virtio_net"]
SSH_PORT = int(os.environ.get("ARCHFLEET_ARMVM_PORT", "2222"))
NAME = "armvm"
CACHE_ROOT = Path(os.environ.get("ARCHFLEET_ARMVM_CACHE", Path.home() / ".cache" / "archfleet-lab"))
RUN_DIR = lab.LAB / "armvm"


def log(msg: str) -> None:
    print(f"[armvm] {msg}", file=sys.stderr, flush=True)


def sh(*argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    return subprocess.run([str(a) for a in argv], **kw)


def mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        text = Path(path).read_text()
        for stanza in text.split("\n\n"):
            if re.search(r"^Suites:.*\b" + SUITE + r"\b", stanza, re.M) and "security" not in stanza:
                m = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if m:
                    return m.group(1)
    if os.path.exists("/etc/apt/sources.list"):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and SUITE in parts and "security" not in line:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    raise SystemExit("armvm: no Debian mirror found in the apt sources")


def kernel_package() -> str:
    out = sh("apt-cache", "depends", "linux-image-arm64:arm64", capture_output=True, text=True).stdout
    m = re.search(r"Depends:\s*(linux-image-[0-9.]+-[0-9]+-arm64)", out)
    if not m:
        raise SystemExit(f"armvm: cannot find the arm64 kernel package:\n{out}")
    return m.group(1)


def cache_dir() -> Path:
    key = hashlib.sha256(repr((RECIPE_VERSION, SUITE, PACKAGES, INITRD_MODULES, kernel_package(),
                               Path(f"{lab.KEY}.pub").read_text())).encode()).hexdigest()[:16]
    return CACHE_ROOT / f"armvm-{key}"


def ensure_host() -> None:
    need = [p for p in ("qemu-system-arm", "debootstrap", "qemu-utils", "e2fsprogs", "cpio", "xz-utils")
            if sh("dpkg-query", "-W", "-f=${Status}", p, capture_output=True, text=True, check=False).stdout
            != "install ok installed"]
    if "arm64" not in sh("dpkg", "--print-foreign-architectures", capture_output=True, text=True).stdout.split():
        sh("dpkg", "--add-architecture", "arm64")
        sh("apt-get", "update", "-q", stdout=subprocess.DEVNULL, check=False)
    if need:
        log(f"installing {' '.join(need)}")
        sh("apt-get", "install", "-y", "-q", "--no-install-recommends", *need, stdout=subprocess.DEVNULL,
           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if not os.path.exists("/proc/sys/fs/binfmt_misc/qemu-aarch64"):
        raise SystemExit("armvm: the qemu-aarch64 binfmt handler is needed to debootstrap (archfleet binfmt --install)")


def build() -> Path:
    ensure_host()
    lab.ensure_key()
    out = cache_dir()
    if (out / "disk.img").exists() and (out / "vmlinuz").exists() and (out / "initrd.gz").exists():
        return out
    work = out.with_name(out.name + ".tmp")
    rootfs, kdir = work / "rootfs", work / "kernel"
    started = time.time()
    if not (work / ".debootstrap-done").exists():  # the slow step survives a later step failing
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log(f"debootstrap {SUITE} arm64 (under qemu-user; several minutes)")
        sh("debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, rootfs,
           mirror(), stdout=subprocess.DEVNULL)
        (work / ".debootstrap-done").write_text("")
        log(f"debootstrap took {time.time() - started:.0f}s")
    # kernel and modules, from the package, unpacked on the host (apt's _apt user must write there)
    pkg = kernel_package()
    shutil.rmtree(kdir, ignore_errors=True)
    kdir.mkdir()
    shutil.chown(kdir, "_apt")
    sh("apt-get", "download", "-q", f"{pkg}:arm64", cwd=kdir, stdout=subprocess.DEVNULL)
    deb = next(kdir.glob("linux-image-*.deb"))
    sh("dpkg-deb", "-x", deb, kdir / "x")
    version = next((kdir / "x" / "lib" / "modules").iterdir()).name
    shutil.copy(next((kdir / "x" / "boot").glob("vmlinuz-*")), work / "vmlinuz")
    shutil.copytree(kdir / "x" / "lib" / "modules" / version, rootfs / "lib" / "modules" / version, dirs_exist_ok=True)
    sh("chroot", rootfs, "/sbin/depmod", version)  # the guest's own depmod (under qemu-user)
    initramfs(work, rootfs, version)
    configure(rootfs)
    shutil.copy(rootfs / "etc" / "ssh" / "ssh_host_ed25519_key.pub", work / "host_key.pub")
    for sub in ("proc", "sys", "dev/pts", "dev"):
        sh("umount", "-l", rootfs / sub, check=False, stderr=subprocess.DEVNULL)
    log("making the ext4 image")
    sh("mkfs.ext4", "-q", "-F", "-L", "armvm", "-d", rootfs, work / "disk.img", "6G")
    shutil.rmtree(rootfs)
    shutil.rmtree(kdir)
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    log(f"image ready in {time.time() - started:.0f}s: {out}")
    return out


def initramfs(work: Path, rootfs: Path, version: str) -> None:
    init = work / "initramfs"
    shutil.rmtree(init, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
        (init / d).mkdir(parents=True, exist_ok=True)
    bb_dir = work / "bb"
    shutil.rmtree(bb_dir, ignore_errors=True)
    bb_dir.mkdir()
    shutil.chown(bb_dir, "_apt")
    sh("apt-get", "download", "-q", "busybox-static:arm64", cwd=bb_dir, stdout=subprocess.DEVNULL)
    sh("dpkg-deb", "-x", next(bb_dir.glob("*.deb")), bb_dir / "x")
    shutil.copy(bb_dir / "x" / "bin" / "busybox", init / "bin" / "busybox")
    mods = rootfs / "lib" / "modules" / version / "kernel"
    lines = []
    for name in INITRD_MODULES:
        found = list(mods.rglob(f"{name}.ko*"))
        if not found:
            continue  # built into this kernel
        shutil.copy(found[0], init / "lib" / "modules" / found[0].name)
        lines.append(f"insmod /lib/modules/{found[0].name} 2>/dev/null")
    (init / "init").write_text("#!/bin/busybox sh\n/bin/busybox --install -s /bin\n"
                               "mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n"
                               + "\n".join(lines) + "\n"
                               "for i in $(seq 1 50); do [ -b /dev/vda ] && break; sleep 0.2; done\n"
                               "mount -t ext4 -o rw /dev/vda /newroot || exec sh\n"
                               "umount /proc /sys; mount --move /dev /newroot/dev\n"
                               "exec switch_root /newroot /sbin/init\n")
    (init / "init").chmod(0o755)
    # compressed modules (.ko.xz) are fine for insmod only when busybox supports them: unpack them
    for ko in (init / "lib" / "modules").glob("*.ko.xz"):
        sh("xz", "-d", ko)
    (init / "init").write_text((init / "init").read_text().replace(".ko.xz", ".ko"))
    cpio = subprocess.Popen(["bash", "-c", "set -o pipefail; find . | cpio -o -H newc --quiet | gzip -9"],
                            cwd=init, stdout=open(work / "initrd.gz", "wb"))
    if cpio.wait() != 0:
        raise SystemExit("armvm: making the initramfs failed")
    shutil.rmtree(bb_dir)
    shutil.rmtree(init)


def configure(rootfs: Path) -> None:
    (rootfs / "etc" / "hostname").write_text("armvm\n")
    (rootfs / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 armvm\n")
    (rootfs / "etc" / "fstab").write_text("/dev/vda / ext4 rw,relatime 0 1\n")
    net = rootfs / "etc" / "network" / "interfaces"
    net.parent.mkdir(parents=True, exist_ok=True)
    # auto: virtio_net (and its failover modules) load in the initramfs, so eth0 is there early
    net.write_text("auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n"
                   "  address 10.0.2.15/24\n  gateway 10.0.2.2\n")
    (rootfs / "etc" / "resolv.conf").write_text("")  # no DNS: the lab needs none
    ssh = rootfs / "root" / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(Path(f"{lab.KEY}.pub").read_text())
    ssh.chmod(0o700)
    for key in (rootfs / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "archfleet-armvm",
       "-f", rootfs / "etc" / "ssh" / "ssh_host_ed25519_key")
    (rootfs / "etc" / "ssh" / "sshd_config.d").mkdir(exist_ok=True)
    (rootfs / "etc" / "ssh" / "sshd_config.d" / "archfleet.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nAllowStreamLocalForwarding yes\n"
        "UseDNS no\n")
    unit = rootfs / "etc" / "systemd" / "system" / "registry-forward.service"
    unit.write_text("[Unit]\nDescription=lab registry at 127.0.0.1:5000 -> host loopback\nAfter=network.target\n\n"
                    "[Service]\nExecStart=/usr/bin/socat TCP-LISTEN:5000,bind=127.0.0.1,fork,reuseaddr "
                    "TCP:10.0.2.2:5000\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n")
    # what the guest's network and services look like, on the console (console.log on the host)
    diag = rootfs / "etc" / "systemd" / "system" / "lab-diag.service"
    diag.write_text("[Unit]\nDescription=lab diagnostics to the console\nAfter=network-online.target ssh.service "
                    "docker.service\n\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'sleep 5; "
                    "(echo LAB-DIAG; ip -br link; ip -br addr; ss -ltn) > /dev/kmsg 2>&1'\n\n"
                    "[Install]\nWantedBy=multi-user.target\n")
    # eth0 the moment the driver is there, whichever comes first
    modules = rootfs / "etc" / "modules-load.d" / "lab.conf"
    modules.parent.mkdir(parents=True, exist_ok=True)
    modules.write_text("virtio_net\n")
    wants = rootfs / "etc" / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit_name in ("registry-forward.service", "lab-diag.service"):
        link = wants / unit_name
        if not link.exists():
            link.symlink_to(f"/etc/systemd/system/{unit_name}")
    for noisy in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
        (rootfs / "etc" / "systemd" / "system" / noisy).unlink(missing_ok=True)
        (rootfs / "etc" / "systemd" / "system" / noisy).symlink_to("/dev/null")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ssh_ok(timeout: float) -> bool:
    """A real login (banner alone is not enough: sshd may not be ready for keys)."""
    proc = subprocess.run(["ssh", "-p", str(SSH_PORT), "-i", str(lab.KEY), "-o", "BatchMode=yes",
                           "-o", f"UserKnownHostsFile={known_hosts()}", "-o", "StrictHostKeyChecking=yes",
                           "-o", f"ConnectTimeout={int(timeout)}", "root@127.0.0.1",
                           "docker version --format '{{.Server.Version}}'"],
                          capture_output=True, text=True, timeout=timeout + 30)
    return proc.returncode == 0 and proc.stdout.strip() != ""


def known_hosts() -> Path:
    return RUN_DIR / "known_hosts"


def up(timeout: float = 900.0) -> Path:
    image = build()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    pidfile = RUN_DIR / "qemu.pid"
    pub = (image / "host_key.pub")
    if not pub.exists():
        raise SystemExit("armvm: image has no host key record; rebuild it")
    known_hosts().write_text(f"[127.0.0.1]:{SSH_PORT} {' '.join(pub.read_text().split()[:2])}\n")
    toml = RUN_DIR / "nodes.toml"
    toml.write_text(f'# the lab arm64 VM (tests/lab/armvm.py)\n[nodes.{NAME}]\nhost = "127.0.0.1"\nport = {SSH_PORT}\n'
                    f'user = "root"\nidentity = "{lab.KEY}"\nknown_hosts = "{known_hosts()}"\n'
                    'engine_cli = "/usr/bin/docker"\nmax_builds = 1\n')
    if lab._pid(pidfile):
        return toml
    overlay = RUN_DIR / "overlay.qcow2"
    overlay.unlink(missing_ok=True)
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", image / "disk.img", "-F", "raw", overlay)
    started = time.time()
    log("booting (full-system emulation; about two minutes)")
    sh("qemu-system-aarch64", "-M", "virt", "-cpu", "max", "-smp", "2", "-m", "3072", "-display", "none",
       "-daemonize", "-pidfile", pidfile, "-serial", f"file:{RUN_DIR / 'console.log'}",
       "-kernel", image / "vmlinuz", "-initrd", image / "initrd.gz",
       # no getty on the serial console: udev never announces ttyAMA0 here and boot waits 90 s for it
       "-append", "console=ttyAMA0 net.ifnames=0 rw apparmor=0 root=/dev/vda "
                  "systemd.mask=serial-getty@ttyAMA0.service",
       "-drive", f"file={overlay},format=qcow2,if=virtio",
       "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22", "-device", "virtio-net-pci,netdev=n0,romfile=")  # no option ROM: no ipxe package needed
    deadline = started + timeout
    while time.time() < deadline:
        if _port_open(SSH_PORT) and _ssh_ok(20):
            (RUN_DIR / "boot-seconds").write_text(f"{time.time() - started:.0f}\n")
            log(f"up after {time.time() - started:.0f}s")
            return toml
        time.sleep(3)
    tail = (RUN_DIR / "console.log").read_text(errors="replace")[-2000:] if (RUN_DIR / "console.log").exists() else ""
    down()
    raise SystemExit(f"armvm: no SSH after {timeout:.0f}s; console:\n{tail}")


def down() -> None:
    pidfile = RUN_DIR / "qemu.pid"
    pid = lab._pid(pidfile)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not lab._pid(pidfile):
                break
            time.sleep(0.1)
        if lab._pid(pidfile):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    (RUN_DIR / "overlay.qcow2").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("build", "up", "down"):
        print(__doc__)
        return 2
    if argv[0] == "build":
        print(build())
    elif argv[0] == "up":
        print(up())
    else:
        down()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
