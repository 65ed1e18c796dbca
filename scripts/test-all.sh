#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, CLI and end-to-end (real FUSE mounts and
# daemons on loopback). On a fresh machine it first installs what the tests need
# (scripts/test-deps.sh: fuse3 and the other packages, pjdfstest, the fsgqa user; as root);
# when everything is there it installs nothing. Then the README's quickstart, checked.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/test-deps.sh
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${MIRROR_TEST_THREADS:-2}"

# The README's quickstart, end to end (release build, its own demo directory and port).
demo="$(mktemp -d "${TMPDIR:-/tmp}/mirror-demo.XXXXXX")"
MIRROR_DEMO="$demo" MIRROR_DEMO_PORT=$((20000 + RANDOM % 20000)) ./examples/quickstart.sh check
rm -rf "$demo"

# The fuzz targets for a bounded time each, when asked (CI sets 60 s; see fuzz/README.md).
if [ "${MIRROR_FUZZ_SECONDS:-0}" != 0 ]; then
  ./scripts/fuzz.sh
fi
