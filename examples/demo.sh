#!/usr/bin/env bash
# The main job: make the lab ready, build examples/arch-test for five platforms, push one
# index, then run it on each platform and check what `uname -m` says.
#
#   bash examples/demo.sh [TAG]            # the whole demo (TAG default: $ARCHFLEET_REGISTRY/arch-test:demo)
#   bash examples/demo.sh --check TAG      # only run TAG on each platform and check uname -m
#
# $PLATFORMS (comma-separated) replaces the five platforms. Exits non-zero when the lab cannot
# be made ready, the build fails, or any platform does not print its own `uname -m`.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PLATFORMS=${PLATFORMS:-linux/amd64,linux/arm64,linux/arm/v7,linux/s390x,linux/ppc64le}
declare -A UNAME=([linux/amd64]=x86_64 [linux/arm64]=aarch64 [linux/arm/v7]=armv7l [linux/s390x]=s390x
                  [linux/ppc64le]=ppc64le)

check() {  # run $1 on every platform; say what each printed; fail if one is not its own
  local tag=$1 failed=0 p got
  for p in ${PLATFORMS//,/ }; do
    if ! got=$(/usr/bin/docker run --rm --pull always --platform "$p" "$tag" 2>&1 | tail -1); then
      got="(docker run failed: $got)"
    fi
    if [ "$got" = "${UNAME[$p]:-?}" ]; then
      printf '%-14s uname -m: %s\n' "$p" "$got"
    else
      printf '%-14s uname -m: %s   <- expected %s\n' "$p" "$got" "${UNAME[$p]:-?}"
      failed=1
    fi
  done
  if [ "$failed" != 0 ]; then
    echo "demo: $tag does not run as each platform it claims (see above)" >&2
    return 1
  fi
}

if [ "${1:-}" = "--check" ]; then
  [ $# -eq 2 ] || { echo "usage: bash examples/demo.sh --check TAG" >&2; exit 2; }
  check "$2"
  exit
fi

# The lab first; a lab that cannot be made ready stops the demo here.
envfile=$(mktemp)
trap 'rm -f "$envfile"' EXIT
if ! bash tests/lab/bootstrap.sh >"$envfile"; then
  echo "demo: the lab could not be made ready (tests/lab/bootstrap.sh failed; its messages are above)" >&2
  exit 1
fi
while IFS='=' read -r key value; do
  [ -n "$key" ] && export "$key=$value"
done <"$envfile"
TAG=${1:-$ARCHFLEET_REGISTRY/arch-test:demo}

# a file of this run's own: two demos at once must not write one file
metadata=$(mktemp --suffix=.json /tmp/archfleet-demo-metadata.XXXXXX)
.venv/bin/archfleet plan --platform "$PLATFORMS" examples/arch-test
.venv/bin/archfleet build --progress plain --platform "$PLATFORMS" -t "$TAG" --push \
  --metadata-file "$metadata" examples/arch-test
echo "demo: the build's metadata (estimate and actual per platform and part) is in $metadata"
echo
check "$TAG"
