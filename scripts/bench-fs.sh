#!/usr/bin/env bash
# File-system benchmarks of issue 3: plain directory vs bindfs vs mirrorfs, one run, ratios.
# Installs bindfs, fio and the Linux source tarball (uncompressed once into the cache), builds
# release binaries, then runs tests/benches/fs_workloads.rs. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${MIRROR_BENCH_DIR:-/var/tmp/mirror-bench}
need=()
command -v bindfs >/dev/null || need+=(bindfs)
command -v fio >/dev/null || need+=(fio)
ls /usr/src/linux-source-*.tar.xz >/dev/null 2>&1 || need+=(linux-source)
if ((${#need[@]})); then apt-get install -y -qq "${need[@]}" >/dev/null; fi
mkdir -p "$base/cache"
if [ ! -f "$base/cache/linux.tar" ]; then
  xz -dc /usr/src/linux-source-*.tar.xz > "$base/cache/linux.tar.part"
  mv "$base/cache/linux.tar.part" "$base/cache/linux.tar"
fi
cargo build --release --workspace --bins
MIRROR_BENCH_DIR="$base" cargo bench -p mirror-tests --bench fs_workloads
