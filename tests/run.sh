#!/usr/bin/env bash
# The test command: makes the lab ready (idempotent), then runs the whole suite.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -k platforms`).
# A lab that cannot be made ready fails this command (it never turns into skipped tests), and
# under CI=true a run that skips anything fails too (tests/conftest.py).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
envfile=$(mktemp)
trap 'rm -f "$envfile"' EXIT
if ! bash tests/lab/bootstrap.sh >"$envfile"; then
  echo "tests/run.sh: the lab could not be made ready (tests/lab/bootstrap.sh failed; its messages are above)" >&2
  exit 1
fi
while IFS='=' read -r key value; do
  [ -n "$key" ] && export "$key=$value"
done <"$envfile"
"$REPO/.venv/bin/python" -m pytest -q -rs -p no:cacheprovider "$@"
