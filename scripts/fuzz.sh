#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60) and fails on the first
# crash, leak, timeout or broken invariant; prints the executions of each target.
#
#   bash scripts/fuzz.sh [SECONDS]
#
# Needs cargo-fuzz (installed with `cargo install cargo-fuzz --locked` if missing); runs on the stable toolchain through
# RUSTC_BOOTSTRAP=1. The committed corpora in fuzz/corpus/<target>/ are only read: new inputs go
# to a temporary directory, so the seeds stay small. A crashing input is saved under
# fuzz/artifacts/<target>/ and can be replayed with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [SECONDS]  (a whole number of seconds per target, default 60)" >&2
    exit 2
fi
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

targets=$(cargo fuzz list)
cargo fuzz build

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
summary=""
for target in $targets; do
    mkdir -p "$scratch/$target" "corpus/$target"
    log="$scratch/$target.log"
    echo "== $target: ${seconds}s"
    status=0
    # -timeout: an input that takes over 10 s is a hang, and a failure.
    cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        echo "== $target: FAILED (exit $status); the input is under fuzz/artifacts/$target/" >&2
        summary+="$target: FAILED after ${runs:-?} executions"$'\n'
        failed=1
        break
    fi
    echo "== $target: ${runs:-?} executions, no crash"
    summary+="$target: ${runs:-?} executions in ${seconds}s"$'\n'
done
echo
echo "fuzz summary:"
printf '%s' "$summary"
exit "$failed"
