#!/usr/bin/env bash
# Replication benchmark of issue 4: mirror vs lsyncd + rsync on loopback, one run
# (tests/benches/replication.rs). Installs lsyncd and rsync, builds release binaries. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v lsyncd >/dev/null || need+=(lsyncd)
command -v rsync >/dev/null || need+=(rsync)
if ((${#need[@]})); then apt-get install -y -qq "${need[@]}" >/dev/null; fi
cargo build --release --workspace --bins
TMPDIR=${TMPDIR:-/var/tmp} cargo bench -p mirror-tests --bench replication
