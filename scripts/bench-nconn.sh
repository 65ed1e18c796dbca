#!/usr/bin/env bash
# N connections per site (issue 15 item 6): 1 GiB replicated through the in-tree WAN relay
# (50 ms each way, MIRROR_BENCH_CAP bytes in flight per connection, default 1 MiB) with
# --connections 1, 2, 4, 8 (MIRROR_BENCH_CONNS), and directly as this machine's bound
# (tests/benches/nconn.rs). Release binaries. Needs root (FUSE). Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
TMPDIR=${TMPDIR:-/var/tmp} cargo bench -p mirror-tests --bench nconn
