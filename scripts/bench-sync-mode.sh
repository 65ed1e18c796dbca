#!/usr/bin/env bash
# Synchronous mirroring benchmark of issue 15 (tests/benches/sync_latency.rs): 4 KiB
# append + fsync latency (p50, p99) and 16 concurrent fsyncing writers, on the plain
# directory, an async rule and a sync rule, one interleaved run. Builds release binaries.
# Needs root (FUSE mounts). MIRROR_BENCH_RUNS, MIRROR_BENCH_ITERS, MIRROR_BENCH_SECS tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
TMPDIR=${TMPDIR:-/var/tmp} cargo bench -p mirror-tests --bench sync_latency
