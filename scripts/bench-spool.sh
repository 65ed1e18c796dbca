#!/usr/bin/env bash
# Spool transport (issue 17): 20,000 files of 4 KiB and a 1 GiB file through a spool site
# carried by rsync in a loop, against a live site over loopback TCP: time until the backup is
# complete, spool bytes against payload bytes (tests/benches/spool.rs). Installs rsync,
# builds release binaries. Needs root (FUSE). Not part of the test suite.
# MIRROR_BENCH_RUNS (default 3), MIRROR_BENCH_FILES, MIRROR_BENCH_MIB, MIRROR_BENCH_ONLY=many|big.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rsync >/dev/null || apt-get install -y -qq rsync >/dev/null
cargo build --release --workspace --bins
TMPDIR=${TMPDIR:-/var/tmp} cargo bench -p mirror-tests --bench spool
