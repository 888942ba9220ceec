#!/usr/bin/env bash
# The lab, made ready on a fresh Debian 12 machine (as root). Idempotent: run it as often as you like.
#   - installs what is missing from Debian's packages (docker.io, qemu-user-static, docker-registry, ...)
#   - makes the Python environment (.venv, archfleet installed editable with its test extra)
#   - starts dockerd if none answers, registers QEMU binfmt handlers (archfleet binfmt --install all)
#   - starts a registry on $ARCHFLEET_REGISTRY (default 127.0.0.1:5000)
#   - builds the multi-arch busybox base image from Debian's busybox-static packages and pushes it
#     as $REGISTRY/archfleet/busybox:latest (with archfleet itself)
#   - makes the Zig C toolchain image for this machine's platform (tests/lab/toolchain.sh)
#   - makes the multi-arch Debian bookworm base, $REGISTRY/library/debian:bookworm (tests/lab/debian.sh;
#     debootstrap per architecture, cached under ~/.cache/archfleet-lab: minutes the first time only)
# Prints the environment the other scripts need: ARCHFLEET_REGISTRY, ARCHFLEET_BASE, ARCHFLEET_TOOLCHAIN,
# ARCHFLEET_DEBIAN.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAB_DIR=${ARCHFLEET_LAB_DIR:-/var/tmp/archfleet-lab}
REGISTRY=${ARCHFLEET_REGISTRY:-127.0.0.1:5000}
VENV=${ARCHFLEET_VENV:-$REPO/.venv}
BASE=$REGISTRY/archfleet/busybox:latest
export DOCKER_CLI=/usr/bin/docker
mkdir -p "$LAB_DIR"

say() { printf '[lab] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  say "run as root (it installs packages, starts dockerd and registers binfmt handlers)"; exit 2
fi

# --- Debian packages -------------------------------------------------------------------------
PACKAGES=(docker.io qemu-user-static docker-registry iproute2 openssh-server curl ca-certificates python3-venv python3-pip
          tmux chromium fonts-dejavu-core                                     # progress and report tests
          fish tcsh                                                           # SSH users with non-POSIX login shells
          qemu-system-arm qemu-utils debootstrap e2fsprogs cpio xz-utils      # the arm64 VM node
          podman buildah uidmap slirp4netns fuse-overlayfs rootlesskit        # podman and rootless-docker lab nodes
          pipx)                                                               # installing archfleet as a tool
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
APT_UPDATED=
# A mirror mid-sync can fail one index file; what we need is checked where it is used.
apt_update() { [ -n "$APT_UPDATED" ] || { apt-get update -q >"$LAB_DIR/apt-update.log" 2>&1 || say "apt-get update reported errors (see $LAB_DIR/apt-update.log)"; APT_UPDATED=1; }; }
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$LAB_DIR/apt-install.log" 2>&1 \
    || { tail -20 "$LAB_DIR/apt-install.log" >&2; exit 1; }
fi

# --- Python environment ----------------------------------------------------------------------
stamp="$VENV/.archfleet-installed"
if [ ! -x "$VENV/bin/archfleet" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
  say "installing archfleet into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]" >"$LAB_DIR/pip.log" 2>&1 \
    || { tail -20 "$LAB_DIR/pip.log" >&2; exit 1; }
  touch "$stamp"
fi
# pip compiles the packages it installs, but not an editable install's own sources; where
# PYTHONDONTWRITEBYTECODE is set (it is on the project VM) every run would compile archfleet's
# modules again (~35 ms of each command). Up-to-date files are skipped.
"$VENV/bin/python" -m compileall -q "$REPO/core" "$REPO/plugins" >/dev/null || true
ARCHFLEET="$VENV/bin/archfleet"

# --- dockerd -----------------------------------------------------------------------------------
if ! $DOCKER_CLI info >/dev/null 2>&1; then
  say "starting dockerd"
  # setsid: dockerd must not die with this script's process group.
  setsid nohup /usr/sbin/dockerd --log-level warn >"$LAB_DIR/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do $DOCKER_CLI info >/dev/null 2>&1 && break; sleep 1; done
  $DOCKER_CLI info >/dev/null 2>&1 || { tail -20 "$LAB_DIR/dockerd.log" >&2; say "dockerd did not start"; exit 1; }
fi

# --- QEMU handlers -----------------------------------------------------------------------------
"$ARCHFLEET" binfmt --install all >/dev/null

# --- registry ------------------------------------------------------------------------------------
if ! curl -sf "http://$REGISTRY/v2/" >/dev/null 2>&1; then
  say "starting registry on $REGISTRY"
  mkdir -p "$LAB_DIR/registry"
  cat >"$LAB_DIR/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $LAB_DIR/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  setsid nohup /usr/bin/docker-registry serve "$LAB_DIR/registry.yml" >"$LAB_DIR/registry.log" 2>&1 < /dev/null &
  for _ in $(seq 1 30); do curl -sf "http://$REGISTRY/v2/" >/dev/null 2>&1 && break; sleep 0.5; done
  curl -sf "http://$REGISTRY/v2/" >/dev/null || { tail -20 "$LAB_DIR/registry.log" >&2; say "registry did not start"; exit 1; }
fi

# --- multi-arch busybox base ---------------------------------------------------------------------
# platform : Debian architecture : file name BuildKit's TARGETARCH+TARGETVARIANT selects
BASE_PLATFORMS=(
  "linux/amd64:amd64:amd64" "linux/386:i386:386" "linux/arm64:arm64:arm64" "linux/arm/v7:armhf:armv7"
  "linux/arm/v6:armel:armv6" "linux/s390x:s390x:s390x" "linux/ppc64le:ppc64el:ppc64le" "linux/riscv64:riscv64:riscv64"
)
ACCEPT="application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json"
if ! curl -sf -H "Accept: $ACCEPT" "http://$REGISTRY/v2/archfleet/busybox/manifests/latest" | grep -q '"s390x"'; then
  say "building the multi-arch busybox base from Debian packages"
  ctx="$LAB_DIR/busybox-base"
  rm -rf "$ctx" && mkdir -p "$ctx/debs"
  native=$(dpkg --print-architecture)
  for entry in "${BASE_PLATFORMS[@]}"; do
    debarch=$(echo "$entry" | cut -d: -f2)
    if [ "$debarch" != "$native" ] && ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
      dpkg --add-architecture "$debarch"; APT_UPDATED=
    fi
  done
  apt_update
  platforms=()
  for entry in "${BASE_PLATFORMS[@]}"; do
    IFS=: read -r platform debarch file <<<"$entry"
    if ! (cd "$ctx/debs" && apt-get download -q "busybox-static:$debarch" >/dev/null 2>&1); then
      say "no busybox-static for $debarch in this Debian release; $platform left out of the base"
      dpkg --remove-architecture "$debarch" 2>/dev/null || true
      continue
    fi
    deb=$(ls "$ctx/debs"/busybox-static_*_"$debarch".deb | head -1)
    rm -rf "$ctx/x" && dpkg-deb -x "$deb" "$ctx/x"
    cp "$ctx/x/bin/busybox" "$ctx/busybox-$file"
    platforms+=("$platform")
  done
  rm -rf "$ctx/x" "$ctx/debs"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
ARG TARGETARCH
ARG TARGETVARIANT
COPY busybox-${TARGETARCH}${TARGETVARIANT} /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
CMD ["/bin/sh"]
EOF
  plist=$(IFS=,; echo "${platforms[*]}")
  "$ARCHFLEET" build --progress quiet --platform "$plist" -t "$BASE" --push "$ctx" >/dev/null
  say "base image $BASE: $plist"
fi

# --- the Zig C toolchain image (for examples/cross-c) -------------------------------------------
TOOLCHAIN=$(bash "$REPO/tests/lab/toolchain.sh")

# --- the multi-arch Debian base (examples/seed-rust, the seed article's Dockerfiles) --------------
DEBIAN=$(bash "$REPO/tests/lab/debian.sh")

echo "ARCHFLEET_REGISTRY=$REGISTRY"
echo "ARCHFLEET_BASE=$BASE"
echo "ARCHFLEET_TOOLCHAIN=$TOOLCHAIN"
echo "ARCHFLEET_DEBIAN=$DEBIAN"
