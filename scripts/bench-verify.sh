#!/usr/bin/env bash
# `mirror-ctl verify` of a mirrored tree vs `rsync -a --checksum --dry-run` of the same two
# trees (issue 16, benchmark d), cold (caches dropped) and warm, one run. The router, the
# mount and the sender run on loopback; N files of SZ bytes in 50 directories (defaults: 5,000
# of 40 KiB; the issue's tree: N=30000 SZ=71582). The default verify (files unchanged since
# their last acknowledged copy compared by size and mode) and `verify --checksum` (every
# file's content). Builds release binaries. Needs root (FUSE, drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000}
SZ=${SZ:-40960}
PORT=${PORT:-7791}
B=${MIRROR_BENCH_DIR:-/var/tmp/mirror-bench-verify}
cargo build --release --bins -p mirror-ctl -p mirror-routerd -p mirror-sendd -p mirrorfs
REL=${CARGO_TARGET_DIR:-target}/release
fusermount3 -u "$B/proj" 2>/dev/null || true
rm -rf "$B"
mkdir -p "$B/proj" "$B/state" "$B/root" "$B/rstate"
K=$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$REL/mirror-ctl" --state "$B/rstate" router key add "$(hostname)" --key "$K" --namespace . >/dev/null
"$REL/mirror-routerd" --listen "127.0.0.1:$PORT" --root "$B/root" --state "$B/rstate" >"$B/r.log" 2>&1 &
RP=$!
SP=
MP=
trap 'kill $SP 2>/dev/null; sleep 0.5; fusermount3 -u "$B/proj" 2>/dev/null; kill $MP $RP 2>/dev/null' EXIT
"$REL/mirror-ctl" --state "$B/state" key add '*' "$K" >/dev/null
python3 - "$B/proj" "$N" "$SZ" <<'PY'
import os, sys
b, n, sz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(50):
    os.makedirs(f"{b}/d{d}", exist_ok=True)
for i in range(n):
    with open(f"{b}/d{i % 50}/f{i}", "wb") as f:
        f.write(os.urandom(sz))
PY
"$REL/mirror-ctl" --state "$B/state" rule add "$B/proj/" --site "127.0.0.1:$PORT" --dest proj --no-sync >/dev/null
"$REL/mirrorfs" "$B/proj" --state "$B/state" >"$B/m.log" 2>&1 &
MP=$!
for _ in $(seq 1 100); do [ -S "$B/state/mirrorfs.sock" ] && break; sleep 0.1; done
"$REL/mirror-sendd" --state "$B/state" >"$B/s.log" 2>&1 &
SP=$!
for _ in $(seq 1 100); do [ -S "$B/state/mirror-sendd.sock" ] && break; sleep 0.1; done
"$REL/mirror-ctl" --state "$B/state" sync --wait 2>&1 | tail -1
for _ in $(seq 1 600); do diff -rq "$B/proj" "$B/root/proj" >/dev/null 2>&1 && break; sleep 0.2; done
echo "tree: $N files of $SZ bytes"
sync; echo 3 >/proc/sys/vm/drop_caches
/usr/bin/time -f "cold verify: %e s, %M KiB max RSS" "$REL/mirror-ctl" --state "$B/state" verify >"$B/verify.out"
tail -1 "$B/verify.out"
sync; echo 3 >/proc/sys/vm/drop_caches
/usr/bin/time -f "cold rsync -a --checksum --dry-run: %e s, %M KiB max RSS" rsync -a --checksum --dry-run "$B/proj/" "$B/root/proj/"
/usr/bin/time -f "warm verify: %e s" "$REL/mirror-ctl" --state "$B/state" verify >/dev/null
/usr/bin/time -f "warm rsync -a --checksum --dry-run: %e s" rsync -a --checksum --dry-run "$B/proj/" "$B/root/proj/"
# Every file's content compared, as rsync --checksum does.
sync; echo 3 >/proc/sys/vm/drop_caches
/usr/bin/time -f "cold verify --checksum: %e s, %M KiB max RSS" "$REL/mirror-ctl" --state "$B/state" verify --checksum >"$B/verify.out"
tail -1 "$B/verify.out"
/usr/bin/time -f "warm verify --checksum: %e s" "$REL/mirror-ctl" --state "$B/state" verify --checksum >/dev/null
grep VmHWM "/proc/$RP/status" | sed 's/^/mirror-routerd /'
