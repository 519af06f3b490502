#!/usr/bin/env bash
# wsd side by side with peer echo servers (tokio-tungstenite on a current_thread runtime, and
# fastwebsockets), driven by the same `wsd-load echo` one server after the other.
#
# Usage: benches/compare.sh            (from anywhere; ~6 cells x 3 servers x RUNS x DURATION s)
# Environment:
#   DURATION=10      seconds of measured echo traffic per run
#   RUNS=3           runs per cell and server; the median is reported
#   SERVER_CPU=0     core the server is pinned to (taskset -c)
#   LOAD_CPU=1       core wsd-load is pinned to
#   SERVERS="wsd tungstenite fastwebsockets"   (add wsd-alt to A/B another wsd build:)
#   WSD_ALT=path/to/other/wsd                    the binary run as server "wsd-alt"
#   CELLS="1x16 100x1024 ..."   a subset of the cells below, by name
#   OUT=benches/results/compare-<UTC time>.md
#   TLS=1            everything over wss:// (a throwaway self-signed ECDSA P-256 certificate made
#                    here); the peer is then tokio-tungstenite behind tokio-rustls:
#                    SERVERS defaults to "wsd tungstenite-rustls"
#
# Per cell it reports messages/s, p99 latency, the server's CPU µs per message (user+system
# time of the server process from /proc/PID/stat over the measured window, divided by the
# messages; wsd-load --server-pid samples it), wsd-load's own CPU µs per message (getrusage),
# and the ratio wsd/peer of the server figure. On two cores a fast server outruns any client,
# so CPU per message, not messages/s, is what ranks the servers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TLS=${TLS:-}
if [[ -n $TLS ]]; then
    SERVERS=${SERVERS:-"wsd tungstenite-rustls"}
else
    SERVERS=${SERVERS:-"wsd tungstenite fastwebsockets"}
fi
PORT=${PORT:-9301}
STAMP=$(date -u +%Y%m%d-%H%M)
OUT=${OUT:-benches/results/compare${TLS:+-tls}-$STAMP.md}
RAW=${OUT%.md}.jsonl

# name connections size pipeline kind
ALL_CELLS=(
    "1x16 1 16 1 text"
    "100x1024 100 1024 1 text"
    "500x512 500 512 1 text"
    "1000x16 1000 16 1 text"
    "100x16p8 100 16 8 text"
    "10x64KiB 10 65536 1 binary"
)

echo "building wsd, wsd-load and the peers (release)…" >&2
cargo build --release --quiet --bins
(cd benches/peers && cargo build --release --quiet)

WSD=target/release/wsd
LOAD=target/release/wsd-load
PEERS=benches/peers/target/release
SCHEME=ws
WSD_TLS=""
LOAD_TLS=()
if [[ -n $TLS ]]; then
    CERTS=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -keyout "$CERTS/key.pem" -out "$CERTS/cert.pem" 2>/dev/null
    SCHEME=wss
    WSD_TLS="--tls-cert $CERTS/cert.pem --tls-key $CERTS/key.pem"
    LOAD_TLS=(--insecure)
fi

server_cmd() {
    local addr=127.0.0.1:$PORT
    case $1 in
        wsd) echo "$WSD --listen $addr --max-connections 19000 $WSD_TLS" ;;
        wsd-alt) echo "${WSD_ALT:?set WSD_ALT to a wsd binary} --listen $addr --max-connections 19000 $WSD_TLS" ;;
        tungstenite-rustls) echo "$PEERS/peer-tungstenite-rustls --listen $addr --cert $CERTS/cert.pem --key $CERTS/key.pem" ;;
        tungstenite) echo "$PEERS/peer-tungstenite --listen $addr" ;;
        fastwebsockets) echo "$PEERS/peer-fastwebsockets --listen $addr" ;;
        *) echo "unknown server $1" >&2; exit 2 ;;
    esac
}

SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap 'stop_server; [[ -z ${CERTS:-} ]] || rm -rf "$CERTS"' EXIT

start_server() {
    # shellcheck disable=SC2046
    RUST_LOG=warn taskset -c "$SERVER_CPU" $(server_cmd "$1") >/dev/null 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    echo "$1 did not start listening on port $PORT" >&2
    exit 1
}

: >"$RAW"
for cell in "${ALL_CELLS[@]}"; do
    read -r name conns size pipeline kind <<<"$cell"
    if [[ -n ${CELLS:-} && " $CELLS " != *" $name "* ]]; then
        continue
    fi
    for run in $(seq "$RUNS"); do
        for server in $SERVERS; do
            start_server "$server"
            args=(echo --url "$SCHEME://127.0.0.1:$PORT/" "${LOAD_TLS[@]}" -c "$conns" -s "$size" -p "$pipeline"
                -d "${DURATION}s" --json -q --server-pid "$SERVER_PID"
                --src 127.0.0.2-127.0.0.200)
            [[ $kind == binary ]] && args+=(--binary)
            echo "[$name run $run/$RUNS] $server" >&2
            if ! json=$(taskset -c "$LOAD_CPU" "$LOAD" "${args[@]}"); then
                echo "  wsd-load reported a failure against $server: $json" >&2
            fi
            if [[ $json == \{* ]]; then
                printf '{"cell":"%s","server":"%s","run":%d,"result":%s}\n' \
                    "$name" "$server" "$run" "$json" >>"$RAW"
            fi
            stop_server
            # Let TIME_WAIT sockets and the other core settle between runs.
            sleep 0.5
        done
    done
done

python3 - "$RAW" "$OUT" "$DURATION" "$RUNS" "$SERVERS" <<'PY'
import json, statistics, sys, subprocess, platform, os
raw, out, duration, runs, servers = sys.argv[1:6]
servers = servers.split()
rows = [json.loads(l) for l in open(raw) if l.strip()]
cells = []
for r in rows:
    if r["cell"] not in cells:
        cells.append(r["cell"])

def med(cell, server, f):
    vals = [f(r["result"]) for r in rows if r["cell"] == cell and r["server"] == server]
    return statistics.median(vals) if vals else None

def fails(cell, server):
    return sum(1 for r in rows if r["cell"] == cell and r["server"] == server and not r["result"]["ok"])

labels = {
    "1x16": "1 conn × 16 B", "100x1024": "100 conns × 1 KiB", "500x512": "500 conns × 512 B",
    "1000x16": "1,000 conns × 16 B", "100x16p8": "100 conns × 16 B, pipeline 8",
    "10x64KiB": "10 conns × 64 KiB binary",
}
peers = [s for s in servers if s != "wsd"]
lines = []
lines.append("| cell | server | messages/s | p99 µs | server CPU µs/msg | client CPU µs/msg | wsd/peer server µs/msg |")
lines.append("|---|---|---:|---:|---:|---:|---:|")
verdicts = []
for cell in cells:
    cpu = {s: med(cell, s, lambda j: j["server_cpu_us_per_msg"]) for s in servers}
    p99 = {s: med(cell, s, lambda j: j["latency_us"]["p99"]) for s in servers}
    for s in servers:
        if cpu[s] is None:
            continue
        rate = med(cell, s, lambda j: j["messages_per_s"])
        client = med(cell, s, lambda j: j["client_cpu_us_per_msg"])
        ratio = ""
        if s != "wsd" and cpu.get("wsd") and cpu[s]:
            ratio = f"{cpu['wsd'] / cpu[s]:.2f}"
        bad = fails(cell, s)
        flag = f" ({bad} failed runs)" if bad else ""
        lines.append(f"| {labels.get(cell, cell)} | {s}{flag} | {rate:,.0f} | {p99[s]:,.0f} | {cpu[s]:.2f} | {client:.2f} | {ratio} |")
    if "wsd" in cpu and cpu["wsd"] and any(cpu.get(p) for p in peers):
        best = min(cpu[p] for p in peers if cpu.get(p))
        best_p99 = min(p99[p] for p in peers if p99.get(p))
        ok = cpu["wsd"] <= 0.8 * best and p99["wsd"] <= best_p99
        verdicts.append(f"- {labels.get(cell, cell)}: wsd {cpu['wsd']:.2f} µs/msg = {cpu['wsd'] / best:.2f}× the better peer "
                        f"({best:.2f}); p99 {p99['wsd']:,.0f} µs vs {best_p99:,.0f} µs → target {'met' if ok else 'NOT met'}")
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    commit = "?"
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
head = [
    f"wsd {commit}, {os.cpu_count()} cores ({cpu_model}), Linux {platform.release()}; "
    f"server on one core, wsd-load on the other; {duration} s per run, median of {runs} runs.",
    "",
]
text = "\n".join(head + lines + ["", "Target (server CPU/msg ≤ 0.8× the better peer, p99 no worse):", ""] + verdicts) + "\n"
open(out, "w").write(text)
print(text)
PY
echo "table saved to $OUT (raw runs in $RAW)" >&2
