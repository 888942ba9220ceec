#!/usr/bin/env bash
# The main job: make the lab ready, build examples/arch-test for five platforms, push one
# index, then run it on each platform and show what `uname -m` says.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
while IFS='=' read -r key value; do export "$key=$value"; done < <(bash tests/lab/bootstrap.sh)
TAG=${1:-$ARCHFLEET_REGISTRY/arch-test:demo}
PLATFORMS=linux/amd64,linux/arm64,linux/arm/v7,linux/s390x,linux/ppc64le

.venv/bin/archfleet plan --platform "$PLATFORMS" examples/arch-test
.venv/bin/archfleet build --progress plain --platform "$PLATFORMS" -t "$TAG" --push \
  --metadata-file /tmp/archfleet-demo-metadata.json examples/arch-test
echo
for p in ${PLATFORMS//,/ }; do
  printf '%-14s uname -m: %s\n' "$p" "$(/usr/bin/docker run --rm --pull always --platform "$p" "$TAG" 2>/dev/null | tail -1)"
done
