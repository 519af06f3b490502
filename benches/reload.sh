#!/usr/bin/env bash
# Live upgrade under load (issue 11, part 6): with traffic flowing, reload wsd RELOADS times in
# a row (SIGUSR2 to the pid /metrics names in wsd_build_info, waiting for the new process's
# `live upgrade: resumed N connections` line before the next) and print what the clients saw:
# each connection's longest gap between two messages (percentiles over the connections), per
# reload and over the whole run, disconnects and lost/duplicated/reordered messages; the
# handover time of every reload; the RSS and open fds of the fresh process against the one left
# after the last reload. Two workloads, one after the other, each on a fresh wsd:
#   echo     CLIENTS echo clients, each sending one message every INTERVAL and waiting for its
#            echo (wsd-load echo --interval): the stall is the longest gap between two echoes
#   pubsub   CLIENTS subscribers of one channel, PUB_RATE publications/s from one WebSocket
#            publisher (wsd --mode pubsub --client-publish true): the stall is the longest gap
#            between two deliveries
#
# Usage: benches/reload.sh      (from anywhere; per workload: connecting, WARMUP + PERIOD x
#                                (RELOADS + 1) s, teardown — about 2 minutes in all)
# Environment:
#   CLIENTS=10000     echo clients / subscribers
#   INTERVAL=50ms     echo: each client's send interval
#   PUB_RATE=20       pubsub: publications per second (one channel: every subscriber gets each)
#   RELOADS=20        reloads in a row
#   PERIOD=2          seconds from one reload's signal to the next (also the baseline's length)
#   WARMUP=1          seconds of traffic before the baseline period starts (not judged)
#   WORKLOADS="echo pubsub"
#   SERVER_CPU=0      core wsd (and every process it reloads into) is pinned to
#   LOAD_CPU=1        core(s) wsd-load is pinned to (a taskset list: "1-3" with LOAD_THREADS=3)
#   LOAD_THREADS=1    wsd-load's client threads
#   SRC=127.0.0.2-127.0.0.50   source addresses the clients are spread over
#   OUT=benches/results/reload-<UTC time>.md   (the raw JSON and wsd's logs are kept beside it)
#
# Periods: wsd-load starts a new stall period on each SIGUSR1 (a gap counts in the period in
# which it ends). Period 0 is the warm-up, period 1 the baseline (no reload, PERIOD s), period
# k+1 holds reload k: the script marks it, waits 0.25 s (wsd-load sees marks within 0.1 s), then
# sends SIGUSR2. The RSS and fd count of the fresh process are read at the end of the baseline,
# those after the reloads at the end of the last period: same connections, same traffic.
#
# Load: 10,000 clients every 50 ms are 200,000 echoes/s, about what one core of wsd-load (and
# one of wsd) can do at one message in flight (~9 µs each side per echo on loopback); if the
# baseline row's stall is already well above INTERVAL, the load generator (or wsd) is saturated
# and the reload rows measure queueing, not the handover: give wsd-load more cores (LOAD_CPU,
# LOAD_THREADS), or lengthen INTERVAL.
#
# Handover times: "signal → resumed" is from kill -USR2 to the new process's `live upgrade:
# resumed` line (the log is polled every ms); "signal → /metrics" to the first /metrics answer
# naming the new pid; "frozen" is what the old process logs (`took N connections in X ms`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CLIENTS=${CLIENTS:-10000}
export INTERVAL=${INTERVAL:-50ms}
export PUB_RATE=${PUB_RATE:-20}
export RELOADS=${RELOADS:-20}
export PERIOD=${PERIOD:-2}
export WARMUP=${WARMUP:-1}
export WORKLOADS=${WORKLOADS:-"echo pubsub"}
export SERVER_CPU=${SERVER_CPU:-0}
export LOAD_CPU=${LOAD_CPU:-1}
export LOAD_THREADS=${LOAD_THREADS:-1}
export SRC=${SRC:-127.0.0.2-127.0.0.50}
export PORT=${PORT:-9331}
export METRICS_PORT=${METRICS_PORT:-9332}
STAMP=$(date -u +%Y%m%d-%H%M)
export OUT=${OUT:-benches/results/reload-$STAMP.md}

echo "building wsd and wsd-load (release)…" >&2
cargo build --release --quiet --bins
mkdir -p "$(dirname "$OUT")"

exec python3 - <<'PY'
import json, os, re, signal, statistics, subprocess, sys, time, urllib.request, platform

E = os.environ
clients, interval, pub_rate = int(E["CLIENTS"]), E["INTERVAL"], E["PUB_RATE"]
reloads, period, warmup = int(E["RELOADS"]), float(E["PERIOD"]), float(E["WARMUP"])
port, mport = int(E["PORT"]), int(E["METRICS_PORT"])
out = E["OUT"]
base = out[:-3] if out.endswith(".md") else out
WSD, LOAD = "target/release/wsd", "target/release/wsd-load"
# How long a reload may take before the script gives up on it (wsd's own limit is shorter).
RELOAD_LIMIT = 30.0
# wsd-load notices a SIGUSR1 within its main tick (0.1 s): the reload waits longer than that.
MARK_SETTLE = 0.25

def log(msg):
    print(msg, file=sys.stderr, flush=True)

def metrics_pid():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as r:
            m = re.search(r'wsd_build_info\{[^}]*pid="(\d+)"', r.read().decode())
            return int(m.group(1)) if m else None
    except OSError:
        return None

def proc_figures(pid):
    """VmRSS and open descriptors of a process (None: it is gone)."""
    try:
        rss = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return {"pid": pid, "rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except OSError:
        return None

class Log:
    """wsd's log file (every process it reloads into writes to the same one), read as it grows."""
    def __init__(self, path):
        self.f = open(path, "r")
        self.buf = ""
    def lines(self):
        self.buf += self.f.read()
        *done, self.buf = self.buf.split("\n")
        return done

def wait_for(pred, limit, step=0.001):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None

def run(workload):
    wsd_log = f"{base}.{workload}.wsd.log"
    cmd = ["taskset", "-c", E["SERVER_CPU"], WSD, "--listen", f"127.0.0.1:{port}",
           "--metrics-listen", f"127.0.0.1:{mport}", "--max-connections", str(clients + 1000)]
    if workload == "pubsub":
        cmd += ["--mode", "pubsub", "--client-publish", "true"]
    env = dict(os.environ, RUST_LOG="info")
    with open(wsd_log, "w") as lf:
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=lf, env=env)
    wsd_lines = Log(wsd_log)
    load = None
    # Every process wsd reloads into: the last one is killed at the end, whatever happened.
    pids = [server.pid]
    try:
        first = wait_for(metrics_pid, 10, 0.05)
        if first != server.pid:
            raise SystemExit(f"wsd did not start (see {wsd_log})")
        lcmd = ["taskset", "-c", E["LOAD_CPU"], LOAD, workload, "--url", f"ws://127.0.0.1:{port}/",
                "-c", str(clients), "--src", E["SRC"], "-d", "24h", "--json", "-q",
                "--threads", E["LOAD_THREADS"]]
        if workload == "echo":
            lcmd += ["--interval", interval]
        else:
            lcmd += ["--channels", "1", "--pub-rate", pub_rate]
        load_log = f"{base}.{workload}.load.log"
        with open(load_log, "w") as lf:
            load = subprocess.Popen(lcmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=lf, text=True)
        def load_said():
            with open(load_log) as f:
                return f.read()
        wait_for(lambda: "established" in load_said() or load.poll() is not None, 300, 0.05)
        est = load_said().strip()
        log(f"[{workload}] wsd-load: {est}")
        if load.poll() is not None:
            raise SystemExit(f"wsd-load ended early: {est}")
        mark = lambda: load.send_signal(signal.SIGUSR1)
        time.sleep(warmup)
        mark()                                   # period 1: the baseline
        time.sleep(period)
        fresh = proc_figures(server.pid)
        handovers, failures = [], []
        pid = server.pid
        for k in range(1, reloads + 1):
            mark()                               # period k+1: reload k
            time.sleep(MARK_SETTLE)
            pid = metrics_pid() or pid
            wsd_lines.lines()                    # skip what came before
            t0 = time.monotonic()
            os.kill(pid, signal.SIGUSR2)
            h = {"reload": k, "old_pid": pid}
            def seen():
                for line in wsd_lines.lines():
                    m = re.search(r"reload: pid (\d+) took (\d+) connections in (\d+) ms", line)
                    if m:
                        h.update(new_pid=int(m.group(1)), moved=int(m.group(2)), frozen_ms=int(m.group(3)))
                    m = re.search(r"live upgrade: resumed (\d+) connections \((\d+) could not", line)
                    if m:
                        h.update(resumed=int(m.group(1)), not_restored=int(m.group(2)),
                                 resumed_ms=(time.monotonic() - t0) * 1e3)
                    if "reload failed" in line or "reload refused" in line:
                        h["failed"] = line.strip()
                return "resumed_ms" in h or "failed" in h
            wait_for(seen, RELOAD_LIMIT)
            # Only once the log says resumed: polling /metrics during the freeze would load it.
            new = wait_for(lambda: (p := metrics_pid()) not in (None, pid) and p, RELOAD_LIMIT, 0.002)
            if new:
                h["metrics_ms"] = (time.monotonic() - t0) * 1e3
                h.setdefault("new_pid", new)
            if "resumed_ms" not in h or not new:
                h.setdefault("failed", "no `live upgrade: resumed` line or new pid in time")
            handovers.append(h)
            if "failed" in h:
                failures.append(h)
                log(f"[{workload}] reload {k}: FAILED: {h['failed']}")
            else:
                pid = h["new_pid"]
                pids.append(pid)
                log(f"[{workload}] reload {k}: pid {h['old_pid']} → {pid}, signal → resumed "
                    f"{h['resumed_ms']:.1f} ms, → /metrics {h['metrics_ms']:.1f} ms, "
                    f"frozen {h.get('frozen_ms', '?')} ms, {h.get('moved', '?')} connections")
            rest = period - (time.monotonic() - t0) - MARK_SETTLE
            if rest > 0:
                time.sleep(rest)
        after = proc_figures(pid)
        load.send_signal(signal.SIGINT)
        stdout, _ = load.communicate(timeout=120)
        result = json.loads(stdout) if stdout.strip().startswith("{") else None
        return {"workload": workload, "fresh": fresh, "after": after, "handovers": handovers,
                "failures": len(failures), "result": result, "final_pid": pid}
    finally:
        if load and load.poll() is None:
            load.kill()
        for p in reversed(pids + [metrics_pid() or server.pid]):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        server.wait()

def pct(vals, q):
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(q * len(vals)))] if vals else float("nan")

runs = []
with open(f"{base}.jsonl", "w") as raw:
    for w in E["WORKLOADS"].split():
        r = run(w)
        runs.append(r)
        raw.write(json.dumps(r) + "\n")
        time.sleep(1)

def verdict(ok):
    return "met" if ok else "NOT met"

lines = []
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines.append(f"wsd {commit}, {os.cpu_count()} cores ({cpu_model}), Linux {platform.release()}; wsd on one core, "
             f"wsd-load on the other; {reloads} reloads, one every {period:g} s; baseline = {period:g} s without a reload.")
for r in runs:
    w, j = r["workload"], r["result"]
    lines.append("")
    if w == "echo":
        lines.append(f"## echo: {clients:,} clients, one message every {interval} each")
    else:
        lines.append(f"## pubsub: {clients:,} subscribers of one channel, {pub_rate} publications/s")
    lines.append("")
    if j is None:
        lines.append("wsd-load gave no report (see the .load.log beside this file).")
        continue
    periods = j["stall_periods_ms"]
    lines.append("| period | connections | stall p50 ms | stall p99 ms | stall max ms | dropped |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for k, p in enumerate(periods):
        name = "warm-up" if k == 0 else "baseline (no reload)" if k == 1 else f"reload {k - 1}"
        lines.append(f"| {name} | {p['connections']:,} | {p['p50']:.1f} | {p['p99']:.1f} | {p['max']:.1f} | {p['disconnects']} |")
    reload_periods = periods[2:]
    base_p99 = periods[1]["p99"] if len(periods) > 1 else float("nan")
    base_max = periods[1]["max"] if len(periods) > 1 else float("nan")
    s = j["stall_ms"]
    lines.append(f"| whole run (each connection's longest gap) | {s['connections']:,} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} | {j['disconnects']} |")
    lines.append("")
    hs = [h for h in r["handovers"] if "failed" not in h]
    if hs:
        res = [h["resumed_ms"] for h in hs]
        met = [h["metrics_ms"] for h in hs]
        fro = [h["frozen_ms"] for h in hs if "frozen_ms" in h]
        lines.append(f"Handover, {len(hs)} of {len(r['handovers'])} reloads succeeded "
                     f"(ms; median / max): signal → resumed {statistics.median(res):.1f} / {max(res):.1f}; "
                     f"signal → /metrics from the new pid {statistics.median(met):.1f} / {max(met):.1f}; "
                     f"old process frozen {statistics.median(fro) if fro else float('nan'):.0f} / {max(fro) if fro else float('nan'):.0f}.")
        lines.append("")
        lines.append("Each reload, signal → resumed ms: " + ", ".join(f"{x:.0f}" for x in res))
        moved = sorted({h.get("moved") for h in hs})
        lines.append(f"Connections handed over per reload: {', '.join(str(m) for m in moved)}; "
                     f"not restored: {sum(h.get('not_restored', 0) for h in hs)}.")
    for h in r["handovers"]:
        if "failed" in h:
            lines.append(f"- reload {h['reload']} failed: {h['failed']}")
    lines.append("")
    f0, f1 = r["fresh"], r["after"]
    if f0 and f1:
        drss = (f1["rss_kib"] - f0["rss_kib"]) / f0["rss_kib"] * 100
        dfd = (f1["fds"] - f0["fds"]) / f0["fds"] * 100
        lines.append(f"Fresh start: RSS {f0['rss_kib']:,} KiB, {f0['fds']:,} fds; after {reloads} reloads: "
                     f"RSS {f1['rss_kib']:,} KiB ({drss:+.1f} %), {f1['fds']:,} fds ({dfd:+.1f} %).")
    else:
        drss = dfd = float("nan")
        lines.append(f"RSS and fds: wsd was gone when they were read (fresh: {f0}, after: {f1}).")
    lines.append("")
    if w == "echo":
        bad = {"mismatched (wrong, duplicated or reordered)": j["mismatches"], "missing (lost)": j["missing_echoes"]}
        traffic = f"{j['messages']:,} echoes"
    else:
        bad = {"lost": j["lost_deliveries"], "duplicated": j["duplicated"], "out of order": j["out_of_order"],
               "malformed": j["malformed"], "misrouted": j["misrouted"]}
        traffic = f"{j['deliveries']:,} deliveries of {j['publications']:,} publications"
    disconnects = j["disconnects"] + j["connect_failures"]["total"] + (j["opened"] != j["connections"])
    worst_p99 = max((p["p99"] for p in reload_periods), default=float("nan"))
    worst_max = max((p["max"] for p in reload_periods), default=float("nan"))
    lines.append(f"Checked {traffic}: " + ", ".join(f"{v} {k}" for k, v in bad.items()) + f"; close codes {j['close_codes']}.")
    lines.append("")
    lines.append("| target | measured | verdict |")
    lines.append("|---|---|---|")
    lines.append(f"| 0 disconnects | {disconnects} | {verdict(disconnects == 0)} |")
    lines.append(f"| 0 lost, duplicated or reordered | {sum(bad.values())} | {verdict(sum(bad.values()) == 0)} |")
    lines.append(f"| stall p99 ≤ 100 ms (whole run incl. warm-up; worst reload) | {s['p99']:.1f} ms; {worst_p99:.1f} ms | {verdict(s['p99'] <= 100)} |")
    lines.append(f"| (baseline without reloads, for scale) | p99 {base_p99:.1f} ms, max {base_max:.1f} ms | |")
    lines.append(f"| stall max ≤ 250 ms (whole run; worst reload) | {s['max']:.1f} ms; {worst_max:.1f} ms | {verdict(s['max'] <= 250)} |")
    lines.append(f"| RSS within 5 % of a fresh start | {drss:+.1f} % | {verdict(abs(drss) <= 5)} |")
    lines.append(f"| open fds within 5 % of a fresh start | {dfd:+.1f} % | {verdict(abs(dfd) <= 5)} |")
    lines.append(f"| {reloads} reloads succeed | {reloads - r['failures']} | {verdict(r['failures'] == 0)} |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
log(f"table saved to {out} (raw: {base}.jsonl; logs: {base}.*.log)")
PY
