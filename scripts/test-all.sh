#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, CLI and end-to-end (real FUSE mounts and
# daemons on loopback). Needs root (or FUSE access) and fuse3; see .ci/run for the packages.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${MIRROR_TEST_THREADS:-2}"

# The fuzz targets for a bounded time each, when asked (CI sets 60 s; see fuzz/README.md).
if [ "${MIRROR_FUZZ_SECONDS:-0}" != 0 ]; then
  ./scripts/fuzz.sh
fi
