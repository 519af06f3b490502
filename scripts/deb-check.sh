#!/usr/bin/env bash
# Builds the Debian package twice (two package versions), checks its contents, installs and
# upgrades it with dpkg (the maintainer scripts run), and upgrades a running wsd from one
# package's binary to the other's the way the package does it: the binary replaced on disk,
# then the reload its postinst asks systemd for (ExecReload= sends SIGUSR2). A client sending
# every 20 ms must keep its one connection and every echo.
# Usage: bash scripts/deb-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)

# (cargo deb empties target/debian before each build: keep the first package aside.)
pkgs=$(mktemp -d)
bash scripts/deb.sh --deb-version "$VERSION-1"
cp "target/debian/wsd_${VERSION}-1_amd64.deb" "$pkgs/"
bash scripts/deb.sh --deb-version "$VERSION-2"
cp "target/debian/wsd_${VERSION}-2_amd64.deb" "$pkgs/"
OLD="$pkgs/wsd_${VERSION}-1_amd64.deb"
NEW="$pkgs/wsd_${VERSION}-2_amd64.deb"

echo "== dpkg-deb -c $NEW"
contents=$(dpkg-deb -c "$NEW")
for path in ./usr/bin/wsd ./usr/bin/wsd-load ./etc/wsd/wsd.toml \
    ./lib/systemd/system/wsd.service ./lib/systemd/system/wsd@.service \
    ./lib/systemd/system/wsd.socket ./lib/systemd/system/wsd-workers.target; do
  grep -q " $path\$" <<<"$contents" || { echo "FAIL: $path missing from the package"; echo "$contents"; exit 1; }
done
# (Into variables first: `grep -q` closing a pipe early would fail it under pipefail.)
control=$(mktemp -d)
dpkg-deb -e "$NEW" "$control"
[ -x "$control/postinst" ] || { echo "FAIL: no postinst"; exit 1; }
grep -qx "/etc/wsd/wsd.toml" "$control/conffiles" || { echo "FAIL: /etc/wsd/wsd.toml is not a conffile"; exit 1; }
rm -rf "$control"
unit=$(dpkg-deb --fsys-tarfile "$NEW" | tar -xO ./lib/systemd/system/wsd.service)
grep -q "^ExecStart=/usr/bin/wsd " <<<"$unit" || { echo "FAIL: the packaged unit does not run /usr/bin/wsd"; exit 1; }
echo "ok"

echo "== dpkg -i (install, then upgrade: the maintainer scripts run)"
dpkg -i "$OLD" >/dev/null
dpkg -i "$NEW" >/dev/null
/usr/bin/wsd --check-config --config /etc/wsd/wsd.toml
dpkg --purge wsd >/dev/null
echo "ok"

echo "== a running wsd upgraded from one package's binary to the other's"
PY=$(bash scripts/test-venv.sh)
root=$(mktemp -d)
stage=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$root" "$stage" "$pkgs"; }
trap cleanup EXIT
dpkg-deb -x "$OLD" "$root"
dpkg-deb -x "$NEW" "$stage"
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
metrics=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log="$root/wsd.log"
"$root/usr/bin/wsd" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" 2>"$log" &
pids+=($!)
old_pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$log" && break; sleep 0.05; done
"$PY" tests/py/echo_steady.py "ws://127.0.0.1:$port/" 3 0.02 >"$root/client.out" 2>&1 &
client=$!
for _ in $(seq 1 100); do grep -q connected "$root/client.out" && break; sleep 0.05; done
# The package's upgrade: the new binary replaces the old one on disk (a rename, as dpkg does),
# then the reload.
mv "$stage/usr/bin/wsd" "$root/usr/bin/wsd"
kill -USR2 "$old_pid"
for _ in $(seq 1 200); do grep -q "live upgrade: resumed" "$log" && break; sleep 0.05; done
grep -q "live upgrade: resumed 1 connections" "$log" || { cat "$log"; echo "FAIL: no handover"; exit 1; }
scrape=$(curl -s "http://127.0.0.1:$metrics/metrics")
new_pid=$(sed -n 's/^wsd_build_info{.*pid="\([0-9]*\)"} 1$/\1/p' <<<"$scrape")
pids+=("$new_pid")
[ -n "$new_pid" ] && [ "$new_pid" != "$old_pid" ] || { echo "FAIL: the old process still serves"; exit 1; }
exe=$(readlink "/proc/$new_pid/exe")
[ "$exe" = "$root/usr/bin/wsd" ] || { echo "FAIL: pid $new_pid runs $exe"; exit 1; }
wait "$client" || { cat "$root/client.out"; echo "FAIL: the client lost its connection or an echo"; exit 1; }
cat "$root/client.out" | tail -n 1
echo "ok: pid $old_pid -> $new_pid (the new package's binary), the client kept its connection"
