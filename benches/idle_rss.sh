#!/usr/bin/env bash
# Resident memory per idle connection: (RSS with N idle connections - RSS with none) / N, for
# each N given (default 10000 19000). A fresh server per N; the clients are wsd-load idle,
# spread over source addresses 127.0.0.2-127.0.0.101 so ports never run out.
# With TLS=1 the connections are wss:// (a throwaway self-signed ECDSA P-256 certificate, made
# here), counted once their TLS and WebSocket handshakes completed. PROFILE=debug measures the
# debug build (allocation sizes are the same; the release build takes minutes).
# RATE=R opens R connections per second (default 20000; TLS handshakes need fewer on a busy
# machine, every handshake must finish within handshake_timeout).
# Usage: [TLS=1] [PROFILE=debug] [RATE=R] bash benches/idle_rss.sh [N...]
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(10000 19000)

profile=${PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release --quiet --bin wsd --bin wsd-load
else
  cargo build --quiet --bin wsd --bin wsd-load
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"
scheme=ws
server_tls=()
load_tls=()
if [ -n "${TLS:-}" ]; then
  certs=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$certs/key.pem" -out "$certs/cert.pem" 2>/dev/null
  scheme=wss
  server_tls=(--tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem")
  load_tls=(--insecure)
fi
port=$((20000 + RANDOM % 20000))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'cleanup; [ -z "${certs:-}" ] || rm -rf "$certs"' EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

wait_for_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server did not start" >&2
  return 1
}

printf '| idle connections | RSS with none | RSS with N | bytes per connection |\n'
printf '|---:|---:|---:|---:|\n'
for n in "${counts[@]}"; do
  port=$((port + 1))
  "$bin/wsd" --listen "127.0.0.1:$port" --max-connections $((n + 100)) "${server_tls[@]}" \
    2>/tmp/wsd-idle-rss.log &
  server=$!
  pids+=("$server")
  wait_for_port "$port"
  # Warm the paths a connection takes (handshake, echo, close) before the baseline.
  "$bin/wsd-load" echo --url "$scheme://127.0.0.1:$port/" "${load_tls[@]}" -c 10 -m 100 -q \
    >/dev/null 2>&1
  base=$(rss_kib "$server")
  log=$(mktemp)
  "$bin/wsd-load" idle --url "$scheme://127.0.0.1:$port/" "${load_tls[@]}" -c "$n" \
    --src 127.0.0.2-127.0.0.101 --rate "${RATE:-20000}" --hold 300s 2>"$log" >/dev/null &
  loader=$!
  pids+=("$loader")
  for _ in $(seq 1 1200); do
    grep -q "^established $n" "$log" && break
    kill -0 "$loader" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  grep -q "^established $n" "$log" || { echo "only: $(tail -c 300 "$log")" >&2; exit 1; }
  with=$(rss_kib "$server")
  per=$(( (with - base) * 1024 / n ))
  printf '| %d | %d KiB | %d KiB | %d B |\n' "$n" "$base" "$with" "$per"
  kill "$loader" "$server" 2>/dev/null || true
  wait "$loader" "$server" 2>/dev/null || true
  rm -f "$log"
done
