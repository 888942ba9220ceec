#!/usr/bin/env bash
# The lab's multi-arch Debian base image: bookworm made with `debootstrap --variant=minbase` for
# each architecture and pushed (by archfleet itself: FROM scratch + ADD of each root file system)
# as $REGISTRY/library/debian:bookworm. Dockerfiles written `FROM debian:bookworm` (the seed
# article's, examples/seed-rust) then build with `--build-arg` or the registry path, and their RUN
# steps can `apt-get install`: containers reach the Debian mirror this machine's apt uses. The
# mirror is read from the apt sources when this runs and is never written into the repository.
#
#   bash tests/lab/debian.sh        # prints the image reference; idempotent (called by bootstrap.sh)
#
# Architectures: amd64, arm64, armhf (linux/arm/v7), s390x, ppc64el (linux/ppc64le). The root file
# systems are cached as tarballs under ~/.cache/archfleet-lab/debian-<key>/ ($ARCHFLEET_LAB_CACHE),
# the key a hash of the recipe (suite, variant, what is done to the tree), as the arm64 VM's image
# is: a changed recipe makes new ones, an unchanged one never debootstraps again. A foreign
# architecture's debootstrap runs through the QEMU handlers (several minutes each), so they are
# made one at a time, under `nice -n 10`. Needs root (debootstrap, chroot).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAB_DIR=${ARCHFLEET_LAB_DIR:-/var/tmp/archfleet-lab}
REGISTRY=${ARCHFLEET_REGISTRY:-127.0.0.1:5000}
ARCHFLEET="${ARCHFLEET_VENV:-$REPO/.venv}/bin/archfleet"
CACHE_ROOT=${ARCHFLEET_LAB_CACHE:-$HOME/.cache/archfleet-lab}
SUITE=bookworm
IMAGE=$REGISTRY/library/debian:$SUITE
RECIPE_VERSION=1
# Debian architecture : platform : the name BuildKit's TARGETARCH+TARGETVARIANT selects
ARCHES=("amd64:linux/amd64:amd64" "arm64:linux/arm64:arm64" "armhf:linux/arm/v7:armv7"
        "s390x:linux/s390x:s390x" "ppc64el:linux/ppc64le:ppc64le")
say() { printf '[lab] %s\n' "$*" >&2; }

# What is done to a fresh minbase tree before it becomes an image layer (part of the cache key).
finish_rootfs() {
  local root=$1
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  # as Debian's own images: services never start inside a build
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
  # debootstrap copied this machine's resolver and hosts files; the engine provides its own
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  : >"$root/etc/resolv.conf"
  printf 'debian\n' >"$root/etc/hostname"
}

KEY=$( { echo "$RECIPE_VERSION $SUITE minbase"; declare -f finish_rootfs; } | sha256sum | cut -c1-16)
CACHE="$CACHE_ROOT/debian-$KEY"

# The Debian mirror of this machine's apt sources (deb822 or one-line), never a fixed host.
mirror() {
  python3 - "$SUITE" <<'PY'
import glob, os, re, sys
suite = sys.argv[1]
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path).read().split("\n\n"):
        if re.search(r"^Suites:.*\b" + suite + r"\b", stanza, re.M) and "security" not in stanza:
            m = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            if m:
                print(m.group(1)); sys.exit(0)
if os.path.exists("/etc/apt/sources.list"):
    for line in open("/etc/apt/sources.list"):
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb" and suite in parts and "security" not in line:
            print(parts[2] if parts[1].startswith("[") else parts[1]); sys.exit(0)
sys.exit("debian.sh: no Debian mirror for " + suite + " in the apt sources")
PY
}

# The image is there when the index has every platform and was made from this recipe.
present() {
  python3 - "$REGISTRY" "$SUITE" "$KEY" "${#ARCHES[@]}" <<'PY'
import json, sys, urllib.request
reg, tag, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def get(path, accept):
    req = urllib.request.Request(f"http://{reg}/v2/library/debian/{path}", headers={"Accept": accept})
    return json.load(urllib.request.urlopen(req, timeout=10))
try:
    idx = get(f"manifests/{tag}", "application/vnd.docker.distribution.manifest.list.v2+json, "
                                  "application/vnd.oci.image.index.v1+json")
    if len(idx.get("manifests", [])) < n:
        sys.exit(1)
    man = get(f"manifests/{idx['manifests'][0]['digest']}", "application/vnd.docker.distribution.manifest.v2+json, "
                                                             "application/vnd.oci.image.manifest.v1+json")
    cfg = get(f"blobs/{man['config']['digest']}", "*/*")
except Exception:
    sys.exit(1)
sys.exit(0 if (cfg.get("config", {}).get("Labels") or {}).get("org.archfleet.lab.debian-recipe") == key else 1)
PY
}

if present; then echo "$IMAGE"; exit 0; fi
if [ "$(id -u)" != 0 ]; then say "debian.sh: run as root (debootstrap)"; exit 2; fi
command -v debootstrap >/dev/null || { say "debian.sh: install debootstrap"; exit 1; }
mkdir -p "$CACHE" "$LAB_DIR"
exec 9>"$CACHE/.lock"
flock 9  # one maker at a time; a second run waits, then finds the tarballs made
MIRROR=$(mirror)

for entry in "${ARCHES[@]}"; do
  IFS=: read -r debarch platform file <<<"$entry"
  tarball="$CACHE/rootfs-$file.tar"
  [ -s "$tarball" ] && continue
  root="$LAB_DIR/debian-rootfs-$debarch"
  umount -l "$root/proc" "$root/sys" 2>/dev/null || true
  rm -rf "$root"
  say "debootstrap $SUITE $debarch for $platform (minbase; a foreign one runs under QEMU: minutes)"
  started=$(date +%s)
  if ! nice -n 10 debootstrap --arch="$debarch" --variant=minbase "$SUITE" "$root" "$MIRROR" \
       >"$LAB_DIR/debootstrap-$debarch.log" 2>&1; then
    tail -20 "$LAB_DIR/debootstrap-$debarch.log" >&2
    umount -l "$root/proc" "$root/sys" 2>/dev/null || true
    say "debootstrap $debarch failed (log: $LAB_DIR/debootstrap-$debarch.log)"; exit 1
  fi
  finish_rootfs "$root"
  tar --numeric-owner --xattrs -C "$root" --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' \
      -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
  say "debian $debarch ready in $(( $(date +%s) - started ))s"
done

ctx="$LAB_DIR/debian-base"
rm -rf "$ctx" && mkdir -p "$ctx"
platforms=()
for entry in "${ARCHES[@]}"; do
  IFS=: read -r debarch platform file <<<"$entry"
  ln "$CACHE/rootfs-$file.tar" "$ctx/rootfs-$file.tar" 2>/dev/null || cp "$CACHE/rootfs-$file.tar" "$ctx/"
  platforms+=("$platform")
done
cat >"$ctx/Dockerfile" <<EOF
FROM scratch
ARG TARGETARCH
ARG TARGETVARIANT
ADD rootfs-\${TARGETARCH}\${TARGETVARIANT}.tar /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.archfleet.lab.debian-recipe=$KEY
CMD ["bash"]
EOF
plist=$(IFS=,; echo "${platforms[*]}")
say "pushing $IMAGE for $plist"
nice -n 10 "$ARCHFLEET" build --progress quiet --platform "$plist" -t "$IMAGE" --push "$ctx" >/dev/null
rm -rf "$ctx"
echo "$IMAGE"
