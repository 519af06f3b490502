#!/usr/bin/env bash
# Resident memory per idle connection: (RSS with N idle connections - RSS with none) / N, for
# each N given (default 10000 19000). A fresh server per N; the clients are wsd-load idle,
# spread over source addresses 127.0.0.2-127.0.0.101 so ports never run out.
# Usage: bash benches/idle_rss.sh [--pubsub] [--server wsd|broadcast|uws] [N...]
#   --pubsub            every connection is a subscriber: wsd runs --mode pubsub
#                       (--client-publish true) and the clients connect to /ch0 (CHANNELS=C
#                       spreads them over /ch0 … /ch{C-1})
#   --server broadcast  measure benches/peers' peer-broadcast instead of wsd (implies --pubsub)
# Environment:
#   WSD_ARGS       more wsd flags; LOAD_ARGS more wsd-load idle flags, e.g. the
#                  permessage-deflate figures of the README:
#     LOAD_ARGS=--deflate bash benches/idle_rss.sh 10000                     # shared (default)
#     WSD_ARGS='--compression context' \
#     LOAD_ARGS='--deflate --messages-first 4 -s 2KiB' bash benches/idle_rss.sh 10000
#                  (with --messages-first each connection echoes that many messages before
#                  idling, so context windows are full when RSS is read)
#   TLS=1          wss:// (a throwaway self-signed ECDSA P-256 certificate made here); the
#                  connections count once their TLS and WebSocket handshakes completed
#   RATE=R         new connections per second (default 20000; every TLS handshake must finish
#                  within handshake_timeout, so a busy machine needs fewer)
#   PROFILE=debug  measure the debug build (same allocation sizes; the release build is slow)
set -euo pipefail
cd "$(dirname "$0")/.."
pubsub=
server=wsd
counts=()
while [ $# -gt 0 ]; do
  case $1 in
    --pubsub) pubsub=1 ;;
    --server) server=${2:?--server needs wsd, broadcast or uws}; shift ;;
    *) counts+=("$1") ;;
  esac
  shift
done
[ ${#counts[@]} -gt 0 ] || counts=(10000 19000)
case $server in
  wsd) ;;
  broadcast) pubsub=1 ;;
  uws) pubsub=1; [ -x "${UWS_BIN:-}" ] || { echo "--server uws needs UWS_BIN (see benches/fanout.sh)" >&2; exit 2; } ;;
  *) echo "unknown server $server (wsd, broadcast or uws)" >&2; exit 2 ;;
esac

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
if [ "$server" = broadcast ]; then
  (cd benches/peers && cargo build --release --quiet --bin peer-broadcast)
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

start_server() {
  local n=$1
  case $server in
    wsd)
      local mode=()
      [ -n "$pubsub" ] && mode=(--mode pubsub --client-publish true)
      # shellcheck disable=SC2086 # WSD_ARGS is a word list
      "$bin/wsd" --listen "127.0.0.1:$port" --max-connections $((n + 100)) \
        "${mode[@]}" "${server_tls[@]}" ${WSD_ARGS:-} 2>/tmp/wsd-idle-rss.log &
      ;;
    broadcast)
      benches/peers/target/release/peer-broadcast --listen "127.0.0.1:$port" \
        2>/tmp/wsd-idle-rss.log &
      ;;
    uws) "$UWS_BIN" "$port" 2>/tmp/wsd-idle-rss.log & ;;
  esac
}

# Warm the paths a connection takes (handshake, a message each way, close) before the
# baseline; in pub/sub a client's message comes back to it as a publication.
warm_up() {
  if [ -n "$pubsub" ]; then
    "$bin/wsd-load" pubsub --url "$scheme://127.0.0.1:$port/" "${load_tls[@]}" -c 10 -m 100 -q
  else
    # shellcheck disable=SC2086
    "$bin/wsd-load" echo --url "$scheme://127.0.0.1:$port/" "${load_tls[@]}" -c 10 -m 100 -q ${LOAD_ARGS:+--deflate}
  fi
}

channels=()
[ -n "$pubsub" ] && channels=(--channels "${CHANNELS:-1}")

printf '| idle connections | RSS with none | RSS with N | bytes per connection |\n'
printf '|---:|---:|---:|---:|\n'
for n in "${counts[@]}"; do
  port=$((port + 1))
  start_server "$n"
  server_pid=$!
  pids+=("$server_pid")
  wait_for_port "$port"
  warm_up >/dev/null 2>&1
  base=$(rss_kib "$server_pid")
  log=$(mktemp)
  # shellcheck disable=SC2086 # LOAD_ARGS is a word list
  "$bin/wsd-load" idle --url "$scheme://127.0.0.1:$port/" "${load_tls[@]}" -c "$n" \
    "${channels[@]}" ${LOAD_ARGS:-} --src 127.0.0.2-127.0.0.101 --rate "${RATE:-20000}" --hold 300s \
    2>"$log" >/dev/null &
  loader=$!
  pids+=("$loader")
  for _ in $(seq 1 1200); do
    grep -q "^established $n" "$log" && break
    kill -0 "$loader" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  grep -q "^established $n" "$log" || { echo "only: $(tail -c 300 "$log")" >&2; exit 1; }
  # Echoes of --messages-first still in flight settle, and freed buffers go back.
  [[ "${LOAD_ARGS:-}" != *--messages-first* ]] || sleep 3
  with=$(rss_kib "$server_pid")
  per=$(( (with - base) * 1024 / n ))
  printf '| %d | %d KiB | %d KiB | %d B |\n' "$n" "$base" "$with" "$per"
  kill "$loader" "$server_pid" 2>/dev/null || true
  wait "$loader" "$server_pid" 2>/dev/null || true
  rm -f "$log"
done
