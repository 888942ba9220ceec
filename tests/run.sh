#!/usr/bin/env bash
# The test command: makes the lab ready (idempotent), then runs the whole suite.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -k platforms`).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
while IFS='=' read -r key value; do export "$key=$value"; done < <(bash tests/lab/bootstrap.sh)
exec "$REPO/.venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
