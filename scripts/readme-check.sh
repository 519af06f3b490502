#!/usr/bin/env bash
# Runs the README's first command (the line that starts the daemon) exactly as written, so a
# README line that stops working fails the test command:
#   1. `<command> -- --version` must print `wsd <package version>` (it starts wsd, not wsd-load);
#   2. `<command>` itself must listen on 127.0.0.1:9001, echo a message to a real client (Python
#      `websockets`), and exit 0 after its drain on SIGTERM.
# Usage: bash scripts/readme-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The first line of the first ```sh block, without its comment.
CMD=$(awk '/^```sh$/ {inside=1; next} inside && /^```/ {exit} inside {print; exit}' README.md \
  | sed 's/[[:space:]]*#.*$//')
[ -n "$CMD" ] || { echo "readme-check: no command in README.md's first sh block" >&2; exit 1; }
VERSION=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)
echo "readme-check: README's first command is: $CMD"

GOT=$(bash -c "$CMD -- --version" 2>&1 | tail -n 1) || true
if [ "$GOT" != "wsd $VERSION" ]; then
  echo "readme-check: '$CMD -- --version' printed '$GOT', expected 'wsd $VERSION'" >&2
  exit 1
fi
echo "readme-check: '$CMD -- --version' prints '$GOT'"

PY=$(bash scripts/test-venv.sh)
LOG=$(mktemp)
# exec: the shell becomes cargo, and `cargo run` execs wsd in turn, so $! is wsd's pid.
bash -c "exec $CMD" >"$LOG" 2>&1 &
PID=$!
cleanup() { kill -KILL "$PID" 2>/dev/null || true; rm -f "$LOG"; }
trap cleanup EXIT

# Wait (bounded) for the daemon to accept on the README's address.
for _ in $(seq 1 600); do
  if "$PY" -c 'import socket; socket.create_connection(("127.0.0.1", 9001), 0.2).close()' 2>/dev/null; then
    break
  fi
  kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; echo "readme-check: '$CMD' exited before listening" >&2; exit 1; }
  sleep 0.1
done
"$PY" tests/py/echo_once.py ws://127.0.0.1:9001/ "hello from the README" \
  || { cat "$LOG" >&2; exit 1; }

kill -TERM "$PID"
set +e
for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
wait "$PID"
RC=$?
set -e
if [ "$RC" -ne 0 ]; then
  cat "$LOG" >&2
  echo "readme-check: '$CMD' exited $RC on SIGTERM, expected 0" >&2
  exit 1
fi
grep -q "drain finished" "$LOG" || { cat "$LOG" >&2; echo "readme-check: no drain summary" >&2; exit 1; }
echo "readme-check: '$CMD' listened on 127.0.0.1:9001, echoed, and exited 0 after its drain"
