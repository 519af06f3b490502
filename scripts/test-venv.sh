#!/usr/bin/env bash
# The Python clients the tests use (the `websockets` package), in <repo>/.venv-tests, created on
# first use with pinned versions. Prints the venv's python on stdout.
# Usage: PY=$(bash scripts/test-venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$PWD/.venv-tests"
REQS="$PWD/scripts/test-requirements.txt"
# Tests running at once share one venv: the first creates it, the others wait for it.
exec 9>"$PWD/.venv-tests.lock"
flock 9
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQS" "$VENV/requirements.txt"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS" >&2
  cp "$REQS" "$VENV/requirements.txt"
fi
echo "$VENV/bin/python"
