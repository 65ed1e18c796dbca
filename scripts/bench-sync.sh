#!/usr/bin/env bash
# Sync benchmark of issue 13: `mirror-ctl sync --wait` of 30,000 small files and a 1 GiB file
# beside `rsync -a` of the same tree to the same disk, one run (tests/benches/sync_scale.rs):
# time, bytes sent, peak RSS of every process. Installs rsync, builds release binaries. Needs
# root (drops the page cache). MIRROR_BENCH_SMALL, MIRROR_BENCH_BIG_MIB change the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rsync >/dev/null || apt-get install -y -qq rsync >/dev/null
cargo build --release --workspace --bins
TMPDIR=${TMPDIR:-/var/tmp} cargo bench -p mirror-tests --bench sync_scale
