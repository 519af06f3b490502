#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, then runs them.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

# The README's first command, exactly as written: it must start wsd, listen, echo and drain.
echo "== README: the first command starts the daemon"
bash scripts/readme-check.sh

# First, as it installs Debian's systemd when missing: the socket-activation test also uses
# its systemd-socket-activate.
echo "== systemd units: systemd-analyze verify and the security rating"
bash scripts/check-units.sh

echo "== test dependencies (redis-server, chromium)"
bash scripts/test-deps.sh

echo "== unit and integration tests (release: timing checks measure the server, not a debug build)"
# The examples as programs (tests/example_chat.rs runs one); `cargo test` builds them as
# test harnesses, which do not run their `main`.
cargo build --release --examples
cargo test --release --all-targets

echo "== Debian package: contents, install and upgrade, a live upgrade of a running wsd"
bash scripts/deb-check.sh

echo "== headless Chromium: permessage-deflate both ways (installs Debian's chromium if missing)"
bash scripts/chromium-check.sh

# Four fuzzingclient runs at once: 1.*-10.*, 12.*, 13.* (permessage-deflate, OK only), and
# 1.*-7.*, 10.* against --compression off.
echo "== Autobahn|Testsuite (cases 1.* to 10.*, 12.*, 13.*)"
bash scripts/autobahn.sh

echo "== Autobahn|Testsuite over wss:// (cases 1.* to 10.*)"
AUTOBAHN_TLS=1 WSD_BIN="${CARGO_TARGET_DIR:-target}/release/wsd" bash scripts/autobahn.sh

# Last, so the fuzzers' load cannot disturb the timing checks above.
echo "== fuzzing: every target in fuzz/ for ${FUZZ_SECONDS:-60}s"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
