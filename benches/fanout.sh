#!/usr/bin/env bash
# wsd's pub/sub fan-out side by side with the broadcast server a Rust user would write instead
# (benches/peers peer-broadcast: tokio current_thread, tokio-tungstenite, one
# tokio::sync::broadcast channel per path), driven by the same `wsd-load pubsub --publish ws`
# one server after the other, plus the memory of idle subscribed connections.
#
# Usage: benches/fanout.sh        (from anywhere; 4 cells x 2 servers x RUNS x ~(DURATION+5) s,
#                                  then the idle-RSS cell: 2 servers x 2 counts, ~1 min)
# Environment:
#   DURATION=10      seconds of publishing per run
#   RUNS=3           runs per cell and server; the median is reported
#   SERVER_CPU=0     core the server is pinned to (taskset -c)
#   LOAD_CPU=1       core wsd-load is pinned to
#   SERVERS="wsd broadcast"   add wsd-api / broadcast-api to publish through the HTTP API
#                             instead (--publishers then counts HTTP connections in all, not
#                             WebSocket publishers per channel); add uws to measure
#                             uWebSockets side by side (needs UWS_BIN)
#   UWS_BIN=         a uWebSockets pub/sub server taking its port as its only argument, with
#                    the semantics below (path = channel; a client's message goes out with
#                    app.publish, so the sender gets it too; compression off). No registry the
#                    test machines reach carries uWebSockets, so it is built by hand from its
#                    repository (uWebSockets + uSockets, `g++ -O3 -flto`, LIBUS_NO_SSL) and
#                    never by these scripts; the program is 30 lines around `App().ws<>()`.
#   CELLS="1x10000 1x10000r20 100x100 1000x1KiBp8"   a subset of the cells below, by name
#   WINDOW=16        publications in flight per channel in the flat-out cells (--window)
#   IDLE="10000 19000"        idle subscribed connections measured (IDLE= skips the cell)
#   OUT=benches/results/fanout-<UTC time>.md
#
# Semantics: wsd runs `--mode pubsub --client-publish true`, so a client's data message is
# published to its path's channel and delivered to every subscriber, the sender included;
# peer-broadcast does the same. wsd-load's publishers are WebSocket clients of the channel's
# path (P per channel), its subscribers are -c clients spread over --channels paths /ch0…; every
# delivery is checked (lost, duplicated, out of order per channel and publisher). Flat-out cells
# keep WINDOW publications per channel in flight, so they measure delivering, not buffering;
# their p99 is bounded by that queue (about WINDOW x subscribers / deliveries per second), the
# same for both servers.
#
# Per cell it reports deliveries/s, p99 publish→deliver latency, the server's CPU µs per
# delivery (user+system time of the server process from /proc/PID/stat over the measured
# window, divided by the deliveries; wsd-load --server-pid samples it), wsd-load's own CPU µs per
# delivery, and the ratio wsd/peer of the server figure. On two cores CPU per delivery, not
# deliveries/s, is what ranks the servers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
WINDOW=${WINDOW:-16}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SERVERS=${SERVERS:-"wsd broadcast"}
IDLE=${IDLE-"10000 19000"}
PORT=${PORT:-9311}
API_PORT=${API_PORT:-9312}
STAMP=$(date -u +%Y%m%d-%H%M)
OUT=${OUT:-benches/results/fanout-$STAMP.md}
RAW=${OUT%.md}.jsonl
# 10,000 clients need several source addresses (each gives ~28k ports per server port).
SRC=127.0.0.2-127.0.0.50

# name channels subscribers size publishers rate ("-": flat out)
ALL_CELLS=(
    "1x10000 1 10000 100 1 -"
    "1x10000r20 1 10000 100 1 20"
    "100x100 100 10000 100 1 -"
    "1000x1KiBp8 1 1000 1024 8 -"
)

echo "building wsd, wsd-load and the peers (release)…" >&2
cargo build --release --quiet --bins
(cd benches/peers && cargo build --release --quiet)

WSD=target/release/wsd
LOAD=target/release/wsd-load
PEERS=benches/peers/target/release

server_cmd() {
    local addr=127.0.0.1:$PORT api=127.0.0.1:$API_PORT
    case $1 in
        wsd) echo "$WSD --listen $addr --max-connections 19000 --mode pubsub --client-publish true" ;;
        wsd-api) echo "$WSD --listen $addr --max-connections 19000 --mode pubsub --api-listen $api" ;;
        broadcast) echo "$PEERS/peer-broadcast --listen $addr" ;;
        broadcast-api) echo "$PEERS/peer-broadcast --listen $addr --api-listen $api" ;;
        uws) echo "${UWS_BIN:?SERVERS=uws needs UWS_BIN} $PORT" ;;
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
trap stop_server EXIT

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
    read -r name channels subs size publishers rate <<<"$cell"
    if [[ -n ${CELLS:-} && " $CELLS " != *" $name "* ]]; then
        continue
    fi
    for run in $(seq "$RUNS"); do
        for server in $SERVERS; do
            start_server "$server"
            args=(pubsub --url "ws://127.0.0.1:$PORT/" -c "$subs" --channels "$channels"
                -s "$size" --publishers "$publishers" --window "$WINDOW" -d "${DURATION}s" --json -q
                --server-pid "$SERVER_PID" --src "$SRC")
            [[ $rate != - ]] && args+=(--pub-rate "$rate")
            [[ $server == *-api ]] && args+=(--publish-api "http://127.0.0.1:$API_PORT")
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
            sleep 1
        done
    done
done

# Idle subscribed connections: RSS per connection, per server (benches/idle_rss.sh --pubsub).
IDLE_MD=${OUT%.md}.idle.md
: >"$IDLE_MD"
if [[ -n $IDLE ]]; then
    for server in $SERVERS; do
        [[ $server == *-api ]] && continue
        echo "[idle RSS] $server" >&2
        {
            echo "$server:"
            echo
            # shellcheck disable=SC2086
            bash benches/idle_rss.sh --pubsub --server "$server" $IDLE
            echo
        } >>"$IDLE_MD" || echo "  idle RSS against $server failed" >&2
    done
fi

python3 - "$RAW" "$OUT" "$DURATION" "$RUNS" "$SERVERS" "$IDLE_MD" "$WINDOW" <<'PY'
import json, statistics, sys, subprocess, platform, os
raw, out, duration, runs, servers, idle_md, window = sys.argv[1:8]
servers = servers.split()
rows = [json.loads(l) for l in open(raw) if l.strip()]
cells = []
for r in rows:
    if r["cell"] not in cells:
        cells.append(r["cell"])

def med(cell, server, f):
    vals = [f(r["result"]) for r in rows if r["cell"] == cell and r["server"] == server]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def fails(cell, server):
    return sum(1 for r in rows if r["cell"] == cell and r["server"] == server and not r["result"]["ok"])

labels = {
    "1x10000": "1 ch × 10,000 subs × 100 B, flat out",
    "1x10000r20": "1 ch × 10,000 subs × 100 B, 20 publications/s",
    "100x100": "100 ch × 100 subs × 100 B, flat out",
    "1000x1KiBp8": "1 ch × 1,000 subs × 1 KiB, 8 publishers, flat out",
}
peer_of = {"wsd": "broadcast", "wsd-api": "broadcast-api"}
uws = "uws" in servers
lines = []
lines.append("| cell | server | publications/s | deliveries/s | p99 µs | server CPU µs/delivery | client CPU µs/delivery | wsd/peer server µs/delivery |" + (" wsd/uWS |" if uws else ""))
lines.append("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if uws else ""))
for cell in cells:
    cpu = {s: med(cell, s, lambda j: j["server_cpu_us_per_delivery"]) for s in servers}
    for s in servers:
        if cpu[s] is None:
            continue
        pubs = med(cell, s, lambda j: j["publications_per_s"])
        rate = med(cell, s, lambda j: j["deliveries_per_s"])
        p99 = med(cell, s, lambda j: j["latency_us"]["p99"])
        client = med(cell, s, lambda j: j["client_cpu_us_per_delivery"])
        ratio = ""
        peer = peer_of.get(s)
        if peer and cpu.get(peer):
            ratio = f"{cpu[s] / cpu[peer]:.2f}"
        bad = fails(cell, s)
        flag = f" ({bad} failed runs)" if bad else ""
        extra = ""
        if uws:
            extra = f" {cpu[s] / cpu['uws']:.2f} |" if s == "wsd" and cpu.get("uws") else " |"
        lines.append(f"| {labels.get(cell, cell)} | {s}{flag} | {pubs:,.0f} | {rate:,.0f} | {p99:,.0f} | {cpu[s]:.3f} | {client:.3f} | {ratio} |{extra}")
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    commit = "?"
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
head = [
    f"wsd {commit}, {os.cpu_count()} cores ({cpu_model}), Linux {platform.release()}; "
    f"server on one core, wsd-load on the other; {duration} s of publishing per run, median of {runs} runs; "
    f"flat out = {window} publications in flight per channel.",
    "",
]
idle = open(idle_md).read().strip()
tail = ["", "Idle subscribed connections (RSS with N − RSS with none) / N:", "", idle] if idle else []
text = "\n".join(head + lines + tail) + "\n"
open(out, "w").write(text)
print(text)
PY
rm -f "$IDLE_MD"
echo "table saved to $OUT (raw runs in $RAW)" >&2
