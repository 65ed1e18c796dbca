#!/usr/bin/env bash
# POSIX conformance of mirrorfs, side by side with the plain directory (docs/CONFORMANCE.md):
# pjdfstest on both, and fsx-rs (100,000 operations) on both. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v pjdfstest >/dev/null || cargo install --locked pjdfstest
command -v fsx >/dev/null || cargo install --locked fsx
id fsgqa >/dev/null 2>&1 || useradd -M -U fsgqa
cargo build --release --workspace --bins
bin=target/release
cfg=$(realpath scripts/pjdfstest.toml)
work=$(mktemp -d /var/tmp/mirror-conformance.XXXXXX)
cleanup() { fusermount3 -u "$work/mfs" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/plain" "$work/mfs" "$work/state"
"$bin/mirror-ctl" --state "$work/state" rule add "$work/mfs/" --site 127.0.0.1:9 --dest c --attrs >/dev/null
RUST_LOG=warn "$bin/mirrorfs" "$work/mfs" --state "$work/state" >"$work/mirrorfs.log" 2>&1 &
for _ in $(seq 100); do grep -q " $work/mfs " /proc/self/mountinfo && break; sleep 0.1; done
ops=${FSX_OPS:-100000}
for d in plain mfs; do
  echo "== pjdfstest on $d"
  (cd "$work/$d" && pjdfstest -c "$cfg" -p "$work/$d" 2>/dev/null || true) | grep -E "^Summary|FAILED|failed$" || true
done
for d in plain mfs; do
  echo "== fsx -N $ops -S 1 on $d"
  fsx -N "$ops" -S 1 -P "$work" "$work/$d/fsx.dat" 2>&1 | tail -1
done
echo "== mirrorfs warnings and errors"
cat "$work/state/errors.log" 2>/dev/null || true
