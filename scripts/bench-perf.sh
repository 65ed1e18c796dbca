#!/usr/bin/env bash
# Performance comparison of issue 14: the plain ext4 directory, mirrorfs (a subtree rule
# selecting everything, journaling on, no mirror-sendd), libfuse's passthrough_hp and bindfs,
# in one interleaved run (tests/benches/perf_compare.rs; its header lists every knob). Prints a
# markdown table for docs/BENCHMARKS.md at the end. Needs root. Not part of CI.
#
#   LIBFUSE_DIR=/path/to/libfuse scripts/bench-perf.sh
#
# LIBFUSE_DIR is a checkout of libfuse's public source (git clone
# https://github.com/libfuse/libfuse.git); passthrough_hp (example/passthrough_hp.cc) is built
# in it with meson and ninja. Without it the other columns run.
#
# The source tree of the untar and git rows is xfstests at tag v2026.01.05 (4,650 files in
# 4,682 entries): `git archive` of a checkout, made once into the cache as tree.tar, and a
# one-commit git repository of it (cache/tree) that the clone row clones. MIRROR_BENCH_SRC_GIT
# names an existing xfstests checkout holding that tag; without it the tag is cloned from
# https://git.kernel.org/pub/scm/fs/xfs/xfstests-dev.git.
#
# MIRROR_BENCH_BIN_BEFORE=DIR adds a column "mirrorfs-before" for the build in DIR (a change
# measured before and after in one run). MIRROR_BENCH_BIN=DIR measures the mirrorfs and
# mirror-ctl in DIR (another build) instead of
# this workspace's release build. MIRROR_BENCH_RUNS (default 5), MIRROR_BENCH_ONLY (rows:
# dd,seqwrite,randwrite,randread,create,stat,untar,clone,status,sqlite-delete,sqlite-wal,fsync),
# MIRROR_BENCH_TARGETS (plain,mirrorfs,passthrough_hp,bindfs), MIRROR_BENCH_DIR (default
# /var/tmp/mirror-bench-perf), MIRROR_BENCH_SECS, MIRROR_BENCH_SEQ_MIB, MIRROR_BENCH_SQLITE_TXNS.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${MIRROR_BENCH_DIR:-/var/tmp/mirror-bench-perf}
tag=v2026.01.05

need=()
for t in fio:fio bindfs:bindfs sqlite3:sqlite3 git:git; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ -n "${LIBFUSE_DIR:-}" ]; then
  for t in meson:meson ninja:ninja-build pkg-config:pkg-config c++:g++; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
  done
  dpkg -s libudev-dev >/dev/null 2>&1 || need+=(libudev-dev)
fi
if ((${#need[@]})); then apt-get install -y -qq "${need[@]}" >/dev/null; fi

# passthrough_hp, built from the given libfuse checkout (never vendored here).
php=
if [ -n "${LIBFUSE_DIR:-}" ]; then
  php="$LIBFUSE_DIR/build/example/passthrough_hp"
  if [ ! -x "$php" ]; then
    (cd "$LIBFUSE_DIR" &&
      { [ -d build ] || meson setup build --buildtype=release -Dutils=false -Dtests=false \
          -Denable-io-uring=false; } &&
      ninja -C build example/passthrough_hp)
  fi
else
  echo "passthrough_hp column skipped: LIBFUSE_DIR is not set. To include it:" >&2
  echo "  git clone https://github.com/libfuse/libfuse.git && LIBFUSE_DIR=\$PWD/libfuse $0" >&2
fi

# The source tree (tar) and a git repository of it, made once.
mkdir -p "$base/cache"
if [ ! -f "$base/cache/tree.tar" ]; then
  src=${MIRROR_BENCH_SRC_GIT:-}
  if [ -z "$src" ]; then
    src="$base/cache/xfstests-src"
    [ -d "$src" ] || git clone -q --depth 1 --branch "$tag" \
      https://git.kernel.org/pub/scm/fs/xfs/xfstests-dev.git "$src"
  fi
  git -C "$src" archive --format=tar "$tag" > "$base/cache/tree.tar.part"
  mv "$base/cache/tree.tar.part" "$base/cache/tree.tar"
  rm -rf "$base/cache/tree"
fi
if [ ! -d "$base/cache/tree/.git" ]; then
  rm -rf "$base/cache/tree.part"
  mkdir -p "$base/cache/tree.part"
  tar xf "$base/cache/tree.tar" -C "$base/cache/tree.part"
  git -C "$base/cache/tree.part" init -q
  git -C "$base/cache/tree.part" add -A
  git -C "$base/cache/tree.part" -c user.name=bench -c user.email=bench@localhost \
    commit -q -m "xfstests $tag"
  mv "$base/cache/tree.part" "$base/cache/tree"
fi

if [ -z "${MIRROR_BENCH_BIN:-}" ]; then
  cargo build --release --workspace --bins
fi
MIRROR_BENCH_DIR="$base" MIRROR_BENCH_PASSTHROUGH_HP="${php:-${MIRROR_BENCH_PASSTHROUGH_HP:-}}" \
  cargo bench -p mirror-tests --bench perf_compare
