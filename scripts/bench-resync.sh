#!/usr/bin/env bash
# Copies that do not resend what the backup holds (issue 16), against rsync, in bytes on the
# wire (tests/benches/resync.rs): (a) a 1 GiB file with 1 % of its blocks changed, (b) its
# rename into another rule, (c) sync of an unchanged tree of 30,000 files and 2 GiB.
# MIRROR_BENCH_MIB, MIRROR_BENCH_FILES, MIRROR_BENCH_TREE_MIB make it smaller;
# MIRROR_BENCH_ONLY=ab runs only some. Release binaries. Needs root (FUSE). Not part of the
# test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
TMPDIR=${TMPDIR:-/var/tmp} cargo bench -p mirror-tests --bench resync
