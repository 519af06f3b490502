#!/usr/bin/env bash
# A real browser against wsd: headless Chromium (Debian's `chromium`, installed when missing)
# opens tests/browser/deflate.html, which connects to wsd, echoes a few messages and writes
# `ws.extensions` and the outcome into its DOM. For `compression = shared` and `context`, passes
# when the page negotiated permessage-deflate as expected, every echo came back equal, and wsd's
# metrics show messages compressed and inflated (both directions).
#
#   bash scripts/chromium-check.sh      # uses target/release/wsd (builds it if missing)
#
# Environment: WSD_BIN (wsd binary), CHROMIUM (browser binary; default chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

CHROMIUM="${CHROMIUM:-chromium}"
if ! command -v "$CHROMIUM" >/dev/null 2>&1; then
    echo "== installing Debian's chromium"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
"$CHROMIUM" --version

WSD="${WSD_BIN:-$REPO/target/release/wsd}"
[ -x "$WSD" ] || cargo build --release --quiet --bin wsd
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

tmp="$(mktemp -d)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# One run per compression mode; each must negotiate and compress both ways.
check_mode() {
    local mode="$1" want="$2"
    local ws_port metrics_port page_port
    ws_port="$(free_port)"
    metrics_port="$(free_port)"
    page_port="$(free_port)"
    "$WSD" --listen "127.0.0.1:$ws_port" --metrics-listen "127.0.0.1:$metrics_port" \
        --compression "$mode" >"$tmp/wsd-$mode.log" 2>&1 &
    pids+=($!)
    python3 -m http.server "$page_port" --bind 127.0.0.1 --directory "$REPO/tests/browser" \
        >"$tmp/http-$mode.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$ws_port") 2>/dev/null \
            && (exec 3<>"/dev/tcp/127.0.0.1/$page_port") 2>/dev/null; then
            break
        fi
        sleep 0.1
    done

    local url="http://127.0.0.1:$page_port/deflate.html?ws=ws://127.0.0.1:$ws_port/"
    echo "== compression = $mode: chromium --headless --dump-dom $url"
    # --virtual-time-budget lets the page's WebSocket exchange finish before the DOM is dumped;
    # virtual time does not wait for the network, so a slow start can dump a page still
    # "pending": that is tried again (at most 3 times), a wrong result is not.
    local attempt
    for attempt in 1 2 3; do
        timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync \
            --user-data-dir="$tmp/profile-$mode-$attempt" --virtual-time-budget=10000 \
            --dump-dom "$url" >"$tmp/dom-$mode.html" 2>"$tmp/chromium-$mode.log" || {
            tail -n 20 "$tmp/chromium-$mode.log" >&2
            echo "chromium-check: chromium failed" >&2
            return 1
        }
        grep -q '<pre id="result">pending</pre>' "$tmp/dom-$mode.html" || break
        echo "page still pending after attempt $attempt; again"
    done
    local extensions result metrics out_msgs in_msgs failed=0
    extensions="$(sed -n 's/.*<pre id="extensions">\(.*\)<\/pre>.*/\1/p' "$tmp/dom-$mode.html")"
    result="$(sed -n 's/.*<pre id="result">\(.*\)<\/pre>.*/\1/p' "$tmp/dom-$mode.html")"
    echo "page: $extensions"
    echo "page: $result"
    metrics="$(python3 - "$metrics_port" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=10).read().decode()
print("\n".join(l for l in body.splitlines() if l.startswith("wsd_deflate_")))
PY
)"
    echo "$metrics"
    out_msgs="$(echo "$metrics" | sed -n 's/^wsd_deflate_messages_total{direction="out"} //p')"
    in_msgs="$(echo "$metrics" | sed -n 's/^wsd_deflate_messages_total{direction="in"} //p')"
    [[ "$extensions" == "extensions: $want" ]] || { echo "FAIL: negotiated '$extensions', want '$want'" >&2; failed=1; }
    [[ "$result" == "ok 4" ]] || { echo "FAIL: the page's echoes: $result" >&2; failed=1; }
    # Three of the four messages are over compression_threshold (64 B): compressed both ways.
    [[ "${out_msgs:-0}" -ge 3 ]] || { echo "FAIL: wsd compressed ${out_msgs:-0} messages (want >= 3)" >&2; failed=1; }
    [[ "${in_msgs:-0}" -ge 3 ]] || { echo "FAIL: wsd inflated ${in_msgs:-0} messages (want >= 3)" >&2; failed=1; }
    if [ "$failed" -ne 0 ]; then
        tail -n 20 "$tmp/wsd-$mode.log" >&2
        return 1
    fi
    echo "compression = $mode: PASS (compressed both ways: $in_msgs in, $out_msgs out)"
}

check_mode shared "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
check_mode context "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
echo "chromium-check: PASS"
