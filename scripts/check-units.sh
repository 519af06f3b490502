#!/usr/bin/env bash
# Checks the systemd units in systemd/: `systemd-analyze verify` must pass on wsd.service,
# wsd.socket, wsd-metrics.socket, an instance of the wsd@.service template and
# wsd-workers.target without a word, and `systemd-analyze security --offline=yes` must rate
# wsd.service and wsd@.service at most $MAX_EXPOSURE. Installs systemd (Debian's package) if systemd-analyze is
# missing. Usage: bash scripts/check-units.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXPOSURE=2.0

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "== installing systemd (for systemd-analyze)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq systemd >/dev/null
fi
systemd-analyze --version | head -n 1

cargo build --quiet --bin wsd
bin="$PWD/target/debug/wsd"
echo "== wsd --check-config --config config/wsd.toml"
"$bin" --check-config --config config/wsd.toml

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# verify insists that ExecStart='s binary exists: point it at the one just built and change
# nothing else. The socket stays beside the service so that verify pairs them.
for unit in wsd.service wsd@.service; do
    sed "s#/usr/local/bin/wsd#$bin#" "systemd/$unit" >"$tmp/$unit"
done
cp systemd/wsd.socket systemd/wsd-metrics.socket systemd/wsd-workers.target "$tmp/"

units="wsd.service wsd.socket wsd-metrics.socket wsd@9101.service wsd-workers.target"
echo "== systemd-analyze verify $units"
# shellcheck disable=SC2086
if ! out="$(cd "$tmp" && systemd-analyze verify $units 2>&1)" || [ -n "$out" ]; then
    printf '%s\n' "$out"
    echo "FAIL: systemd-analyze verify"
    exit 1
fi
echo "ok"

for unit in wsd.service wsd@.service; do
    echo "== systemd-analyze security --offline=yes systemd/$unit"
    report="$(systemd-analyze security --offline=yes "systemd/$unit" 2>&1 || true)"
    exposure="$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
    if [ -z "$exposure" ]; then
        printf '%s\n' "$report"
        echo "FAIL: no exposure level in the report"
        exit 1
    fi
    echo "exposure $exposure (at most $MAX_EXPOSURE)"
    if awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e > max) }'; then
        printf '%s\n' "$report" | grep -v '^✓' || true
        echo "FAIL: $unit is rated $exposure, above $MAX_EXPOSURE"
        exit 1
    fi
done
echo "units ok"
