#!/usr/bin/env bash
# The lab's C toolchain image: Zig (from PyPI's ziglang wheels) on the busybox base, pushed as
# $REGISTRY/archfleet/zig:$ZIG_VERSION for the platforms named (default: this machine's).
#   bash tests/lab/toolchain.sh                      # linux/amd64 here: enough for examples/cross-c
#   bash tests/lab/toolchain.sh all                  # + arm64, arm/v7, s390x, ppc64le: examples/emulated-c
# `zig cc` is a real cross C compiler for every platform archfleet targets. Idempotent.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAB_DIR=${ARCHFLEET_LAB_DIR:-/var/tmp/archfleet-lab}
REGISTRY=${ARCHFLEET_REGISTRY:-127.0.0.1:5000}
ZIG_VERSION=${ZIG_VERSION:-0.14.1}
ARCHFLEET="${ARCHFLEET_VENV:-$REPO/.venv}/bin/archfleet"
IMAGE=$REGISTRY/archfleet/zig:$ZIG_VERSION
say() { printf '[lab] %s\n' "$*" >&2; }

# platform : wheel platform tag : directory name BuildKit's TARGETARCH+TARGETVARIANT selects
ALL=("linux/amd64:manylinux_2_12_x86_64:amd64" "linux/arm64:manylinux_2_17_aarch64:arm64"
     "linux/arm/v7:manylinux_2_17_armv7l:armv7" "linux/s390x:manylinux_2_17_s390x:s390x"
     "linux/ppc64le:manylinux_2_17_ppc64le:ppc64le")
want=${1:-linux/$(dpkg --print-architecture)}
[ "$want" = all ] && want=$(printf '%s\n' "${ALL[@]}" | cut -d: -f1 | paste -sd,)

ACCEPT="application/vnd.docker.distribution.manifest.list.v2+json"
have=$(curl -sf -H "Accept: $ACCEPT" "http://$REGISTRY/v2/archfleet/zig/manifests/$ZIG_VERSION" || true)
missing=0
for p in ${want//,/ }; do
  arch=$(echo "$p" | cut -d/ -f2); variant=$(echo "$p" | cut -d/ -f3)
  echo "$have" | python3 -c "import json,sys
d=json.load(sys.stdin) if sys.stdin.readable() else {}
ok=any(m['platform']['architecture']=='$arch' and m['platform'].get('variant','')=='$variant' for m in d.get('manifests',[]))
sys.exit(0 if ok else 1)" 2>/dev/null || missing=1
done
# a toolchain image made by an older revision of this script is made again
echo "$have" | grep -q . && [ -z "${FORCE:-}" ] && [ $missing = 0 ] && ! curl -sf -H "Accept: $ACCEPT" \
  "http://$REGISTRY/v2/archfleet/zig/manifests/$ZIG_VERSION" >/dev/null && missing=1
if [ $missing = 0 ] && [ -z "${FORCE:-}" ]; then
  rev=$(python3 - "$REGISTRY" "$ZIG_VERSION" <<'PY'
import json, sys, urllib.request
reg, ver = sys.argv[1], sys.argv[2]
def get(path, accept):
    req = urllib.request.Request(f"http://{reg}/v2/archfleet/zig/{path}", headers={"Accept": accept})
    return json.load(urllib.request.urlopen(req))
idx = get(f"manifests/{ver}", "application/vnd.docker.distribution.manifest.list.v2+json")
man = get(f"manifests/{idx['manifests'][0]['digest']}", "application/vnd.docker.distribution.manifest.v2+json")
cfg = get(f"blobs/{man['config']['digest']}", "*/*")
print((cfg.get("config", {}).get("Labels") or {}).get("org.archfleet.lab.toolchain-revision", "1"))
PY
)
  [ "$rev" = 2 ] && { echo "$IMAGE"; exit 0; }
fi

ctx="$LAB_DIR/zig-context"
mkdir -p "$ctx" "$LAB_DIR/wheels"
# the index is replaced whole: build every platform asked for now or present before
for p in $(echo "$have" | python3 -c "import json,sys
try: d=json.load(sys.stdin)
except Exception: d={}
for m in d.get('manifests',[]):
    pl=m['platform']; print('/'.join(filter(None,[pl['os'],pl['architecture'],pl.get('variant')])))" 2>/dev/null); do
  case ",$want," in *",$p,"*) ;; *) want="$want,$p";; esac
done
for entry in "${ALL[@]}"; do
  IFS=: read -r platform tag dir <<<"$entry"
  case ",$want," in *",$platform,"*) ;; *) continue;; esac
  if [ ! -x "$ctx/zig-$dir/zig" ]; then
    say "zig $ZIG_VERSION for $platform from PyPI"
    pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --platform "$tag" \
      "ziglang==$ZIG_VERSION" -d "$LAB_DIR/wheels" >/dev/null 2>"$LAB_DIR/pip-zig.log" \
      || { cat "$LAB_DIR/pip-zig.log" >&2; exit 1; }
    wheel=$(ls "$LAB_DIR"/wheels/ziglang-"$ZIG_VERSION"-*"${tag##*_}"*.whl | head -1)
    rm -rf "$ctx/x" "$ctx/zig-$dir"
    python3 -m zipfile -e "$wheel" "$ctx/x"
    mv "$ctx/x/ziglang" "$ctx/zig-$dir" && rm -rf "$ctx/x"
    chmod +x "$ctx/zig-$dir/zig"
  fi
done
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
ARG BASE=127.0.0.1:5000/archfleet/busybox:latest
FROM ${BASE}
ARG TARGETARCH
ARG TARGETVARIANT
COPY zig-${TARGETARCH}${TARGETVARIANT} /opt/zig
# zig (like most compilers) wants a /tmp, which the busybox base does not have
RUN ["/bin/mkdir", "-p", "-m", "1777", "/tmp"]
ENV PATH=/opt/zig:/bin ZIG_GLOBAL_CACHE_DIR=/zig-cache ZIG_LOCAL_CACHE_DIR=/zig-cache
LABEL org.archfleet.lab.toolchain-revision=2
DOCKERFILE
say "building $IMAGE for $want"
"$ARCHFLEET" build --progress quiet --platform "$want" --build-arg "BASE=$REGISTRY/archfleet/busybox:latest" \
  -t "$IMAGE" --push "$ctx" >/dev/null
echo "$IMAGE"
