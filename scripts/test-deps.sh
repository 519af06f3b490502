#!/usr/bin/env bash
# Installs the system packages the tests start themselves (Debian's): redis-server for the
# broker tests, chromium for the browser tests (tests/tls.rs runs it over wss://). Does nothing
# when they are present.
# Usage: bash scripts/test-deps.sh
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
# Debian's package starts a system instance on port 6379; the tests use their own ports.
