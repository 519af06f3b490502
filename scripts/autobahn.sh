#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzingclient against wsd: RFC 6455 conformance (cases 1.* - 10.*),
# permessage-deflate (RFC 7692, cases 12.* and 13.*), and 1.* - 7.*, 10.* again with
# `--compression off`; fail unless every case is OK or INFORMATIONAL (12.*, 13.*: OK only).
#
#   bash scripts/autobahn.sh            # from any directory
#
# Steps: install wstest (once) -> build wsd -> start it (and one with --compression off) on
# free 127.0.0.1 ports -> run one wstest per case group, all at once (each is one Python
# process; wsd serves them all from its one thread) -> judge each group's index.json with
# scripts/autobahn-report.py. Exit 0 = pass; 1 = a case failed, too few cases in the
# report (crash/timeout) or the server died; 2 = the server never listened or another
# harness problem found by this script (a failing install or build exits with its own code).
#
# The test client: wstest (PyPI autobahntestsuite, Python 2 code) in a CPython 2.7
# virtualenv at <repo>/.venv-autobahn, created by virtualenv<20.22 from a Python 3
# bootstrap venv at <repo>/.venv-autobahn-bootstrap, with every package pinned in
# scripts/autobahn-requirements.txt. Installed once; a marker file makes reruns skip it.
# If no CPython 2.7 is found, it falls back (loudly) to `kosoku` (PyPI, Python >= 3.10),
# which runs the same Autobahn case files, installed in <repo>/.venv-autobahn-kosoku.
#
# Environment (all optional):
#   WSD_BIN           wsd binary to test; skips `cargo build --release`
#                     (default <repo>/target/release/wsd, built by this script).
#   WSD_CMD           whole server command to test instead of wsd, word-split; it is run as
#                       $WSD_CMD --listen 127.0.0.1:PORT --max-message-size N --max-frame-size N
#                     e.g. WSD_CMD="python3 /tmp/echo.py" to check the harness with a stand-in.
#                     Skips the cargo build.
#   AUTOBAHN_RUNNER   auto (default: wstest if CPython 2.7 is found, else kosoku) | wstest | kosoku
#   PYTHON27          CPython 2.7 interpreter (default: pyenv's 2.7.18, then python2.7 on PATH)
#   PYTHON3           Python 3 for the bootstrap venv, the report parser and kosoku (default python3)
#   AUTOBAHN_CASES    space-separated case patterns, run alone (default: the groups below)
#   AUTOBAHN_EXPECTED minimum number of cases the report must hold
#                     (default 301 with the default cases, else 1)
#   AUTOBAHN_TIMEOUT  seconds the 1.* - 10.* runs may take (default 900)
#   AUTOBAHN_DEFLATE_TIMEOUT  seconds the 12.* and 13.* runs may take (default 2400)
#   AUTOBAHN_DEFLATE  1 (default) also runs 12.*, 13.* and the --compression off group; 0 not
#   AUTOBAHN_TLS      1: run the main group (1.*-10.*) over wss:// only (wsd serves a throwaway
#                     self-signed certificate made here with openssl; wstest does not verify
#                     it). Reports then go to <repo>/autobahn-reports-tls/. wstest only.
#
# Default groups (run at the same time): main = 1.*-7.*, 9.*, 10.* (301 cases); deflate-a and
# deflate-b = 12.* and 13.* (216, OK only); compression-off = 1.*-7.*, 10.* (247) against
# `wsd --compression off`.
#
# Output: <repo>/autobahn-reports/ (fuzzingclient-GROUP.json specs, wstest-GROUP.log, wsd.log,
# wsd-off.log, servers/ for the main group and servers-GROUP/ for the others: index.json,
# index.html, one JSON/HTML file per case).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS="$REPO/scripts"
VENV="$REPO/.venv-autobahn"
BOOT="$REPO/.venv-autobahn-bootstrap"
KOSOKU_VENV="$REPO/.venv-autobahn-kosoku"
TLS="${AUTOBAHN_TLS:-}"
REPORTS="$REPO/autobahn-reports${TLS:+-tls}"
OUTDIR="$REPORTS/servers"
REQS="$SCRIPTS/autobahn-requirements.txt"

PYTHON3="${PYTHON3:-python3}"
RUNNER="${AUTOBAHN_RUNNER:-auto}"
TIMEOUT="${AUTOBAHN_TIMEOUT:-900}"
DEFLATE_TIMEOUT="${AUTOBAHN_DEFLATE_TIMEOUT:-2400}"
MAX_SIZE=67108864
if [[ -n "${AUTOBAHN_CASES:-}" ]]; then
  read -r -a CASES <<<"$AUTOBAHN_CASES"
  EXPECTED="${AUTOBAHN_EXPECTED:-1}"
else
  # There is no category 8 in the suite (and kosoku rejects a pattern that matches nothing).
  CASES=("1.*" "2.*" "3.*" "4.*" "5.*" "6.*" "7.*" "9.*" "10.*")
  EXPECTED="${AUTOBAHN_EXPECTED:-301}"
fi
# Bootstrap venv (Python 3): the last virtualenv that can still create 2.7 environments.
BOOT_PINS=(virtualenv==20.21.1 distlib==0.3.8 filelock==3.12.2 platformdirs==3.11.0)
KOSOKU_PIN="kosoku==0.1.0"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'autobahn.sh: %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------- 1. test client
find_python27() {
  local cand=() root
  [[ -n "${PYTHON27:-}" ]] && cand+=("$PYTHON27")
  if command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null)"; then
    cand+=("$root/versions/2.7.18/bin/python")
    cand+=("$root"/versions/2.7.*/bin/python)
  fi
  command -v python2.7 >/dev/null 2>&1 && cand+=("$(command -v python2.7)")
  local p
  for p in "${cand[@]}"; do
    if [[ -x "$p" ]] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# Stamp of what an install was made from: a changed pin or interpreter reinstalls.
stamp_of() { { echo "$@"; cat "$REQS"; } | sha256sum | cut -d' ' -f1; }

install_wstest() {
  local py27="$1" marker="$VENV/.autobahn-installed" stamp
  stamp="$(stamp_of wstest "$py27" "${BOOT_PINS[@]}")"
  if [[ -f "$marker" && "$(cat "$marker")" == "$stamp" && -x "$VENV/bin/wstest" ]]; then
    echo "wstest already installed in $VENV"
    return 0
  fi
  log "installing wstest into $VENV (CPython 2.7: $py27)"
  local t0=$SECONDS
  rm -rf "$VENV" "$BOOT"
  "$PYTHON3" -m venv "$BOOT"
  "$BOOT/bin/pip" install --quiet --no-deps "${BOOT_PINS[@]}"
  "$BOOT/bin/virtualenv" --quiet --no-periodic-update -p "$py27" "$VENV"
  "$VENV/bin/pip" install --quiet --no-python-version-warning --no-deps --no-build-isolation -r "$REQS"
  "$VENV/bin/pip" check --no-python-version-warning
  "$VENV/bin/wstest" --autobahnversion
  echo "$stamp" >"$marker"
  echo "wstest installed in $((SECONDS - t0)) s"
}

install_kosoku() {
  local marker="$KOSOKU_VENV/.autobahn-installed" stamp
  stamp="$(stamp_of "$KOSOKU_PIN" "$("$PYTHON3" -c 'import sys; print(sys.executable)')")"
  if [[ -f "$marker" && "$(cat "$marker")" == "$stamp" && -x "$KOSOKU_VENV/bin/kosoku" ]]; then
    echo "kosoku already installed in $KOSOKU_VENV"
    return 0
  fi
  "$PYTHON3" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "kosoku needs Python >= 3.10; $PYTHON3 is older (set PYTHON3)"
  log "installing $KOSOKU_PIN into $KOSOKU_VENV"
  local t0=$SECONDS
  rm -rf "$KOSOKU_VENV"
  "$PYTHON3" -m venv "$KOSOKU_VENV"
  "$KOSOKU_VENV/bin/pip" install --quiet --no-deps "$KOSOKU_PIN"
  echo "$stamp" >"$marker"
  echo "kosoku installed in $((SECONDS - t0)) s"
}

PY27=""
case "$RUNNER" in
  auto)
    if PY27="$(find_python27)"; then
      RUNNER=wstest
    else
      RUNNER=kosoku
      printf '\n*** NOTE: no CPython 2.7 found (set PYTHON27), so the reference wstest cannot run.\n' >&2
      printf '*** FALLING BACK to kosoku, a Python 3 runner of the same Autobahn case files.\n\n' >&2
    fi
    ;;
  wstest) PY27="$(find_python27)" || die "AUTOBAHN_RUNNER=wstest but no CPython 2.7 found (set PYTHON27)" ;;
  kosoku) ;;
  *) die "AUTOBAHN_RUNNER must be auto, wstest or kosoku (got '$RUNNER')" ;;
esac
[[ -z "$TLS" || "$RUNNER" == wstest ]] || die "AUTOBAHN_TLS needs wstest (CPython 2.7)"
if [[ "$RUNNER" == wstest ]]; then install_wstest "$PY27"; else install_kosoku; fi

# ---------------------------------------------------------------- 2. server
if [[ -n "${WSD_CMD:-}" ]]; then
  read -r -a SERVER <<<"$WSD_CMD"
  echo "server under test: WSD_CMD = $WSD_CMD"
else
  if [[ -n "${WSD_BIN:-}" ]]; then
    WSD="$WSD_BIN"
  else
    log "cargo build --release"
    (cd "$REPO" && cargo build --release)
    WSD="$REPO/target/release/wsd"
  fi
  [[ -x "$WSD" ]] || die "wsd binary not found or not executable: $WSD"
  SERVER=("$WSD")
  echo "server under test: $WSD"
fi

mkdir -p "$REPORTS"
free_port() { "$PYTHON3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- case groups
# Each group is one fuzzingclient process with its own report directory, run at the same time
# as the others (the client, Python, is the bottleneck; wsd serves them all from one thread):
#   name | server | minimum cases | timeout (s) | strict (OK only) | case patterns
GROUP_SPECS=()
if [[ -n "${AUTOBAHN_CASES:-}" ]]; then
  GROUP_SPECS+=("main|default|$EXPECTED|$TIMEOUT|no|${CASES[*]}")
else
  GROUP_SPECS+=("main|default|$EXPECTED|$TIMEOUT|no|${CASES[*]}")
  if [[ -z "${WSD_CMD:-}" && -z "$TLS" && "${AUTOBAHN_DEFLATE:-1}" == 1 ]]; then
    # permessage-deflate (RFC 7692): 216 cases, every one OK (no INFORMATIONAL), in two groups
    # of about the same length (measured: 12.3.* is the longest, 13.3.* and 13.4.* the shortest).
    GROUP_SPECS+=("deflate-a|default|90|$DEFLATE_TIMEOUT|yes|12.1.* 12.2.* 12.3.* 13.3.* 13.4.*")
    GROUP_SPECS+=("deflate-b|default|126|$DEFLATE_TIMEOUT|yes|12.4.* 12.5.* 13.1.* 13.2.* 13.5.* 13.6.* 13.7.*")
    # The RFC 6455 cases again with the extension switched off (--compression off): 3.* checks
    # that RSV1 then fails the connection. 9.* (throughput, the same code path) is left out.
    GROUP_SPECS+=("compression-off|off|247|$TIMEOUT|no|1.* 2.* 3.* 4.* 5.* 6.* 7.* 10.*")
  fi
fi

# ---------------------------------------------------------------- 2b. servers
declare -A SERVER_PID=() SERVER_PORT=()
stop_servers() {
  local name pid i
  for name in "${!SERVER_PID[@]}"; do
    pid="${SERVER_PID[$name]}"
    [[ -n "$pid" ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    SERVER_PID[$name]=""
  done
}
CLIENT_PIDS=()
stop_all() {
  local pid
  for pid in "${CLIENT_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  stop_servers
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SCHEME=ws
TLS_ARGS=()
if [[ -n "$TLS" ]]; then
  # Made per run, never committed.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$REPORTS/key.pem" -out "$REPORTS/cert.pem" 2>/dev/null
  SCHEME=wss
  TLS_ARGS=(--tls-cert "$REPORTS/cert.pem" --tls-key "$REPORTS/key.pem")
fi

# start_server NAME [EXTRA ARGS...]: wsd on a free port, logging to $REPORTS/wsd[-NAME].log.
start_server() {
  local name="$1" port logf
  shift
  port="$(free_port)"
  logf="$REPORTS/wsd.log"
  [[ "$name" == default ]] || logf="$REPORTS/wsd-$name.log"
  log "starting server '$name' on 127.0.0.1:$port (log: $logf)"
  "${SERVER[@]}" --listen "127.0.0.1:$port" "${TLS_ARGS[@]}" \
    --max-message-size "$MAX_SIZE" --max-frame-size "$MAX_SIZE" "$@" >"$logf" 2>&1 &
  SERVER_PID[$name]=$!
  SERVER_PORT[$name]=$port
  local i pid=$!
  for ((i = 0; i < 100; i++)); do   # up to 10 s
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2; die "server '$name' exited before listening"; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "server '$name' is accepting (pid $pid)"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$logf" >&2
  die "server '$name' not accepting on 127.0.0.1:$port after 10 s"
}

needed_servers=()
for g in "${GROUP_SPECS[@]}"; do
  IFS='|' read -r _ server _ _ _ _ <<<"$g"
  [[ " ${needed_servers[*]} " == *" $server "* ]] || needed_servers+=("$server")
done
for server in "${needed_servers[@]}"; do
  case "$server" in
    default) start_server default ;;
    off) start_server off --compression off ;;
  esac
done

# ---------------------------------------------------------------- 3. fuzzing runs
# run_group NAME SERVER TIMEOUT OUTDIR PATTERNS...: one fuzzingclient, its log in $REPORTS.
run_group() {
  local name="$1" server="$2" timeout_s="$3" outdir="$4"
  shift 4
  local port="${SERVER_PORT[$server]}" spec="$REPORTS/fuzzingclient-$name.json"
  local logf="$REPORTS/$RUNNER-$name.log" rc=0
  rm -rf "$outdir"   # a stale index.json must never pass for this run
  "$PYTHON3" - "$spec" "$port" "$outdir" "$SCHEME" "$@" <<'PY'
import json, sys
spec_path, port, outdir, scheme, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
spec = {
    "options": {"failByDrop": True},
    "outdir": outdir,
    "servers": [{"agent": "wsd", "url": "%s://127.0.0.1:%s" % (scheme, port)}],
    "cases": cases,
    "exclude-cases": [],
    "exclude-agent-cases": {},
}
with open(spec_path, "w") as f:
    json.dump(spec, f, indent=2)
PY
  local t0=$SECONDS
  if [[ "$RUNNER" == wstest ]]; then
    # Its own working directory, so nothing one run writes relative to its cwd meets another's.
    mkdir -p "$REPORTS/run-$name"
    (cd "$REPORTS/run-$name" && timeout --kill-after=10 "$timeout_s" "$VENV/bin/wstest" -m fuzzingclient -s "$spec") \
      >"$logf" 2>&1 || rc=$?
  else
    local includes=() c
    for c in "$@"; do includes+=(-i "$c"); done
    mkdir -p "$REPORTS/run-$name"
    (cd "$REPORTS/run-$name" && timeout --kill-after=10 "$timeout_s" "$KOSOKU_VENV/bin/kosoku" -m fuzzingclient \
      "${includes[@]}" -o "$outdir" "127.0.0.1:$port") >"$logf" 2>&1 || rc=$?
  fi
  echo "$rc $((SECONDS - t0))" >"$REPORTS/.rc-$name"
}

outdir_of() { if [[ "$1" == main ]]; then echo "$OUTDIR"; else echo "$REPORTS/servers-$1"; fi; }

t0=$SECONDS
for g in "${GROUP_SPECS[@]}"; do
  IFS='|' read -r name server _ timeout_s _ patterns <<<"$g"
  read -r -a pats <<<"$patterns"
  log "running $RUNNER fuzzingclient '$name' against '$server': ${pats[*]} (timeout ${timeout_s} s, log: $REPORTS/$RUNNER-$name.log)"
  rm -f "$REPORTS/.rc-$name"
  run_group "$name" "$server" "$timeout_s" "$(outdir_of "$name")" "${pats[@]}" &
  CLIENT_PIDS+=($!)
done
for pid in "${CLIENT_PIDS[@]}"; do wait "$pid" || true; done
CLIENT_PIDS=()
echo "all fuzzing runs finished in $((SECONDS - t0)) s"

failed=no
for name in "${!SERVER_PID[@]}"; do
  pid="${SERVER_PID[$name]}"
  if ! kill -0 "$pid" 2>/dev/null; then
    failed=yes
    wait "$pid" && server_rc=0 || server_rc=$?
    SERVER_PID[$name]=""
    logf="$REPORTS/wsd.log"
    [[ "$name" == default ]] || logf="$REPORTS/wsd-$name.log"
    printf '\nFAIL: server %s died during the run (exit %s); last lines of %s:\n' \
      "$name" "$server_rc" "$logf" >&2
    tail -n 20 "$logf" >&2
  fi
done
stop_servers

# ---------------------------------------------------------------- 4. verdict
AGENT=(--agent wsd)
[[ "$RUNNER" == wstest ]] || AGENT=()   # kosoku names the agent itself; the report holds just that one
for g in "${GROUP_SPECS[@]}"; do
  IFS='|' read -r name server expected timeout_s strict patterns <<<"$g"
  log "verdict: $name ($patterns against '$server')"
  read -r rc secs <"$REPORTS/.rc-$name" || { rc=2; secs='?'; }
  echo "$RUNNER '$name' finished in $secs s (exit $rc)"
  if [[ "$rc" -ne 0 ]]; then
    [[ "$rc" -eq 124 ]] && echo "$RUNNER '$name' TIMED OUT after $timeout_s s" >&2
    tail -n 20 "$REPORTS/$RUNNER-$name.log" >&2
    failed=yes
  fi
  outdir="$(outdir_of "$name")"
  ok_only=()
  [[ "$strict" == yes ]] && ok_only=(--ok-only)
  "$PYTHON3" "$SCRIPTS/autobahn-report.py" "$outdir/index.json" "${AGENT[@]}" --expected "$expected" \
    "${ok_only[@]}" || failed=yes
  [[ -f "$outdir/index.html" ]] && echo "HTML report: $outdir/index.html"
done
[[ "$failed" == no ]] || exit 1
exit 0
