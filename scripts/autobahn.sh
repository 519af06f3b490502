#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzingclient (RFC 6455 conformance, cases 1.* - 10.*)
# against wsd and fail unless every case is OK or INFORMATIONAL.
#
#   bash scripts/autobahn.sh            # from any directory
#
# Steps: install wstest (once) -> build wsd -> start it on a free 127.0.0.1 port ->
# run wstest -> judge <repo>/autobahn-reports/servers/index.json with
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
#   AUTOBAHN_CASES    space-separated case patterns (default "1.* ... 7.* 9.* 10.*", all of 1-10)
#   AUTOBAHN_EXPECTED minimum number of cases the report must hold
#                     (default 301 with the default cases, else 1)
#   AUTOBAHN_TIMEOUT  seconds the whole fuzzing run may take (default 600)
#   AUTOBAHN_TLS      1: run the cases over wss:// (wsd serves a throwaway self-signed certificate
#                     made here with openssl; wstest does not verify it). Reports then go to
#                     <repo>/autobahn-reports-tls/. wstest only: kosoku has no wss://.
#
# Output: <repo>/autobahn-reports/ (fuzzingclient.json spec, wstest.log, wsd.log,
# servers/index.json, servers/index.html, one JSON/HTML file per case).
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
TIMEOUT="${AUTOBAHN_TIMEOUT:-600}"
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
if [[ "$RUNNER" == wstest ]]; then install_wstest "$PY27"; else install_kosoku; fi
[[ -z "$TLS" || "$RUNNER" == wstest ]] || die "AUTOBAHN_TLS needs wstest (CPython 2.7)"

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

PORT="$("$PYTHON3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$REPORTS"
rm -rf "$OUTDIR"   # a stale index.json must never pass for this run
SCHEME=ws
TLS_ARGS=()
if [[ -n "$TLS" ]]; then
  # Made per run, never committed; removed with the reports' other scratch on the next run.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$REPORTS/key.pem" -out "$REPORTS/cert.pem" 2>/dev/null
  SCHEME=wss
  TLS_ARGS=(--tls-cert "$REPORTS/cert.pem" --tls-key "$REPORTS/key.pem")
fi

SERVER_PID=""
stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting server on 127.0.0.1:$PORT (log: $REPORTS/wsd.log)"
"${SERVER[@]}" --listen "127.0.0.1:$PORT" "${TLS_ARGS[@]}" \
  --max-message-size "$MAX_SIZE" --max-frame-size "$MAX_SIZE" >"$REPORTS/wsd.log" 2>&1 &
SERVER_PID=$!

listening=no
for ((i = 0; i < 100; i++)); do   # up to 10 s
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$REPORTS/wsd.log" >&2; die "server exited before listening"; }
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    listening=yes
    break
  fi
  sleep 0.1
done
[[ "$listening" == yes ]] || { tail -n 20 "$REPORTS/wsd.log" >&2; die "server not accepting on 127.0.0.1:$PORT after 10 s"; }
echo "server is accepting (pid $SERVER_PID)"

# ---------------------------------------------------------------- 3. fuzzing run
SPEC="$REPORTS/fuzzingclient.json"
"$PYTHON3" - "$SPEC" "$PORT" "$OUTDIR" "$SCHEME" "${CASES[@]}" <<'EOF'
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
EOF

log "running $RUNNER fuzzingclient, cases ${CASES[*]} (timeout ${TIMEOUT} s, log: $REPORTS/$RUNNER.log)"
t0=$SECONDS
run_rc=0
AGENT=(--agent wsd)
if [[ "$RUNNER" == wstest ]]; then
  # Run from the reports dir so nothing wstest writes relative to its cwd lands elsewhere.
  (cd "$REPORTS" && timeout --kill-after=10 "$TIMEOUT" "$VENV/bin/wstest" -m fuzzingclient -s "$SPEC") \
    >"$REPORTS/wstest.log" 2>&1 || run_rc=$?
else
  AGENT=()   # kosoku ignores the spec and names the agent itself; the report holds just that one
  includes=()
  for c in "${CASES[@]}"; do includes+=(-i "$c"); done
  (cd "$REPORTS" && timeout --kill-after=10 "$TIMEOUT" "$KOSOKU_VENV/bin/kosoku" -m fuzzingclient \
    "${includes[@]}" -o "$OUTDIR" "127.0.0.1:$PORT") >"$REPORTS/kosoku.log" 2>&1 || run_rc=$?
fi
echo "$RUNNER finished in $((SECONDS - t0)) s (exit $run_rc)"
if [[ $run_rc -ne 0 ]]; then
  [[ $run_rc -eq 124 ]] && echo "$RUNNER TIMED OUT after $TIMEOUT s" >&2
  tail -n 20 "$REPORTS/$RUNNER.log" >&2
fi

server_died=no
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  server_died=yes
  wait "$SERVER_PID" && server_rc=0 || server_rc=$?
  SERVER_PID=""
  printf '\nFAIL: the server died during the run (exit %s); last lines of %s:\n' \
    "$server_rc" "$REPORTS/wsd.log" >&2
  tail -n 20 "$REPORTS/wsd.log" >&2
fi
stop_server

# ---------------------------------------------------------------- 4. verdict
log "verdict"
report_rc=0
"$PYTHON3" "$SCRIPTS/autobahn-report.py" "$OUTDIR/index.json" "${AGENT[@]}" --expected "$EXPECTED" \
  || report_rc=$?
[[ -f "$OUTDIR/index.html" ]] && echo "HTML report: $OUTDIR/index.html"
if [[ $report_rc -ne 0 || $run_rc -ne 0 || $server_died == yes ]]; then
  exit 1
fi
exit 0
