#!/usr/bin/env bash
# Builds the Debian package (target/debian/wsd_VERSION_amd64.deb) with cargo-deb, installing it
# when missing. The units in the package run /usr/bin/wsd (the README's manual install uses
# /usr/local/bin). Usage: bash scripts/deb.sh [--deb-version V]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
  echo "deb.sh: installing cargo-deb (cargo install cargo-deb --locked)" >&2
  cargo install cargo-deb --locked >&2
fi
mkdir -p target/deb-units
for unit in wsd.service wsd@.service wsd.socket wsd-metrics.socket wsd-workers.target; do
  sed 's#/usr/local/bin/wsd#/usr/bin/wsd#g' "systemd/$unit" >"target/deb-units/$unit"
done
cargo build --release --bins --quiet
cargo deb --no-build --quiet "$@"
