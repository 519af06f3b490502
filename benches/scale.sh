#!/usr/bin/env bash
# What scaling out costs: the fan-out cells of benches/fanout.sh run three ways, with the same
# subscribers and publications —
#   inproc   one wsd, pub/sub in-process (no broker)
#   broker   one wsd + one redis-server (--broker: every publication goes through Redis)
#   2x       two wsd instances on one port (--reuse-port true: the kernel spreads the
#            connections) + one redis-server carrying publications between them
# and prints deliveries/s, p99 and the CPU µs per delivery of all the server-side processes
# summed (the wsd instances AND Redis), with the ratios broker/inproc and 2x/inproc beside the
# targets of issue 10 (≤ 1.10 and ≤ 1.15).
#
# Usage: benches/scale.sh        (from anywhere; cells x 3 setups x RUNS x ~(DURATION+6) s:
#                                 about 7 minutes with the defaults)
# Environment:
#   DURATION=10      seconds of publishing per run
#   RUNS=3           runs per cell and setup; the median is reported
#   SERVER_CPU=0     core the wsd instances AND redis-server are pinned to (taskset -c)
#   LOAD_CPU=1       core wsd-load is pinned to
#   SETUPS="inproc broker 2x"   a subset, by name
#   CELLS="1x10000 100x100"     a subset of the cells below, by name (1x10000r20 is off by
#                               default: at 20 publications/s the idle loop's wake-ups, not
#                               the deliveries, dominate the CPU)
#   WINDOW=16        publications in flight per channel in the flat-out cells (--window)
#   SUBS=            override every cell's subscriber count (e.g. SUBS=300 for a smoke run)
#   OUT=benches/results/scale-<UTC time>.md
#
# How CPU is measured: wsd-load --server-pid takes the list of server-side pids (each wsd
# instance and redis-server) and reads their user+system time from /proc/PID/stat at the start
# and the end of the measured window (first publication → last delivery), so connection setup
# and teardown are left out; the JSON keeps each pid's share (server_cpu_us_by_pid), from which
# the table splits wsd from Redis. The script also reads /proc itself before and after the whole
# wsd-load run (setup and teardown included) and keeps that in the raw file as a cross-check.
#
# Semantics as in benches/fanout.sh: wsd runs --mode pubsub --client-publish true; wsd-load's
# publishers are WebSocket clients of the channel's path (each also subscribed); every delivery
# is checked (lost, duplicated, out of order). With 2 instances a publisher lands on either one;
# its publication reaches both through Redis, each delivering to its own subscribers. Before a
# broker run starts, every instance must report wsd_broker_up 1 on its /metrics.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
WINDOW=${WINDOW:-16}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SETUPS=${SETUPS:-"inproc broker 2x"}
CELLS=${CELLS:-"1x10000 100x100"}
PORT=${PORT:-9321}
METRICS_PORT=${METRICS_PORT:-9322}   # and METRICS_PORT+1 for the second instance
REDIS_PORT=${REDIS_PORT:-9329}
STAMP=$(date -u +%Y%m%d-%H%M)
OUT=${OUT:-benches/results/scale-$STAMP.md}
RAW=${OUT%.md}.jsonl
LOGDIR=$(mktemp -d /tmp/wsd-scale.XXXXXX)
# 10,000 clients need several source addresses (each gives ~28k ports per server port).
SRC=127.0.0.2-127.0.0.50

# name channels subscribers size publishers rate ("-": flat out)
ALL_CELLS=(
    "1x10000 1 10000 100 1 -"
    "1x10000r20 1 10000 100 1 20"
    "100x100 100 10000 100 1 -"
)

command -v redis-server >/dev/null || bash scripts/test-deps.sh
echo "building wsd and wsd-load (release)…" >&2
cargo build --release --quiet --bins
WSD=target/release/wsd
LOAD=target/release/wsd-load

WSD_PIDS=()
REDIS_PID=
stop_all() {
    for p in "${WSD_PIDS[@]}" $REDIS_PID; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    WSD_PIDS=()
    REDIS_PID=
}
cleanup() {
    stop_all
    rm -rf "$LOGDIR"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    echo "nothing listens on port $1 (logs: $LOGDIR)" >&2
    return 1
}

# Every broker URL of the instance on metrics port $1 reports up.
wait_broker_up() {
    for _ in $(seq 200); do
        if curl -sf "http://127.0.0.1:$1/metrics" | grep -q '^wsd_broker_up{.*} 1$'; then
            return 0
        fi
        sleep 0.05
    done
    echo "the instance on metrics port $1 never saw Redis up (logs: $LOGDIR)" >&2
    return 1
}

start_redis() {
    taskset -c "$SERVER_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --protected-mode no >"$LOGDIR/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_port "$REDIS_PORT"
}

# start_wsd INDEX [extra wsd flags…]
start_wsd() {
    local i=$1
    shift
    RUST_LOG=warn taskset -c "$SERVER_CPU" "$WSD" --listen "127.0.0.1:$PORT" \
        --max-connections 19000 --mode pubsub --client-publish true \
        --metrics-listen "127.0.0.1:$((METRICS_PORT + i))" "$@" >"$LOGDIR/wsd$i.log" 2>&1 &
    WSD_PIDS+=($!)
    wait_port "$((METRICS_PORT + i))"
}

start_setup() {
    local broker=(--broker "redis://127.0.0.1:$REDIS_PORT")
    case $1 in
        inproc) start_wsd 0 ;;
        broker)
            start_redis
            start_wsd 0 "${broker[@]}"
            wait_broker_up "$METRICS_PORT"
            ;;
        2x)
            start_redis
            start_wsd 0 "${broker[@]}" --reuse-port true
            start_wsd 1 "${broker[@]}" --reuse-port true
            wait_broker_up "$METRICS_PORT"
            wait_broker_up "$((METRICS_PORT + 1))"
            ;;
        *) echo "unknown setup $1 (inproc, broker, 2x)" >&2; exit 2 ;;
    esac
    wait_port "$PORT"
}

# Summed user+system clock ticks of the given pids (/proc/PID/stat fields 14 and 15).
ticks() {
    local total=0 p rest
    for p in "$@"; do
        rest=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        # After "pid (comm) ", field 3 (state) is the first: utime is the 12th, stime the 13th.
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

: >"$RAW"
for cell in "${ALL_CELLS[@]}"; do
    read -r name channels subs size publishers rate <<<"$cell"
    [[ " $CELLS " == *" $name "* ]] || continue
    subs=${SUBS:-$subs}
    for run in $(seq "$RUNS"); do
        for setup in $SETUPS; do
            start_setup "$setup"
            pids=("${WSD_PIDS[@]}")
            [[ -n $REDIS_PID ]] && pids+=("$REDIS_PID")
            pid_list=$(IFS=,; echo "${pids[*]}")
            args=(pubsub --url "ws://127.0.0.1:$PORT/" -c "$subs" --channels "$channels"
                -s "$size" --publishers "$publishers" --window "$WINDOW" -d "${DURATION}s" --json -q
                --server-pid "$pid_list" --src "$SRC")
            [[ $rate != - ]] && args+=(--pub-rate "$rate")
            echo "[$name run $run/$RUNS] $setup (server pids $pid_list)" >&2
            t0=$(ticks "${pids[@]}")
            w0=$(date +%s%N)
            if ! json=$(taskset -c "$LOAD_CPU" "$LOAD" "${args[@]}"); then
                echo "  wsd-load reported a failure against $setup: $json" >&2
            fi
            t1=$(ticks "${pids[@]}")
            w1=$(date +%s%N)
            # How the kernel spread the connections, and the deliveries each instance made.
            accepted=() delivered=()
            for i in "${!WSD_PIDS[@]}"; do
                m=$(curl -sf "http://127.0.0.1:$((METRICS_PORT + i))/metrics" || true)
                accepted+=("$(awk '$1 == "wsd_connections_accepted_total" { print $2 }' <<<"$m")")
                delivered+=("$(awk '$1 == "wsd_deliveries_total" { print $2 }' <<<"$m")")
            done
            [[ $setup == 2x ]] && echo "  connections accepted per instance: ${accepted[*]}; deliveries: ${delivered[*]}" >&2
            if [[ $json == \{* ]]; then
                printf '{"cell":"%s","setup":"%s","run":%d,"wsd_pids":[%s],"redis_pid":%s,"accepted":[%s],"deliveries_by_instance":[%s],"whole_run_ticks":%d,"whole_run_s":%.3f,"clk_tck":%d,"result":%s}\n' \
                    "$name" "$setup" "$run" "$(IFS=,; echo "${WSD_PIDS[*]}")" "${REDIS_PID:-null}" \
                    "$(IFS=,; echo "${accepted[*]:-0}")" "$(IFS=,; echo "${delivered[*]:-0}")" \
                    "$((t1 - t0))" "$(awk -v a="$w0" -v b="$w1" 'BEGIN { print (b - a) / 1e9 }')" "$(getconf CLK_TCK)" \
                    "$json" >>"$RAW"
            fi
            stop_all
            # Let TIME_WAIT sockets and the other core settle between runs.
            sleep 1
        done
    done
done

python3 - "$RAW" "$OUT" "$DURATION" "$RUNS" "$SETUPS" "$WINDOW" <<'PY'
import json, statistics, sys, subprocess, platform, os
raw, out, duration, runs, setups, window = sys.argv[1:7]
setups = setups.split()
rows = [json.loads(l) for l in open(raw) if l.strip()]
cells = []
for r in rows:
    if r["cell"] not in cells:
        cells.append(r["cell"])

def per_delivery(r, which):
    """CPU µs per delivery of the wsd instances, of Redis, or of both, over the window."""
    res = r["result"]
    by_pid = res.get("server_cpu_us_by_pid", {})
    n = res["deliveries"]
    if not n or not by_pid or any(v is None for v in by_pid.values()):
        return None
    redis = str(r["redis_pid"]) if r["redis_pid"] is not None else None
    total = 0.0
    for pid, us in by_pid.items():
        if which == "all" or (which == "redis") == (pid == redis):
            total += us
    return total / n

def whole_run(r):
    n = r["result"]["deliveries"]
    return r["whole_run_ticks"] * 1e6 / r["clk_tck"] / n if n else None

def med(cell, setup, f):
    vals = [f(r) for r in rows if r["cell"] == cell and r["setup"] == setup]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def fails(cell, setup):
    return sum(1 for r in rows if r["cell"] == cell and r["setup"] == setup and not r["result"]["ok"])

labels = {
    "1x10000": "1 ch × 10,000 subs × 100 B, flat out",
    "1x10000r20": "1 ch × 10,000 subs × 100 B, 20 publications/s",
    "100x100": "100 ch × 100 subs × 100 B, flat out",
}
names = {"inproc": "in-process (1 wsd)", "broker": "broker (1 wsd + Redis)", "2x": "2 wsd + Redis, one port"}
targets = {"broker": 1.10, "2x": 1.15}
lines = [
    "| cell | setup | deliveries/s | p99 µs | CPU µs/delivery, all | of which wsd | of which Redis | ratio to in-process | target |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
]
verdicts = []
for cell in cells:
    subs = next(r["result"]["subscribers"] for r in rows if r["cell"] == cell)
    label = labels.get(cell, cell)
    if subs != 10000:
        label += f" (with {subs:,} subscribers)"
    base = med(cell, "inproc", lambda r: per_delivery(r, "all"))
    for s in setups:
        allc = med(cell, s, lambda r: per_delivery(r, "all"))
        if allc is None:
            continue
        rate = med(cell, s, lambda r: r["result"]["deliveries_per_s"])
        p99 = med(cell, s, lambda r: r["result"]["latency_us"]["p99"])
        wsd = med(cell, s, lambda r: per_delivery(r, "wsd"))
        redis = med(cell, s, lambda r: per_delivery(r, "redis")) if s != "inproc" else None
        ratio, target = "", ""
        if s != "inproc" and base:
            ratio = f"{allc / base:.2f}"
            target = f"≤ {targets[s]:.2f}"
            ok = allc / base <= targets[s]
            verdicts.append(f"- {label}, {names[s]}: {allc:.3f} µs/delivery = {allc / base:.2f}× in-process "
                            f"({base:.3f}) → target ≤ {targets[s]:.2f} {'met' if ok else 'NOT met'}")
        bad = fails(cell, s)
        flag = f" ({bad} failed runs)" if bad else ""
        redis_txt = f"{redis:.3f}" if redis is not None else "–"
        lines.append(f"| {label} | {names.get(s, s)}{flag} | {rate:,.0f} | {p99:,.0f} | {allc:.3f} | {wsd:.3f} | {redis_txt} | {ratio} | {target} |")
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    commit = "?"
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
head = [
    f"wsd {commit}, {os.cpu_count()} cores ({cpu_model}), Linux {platform.release()}; "
    f"wsd instances and Redis on one core, wsd-load on the other; {duration} s of publishing per run, "
    f"median of {runs} runs; flat out = {window} publications in flight per channel. CPU = user+system "
    "time from /proc/PID/stat over the measured window, summed over every server-side process.",
    "",
]
# What one publication costs through the broker, for docs/capacity.md: the extra CPU per
# delivery times the deliveries per publication, per instance the publication reached (k), and
# Redis's CPU per message it handled (the PUBLISH in, k messages out).
per_pub = ["", "Per publication through the broker (for docs/capacity.md: P = wsd + Redis per publication and instance, R = Redis per message):", ""]
for cell in cells:
    base = med(cell, "inproc", lambda r: per_delivery(r, "all"))
    for s, k in (("broker", 1), ("2x", 2)):
        allc = med(cell, s, lambda r: per_delivery(r, "all"))
        if base is None or allc is None:
            continue
        wsd = med(cell, s, lambda r: per_delivery(r, "wsd"))
        redis = med(cell, s, lambda r: per_delivery(r, "redis"))
        dpp = med(cell, s, lambda r: r["result"]["deliveries"] / max(r["result"]["publications"], 1))
        per_pub.append(f"- {labels.get(cell, cell)}, {names[s]}: {dpp:,.0f} deliveries per publication; "
                       f"P = {(allc - base) * dpp / k:.2f} µs (wsd {(wsd - base) * dpp / k:.2f}, Redis {redis * dpp / k:.2f}); "
                       f"R = {redis * dpp / (1 + k):.2f} µs per message")
cross = ["", "Cross-check, whole wsd-load run (connects and teardown included), all server processes, µs/delivery:", ""]
for cell in cells:
    parts = []
    for s in setups:
        v = med(cell, s, whole_run)
        if v is not None:
            parts.append(f"{s} {v:.3f}")
    cross.append(f"- {labels.get(cell, cell)}: " + ", ".join(parts))
text = "\n".join(head + lines + ["", "Targets (issue 10):", ""] + verdicts + per_pub + cross) + "\n"
open(out, "w").write(text)
print(text)
PY
echo "table saved to $OUT (raw runs in $RAW)" >&2
