#!/usr/bin/env bash
# Flood fairness: p99 echo latency of 100 normal clients with and without one client flooding
# the server with 1 MiB messages (32 in flight, well over 100 MB in the run). The figure is the
# ratio p99(with flooder) / p99(alone), median of ROUNDS runs; the target is at most 5.
# Usage: bash benches/fairness.sh   (env: ROUNDS=3 DURATION=5s)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
duration=${DURATION:-5s}
cargo build --release --quiet --bin wsd --bin wsd-load
port=$((20000 + RANDOM % 20000))
./target/release/wsd --listen "127.0.0.1:$port" 2>/dev/null &
server=$!
flooder=""
trap 'kill $server $flooder 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
url="ws://127.0.0.1:$port/"

p99() { python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["ok"], d; print(d["latency_us"]["p99"])'; }
normal() { ./target/release/wsd-load echo --url "$url" -c 100 -s 1KiB -d "$duration" --json -q 2>/dev/null | p99; }

alone=(); flooded=(); flood_bytes=()
for r in $(seq 1 "$rounds"); do
  alone+=("$(normal)")
  ./target/release/wsd-load echo --url "$url" -c 1 -s 1MiB --binary -p 32 \
    -d "$(( ${duration%s} + 2 ))s" --json -q >/tmp/wsd-flood.json 2>/dev/null &
  flooder=$!
  sleep 1 # let the flood build up before measuring
  flooded+=("$(normal)")
  wait "$flooder"
  flooder=""
  flood_bytes+=("$(python3 -c 'import json; print(json.load(open("/tmp/wsd-flood.json"))["bytes"])')")
  echo "round $r: p99 alone ${alone[-1]} us, with flooder ${flooded[-1]} us, flooder sent ${flood_bytes[-1]} bytes" >&2
done
python3 - "${alone[*]}" "${flooded[*]}" "${flood_bytes[*]}" <<'PY'
import statistics, sys
alone = [float(x) for x in sys.argv[1].split()]
flooded = [float(x) for x in sys.argv[2].split()]
sent = [int(x) for x in sys.argv[3].split()]
a, f = statistics.median(alone), statistics.median(flooded)
print(f"| p99 alone | p99 with flooder | ratio | flooder bytes (median) |")
print(f"|---:|---:|---:|---:|")
print(f"| {a:.0f} us | {f:.0f} us | {f/a:.2f} | {statistics.median(sent)/1e6:.0f} MB |")
PY
