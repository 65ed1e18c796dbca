#!/usr/bin/env bash
# xfstests on mirrorfs beside libfuse's passthrough_hp (docs/CONFORMANCE.md). Not part of CI.
#
# Usage: scripts/xfstests.sh [TEST...]          (as root; default: the quick group, -g quick)
#
#   XFSTESTS_DIR   a checkout of xfstests (required; how to get it is printed when missing)
#   LIBFUSE_DIR    a checkout of libfuse, for example/passthrough_hp [$XFSTESTS_DIR/../libfuse]
#   XFSTESTS_FS    which to run: "both" (default), "mirrorfs" or "passthrough_hp"
#   XFSTESTS_OUT   where results are kept [/var/tmp/mirror-xfstests]: <fs>/check.out, the
#                  xfstests results (<fs>/results/…), summary.txt
#   XFSTESTS_SRC_SIZE, XFSTESTS_STATE_SIZE  sizes of the ext4 images made for the test and
#                  scratch directories [2G] and mirrorfs's state directories [40G] (sparse;
#                  tests that fill the file system fill those, not the disk)
#
# Both run the same tests with the same configuration (README.fuse's conventions: FSTYP=fuse,
# device tags, `-osource=…`, a /sbin/mount.fuse.<subtype> helper). mirrorfs gets a state
# directory per mount and a subtree rule selecting everything with --attrs, so every change is
# journaled (no sender runs: the journal only fills). Prints a table (test, passthrough_hp,
# mirrorfs) and the tests that pass on passthrough_hp but not on mirrorfs; exits 1 if there
# are any. Runs in a private mount namespace; unmounts everything and removes the helpers it
# installed when it ends, even when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

die() { echo "xfstests.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root (xfstests mounts and unmounts)"

# In a private mount namespace: xfstests runs df over every mount, and a FUSE mount of
# someone else's that does not answer (a stopped server) would hang it. Other FUSE mounts are
# detached in this namespace only; everything mounted here goes when the script ends.
if [ -z "${MIRROR_XFSTESTS_NS:-}" ]; then
  MIRROR_XFSTESTS_NS=1 exec unshare -m --propagation private -- "$0" "$@"
fi
sed 's/ - /\t/' /proc/self/mountinfo | awk -F'\t' '{split($1, a, " "); split($2, b, " ")}
  b[1] ~ /^fuse/ {print a[5]}' | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null || true
done

xfstests=${XFSTESTS_DIR:-}
if [ -z "$xfstests" ] || [ ! -f "$xfstests/check" ]; then
  cat >&2 <<'EOF'
xfstests.sh: set XFSTESTS_DIR to a checkout of xfstests. To get one (public source, not vendored):

  git clone https://git.kernel.org/pub/scm/fs/xfs/xfstests-dev.git /var/tmp/xfstests
  git clone https://github.com/libfuse/libfuse.git /var/tmp/libfuse
  apt-get install -y xfslibs-dev uuid-dev libtool-bin e2fsprogs automake gcc libuuid1 quota \
    attr make libacl1-dev libaio-dev xfsprogs libgdbm-dev gawk fio dbench uuid-runtime python3 \
    sqlite3 liburing-dev libcap-dev acl meson ninja-build pkg-config libfuse3-dev fuse3
  XFSTESTS_DIR=/var/tmp/xfstests scripts/xfstests.sh
EOF
  exit 2
fi
xfstests=$(realpath "$xfstests")
libfuse=$(realpath -m "${LIBFUSE_DIR:-$xfstests/../libfuse}")
which_fs=${XFSTESTS_FS:-both}
case $which_fs in both) fss="passthrough_hp mirrorfs" ;; mirrorfs | passthrough_hp) fss=$which_fs ;;
  *) die "XFSTESTS_FS must be both, mirrorfs or passthrough_hp" ;; esac
out=${XFSTESTS_OUT:-/var/tmp/mirror-xfstests}
mkdir -p "$out"
out=$(realpath "$out")
rm -f "$out/gap"
[ -x /sbin/mount.fuse3 ] || die "mount.fuse3 is missing: apt-get install fuse3"

# --- builds (each only when needed)
if [ ! -x "$xfstests/ltp/fsstress" ]; then
  echo "== building xfstests in $xfstests"
  make -C "$xfstests" -j"$(nproc)" >"$out/xfstests-build.log" 2>&1 ||
    die "xfstests build failed: see $out/xfstests-build.log (build dependencies: see above, run without XFSTESTS_DIR)"
fi
php=$libfuse/build/example/passthrough_hp
if [[ " $fss " == *" passthrough_hp "* ]] && [ ! -x "$php" ]; then
  [ -f "$libfuse/meson.build" ] ||
    die "no libfuse checkout at $libfuse: git clone https://github.com/libfuse/libfuse.git $libfuse (or set LIBFUSE_DIR)"
  echo "== building passthrough_hp in $libfuse"
  { [ -d "$libfuse/build" ] || meson setup "$libfuse/build" "$libfuse"; } >"$out/libfuse-build.log" 2>&1 &&
    ninja -C "$libfuse/build" example/passthrough_hp >>"$out/libfuse-build.log" 2>&1 ||
    die "passthrough_hp build failed: see $out/libfuse-build.log"
fi
if [[ " $fss " == *" mirrorfs "* ]]; then
  echo "== building mirrorfs (release)"
  cargo build --release -p mirrorfs -p mirror-ctl --bins >"$out/cargo-build.log" 2>&1 ||
    die "cargo build failed: see $out/cargo-build.log"
  bin=$(realpath "${CARGO_TARGET_DIR:-$repo/target}/release")
fi
for u in fsgqa fsgqa2 123456-fsgqa; do id "$u" >/dev/null 2>&1 || useradd -m "$u"; done
getent group fsgqa >/dev/null || groupadd fsgqa

# --- work area, helpers, cleanup
work=$(mktemp -d "${TMPDIR:-/var/tmp}/mirror-xfstests.XXXXXX")
marker="# installed by mirror's scripts/xfstests.sh"
helpers=()
# Unmounts everything under DIR: the FUSE mounts first, then the file systems under them.
unmount_under() {
  local m
  for pass in fuse other; do
    sed 's/ - /\t/' /proc/self/mountinfo | awk -F'\t' -v dir="$1/" -v pass=$pass '
      {split($1, a, " "); split($2, b, " ")}
      index(a[5], dir) == 1 && ((b[1] ~ /^fuse/) == (pass == "fuse")) {print a[5]}' |
      sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  done
}
cleanup() {
  set +e
  unmount_under "$work"
  for h in "${helpers[@]}"; do grep -q "$marker" "$h" 2>/dev/null && rm -f "$h"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "xfstests.sh: interrupted" >&2; exit 130' INT TERM

install_helper() { # NAME, body on stdin
  local h=/sbin/mount.fuse.$1
  if [ -e "$h" ] && ! grep -q "$marker" "$h"; then die "$h exists and is not ours: remove it first"; fi
  { echo '#!/bin/bash'; echo "$marker"; cat; } >"$h"
  chmod 755 "$h"
  helpers+=("$h")
}
# passthrough_hp takes SOURCE MOUNTPOINT, not -osource=; it knows no remount (libfuse would
# mount again): the helper does what mount(8) would do for a kernel remount.
[[ " $fss " != *" passthrough_hp "* ]] || install_helper passthrough_hp <<EOF
tag=\$1 mnt=\$2; shift 2; opts=
while [ \$# -gt 0 ]; do case \$1 in -o) opts="\$opts,\$2"; shift 2 ;; *) shift ;; esac; done
src= rest= remount= vfs=
IFS=,; for o in \$opts; do case \$o in
  source=*) src=\${o#source=} ;;
  remount) remount=1 ;;
  ''|user|nouser|users|auto|noauto|nofail|_netdev|defaults) ;;
  ro|rw|*atime|*diratime|*relatime|*strictatime|*lazytime|*suid|*dev|*exec|sync|async|dirsync) vfs="\$vfs,\$o"; rest="\$rest,\$o" ;;
  *) rest="\$rest,\$o" ;;
esac; done; unset IFS
[ -n "\$remount" ] && exec mount -i -o "remount\$vfs" "\$mnt"
ulimit -n "\$(ulimit -Hn)" 2>/dev/null
exec $php "\$src" "\$mnt" -o "fsname=\$tag\$rest"
EOF
# mirrorfs takes mount.fuse3's conventions itself (TAG MOUNTPOINT -o source=…,state=…,
# remount…), so its helper is mount.fuse3 with mirrorfs in the PATH.
if [ -n "${bin:-}" ]; then
  install_helper mirrorfs <<EOF
PATH=$bin:\$PATH exec -a mount.fuse.mirrorfs /sbin/mount.fuse3 "\$@"
EOF
fi

tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(-g quick)

XFSTESTS_SRC_SIZE=${XFSTESTS_SRC_SIZE:-2G}
XFSTESTS_STATE_SIZE=${XFSTESTS_STATE_SIZE:-40G}
loop_fs() { # DIR SIZE: a new ext4 of SIZE (sparse image DIR.img) mounted on DIR
  mkdir -p "$1"
  truncate -s "$2" "$1.img"
  mkfs.ext4 -q -F "$1.img" >/dev/null
  mount -o loop "$1.img" "$1"
}

run_fs() { # FS: runs the tests on FS, results in $out/FS
  local fs=$1 w=$work/$fs extra_test= extra_scratch= d
  mkdir -p "$w/test" "$w/scratch"
  rm -rf "${out:?}/$fs"
  mkdir -p "$out/$fs"
  # Each source directory is a fresh ext4 of its own (a sparse image, loop-mounted in this
  # namespace only): the tests that fill the file system fill that, not the machine's disk.
  for d in test-src scratch-src; do
    loop_fs "$w/$d" "$XFSTESTS_SRC_SIZE"
  done
  if [ "$fs" = mirrorfs ]; then
    for d in test scratch; do
      # The journal keeps everything (no sender runs): a file system of its own too.
      loop_fs "$w/$d-statefs" "$XFSTESTS_STATE_SIZE"
      "$bin/mirror-ctl" --state "$w/$d-statefs/state" rule add "$w/$d/" --site 127.0.0.1:9 \
        --dest "$d" --attrs --no-sync --no-validate >/dev/null
    done
    extra_test=",state=$w/test-statefs/state"
    extra_scratch=",state=$w/scratch-statefs/state"
  fi
  cat >"$w/local.config" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=.$fs
export TEST_DEV=xfst_${fs}_test
export TEST_DIR=$w/test
export SCRATCH_DEV=xfst_${fs}_scratch
export SCRATCH_MNT=$w/scratch
export TEST_FS_MOUNT_OPTS="-osource=$w/test-src$extra_test,allow_other,default_permissions"
export MOUNT_OPTIONS="-osource=$w/scratch-src$extra_scratch,allow_other,default_permissions"
export RESULT_BASE=$out/$fs/results
EOF
  echo "== xfstests on $fs: ${tests[*]} (log: $out/$fs/check.out)"
  (cd "$xfstests" && HOST_OPTIONS=$w/local.config ./check -R xunit "${tests[@]}") \
    >"$out/$fs/check.out" 2>&1 || true
  grep -E '^(Ran|Not run|Failures|Failed|Passed)' "$out/$fs/check.out" | cut -c1-200 || true
  for d in test scratch; do
    [ ! -f "$w/$d-statefs/state/errors.log" ] || cp "$w/$d-statefs/state/errors.log" "$out/$fs/$d-errors.log"
  done
  # Every mount of this run ends here (xfstests leaves TEST_DIR mounted), and the images go.
  unmount_under "$w"
  rm -f "$w"/*.img
}

for fs in $fss; do run_fs "$fs"; done

# --- the table: test, passthrough_hp, mirrorfs (pass, fail, notrun, or - when not run at all)
# (results of an earlier run of the other file system in the same XFSTESTS_OUT are shown too)
python3 - "$out" <<'EOF' | tee "$out/summary.txt"
import sys, os, xml.etree.ElementTree as ET
out = sys.argv[1]
res = {}
fss = []
for fs in ["passthrough_hp", "mirrorfs"]:
    p = os.path.join(out, fs, "results", "result.xml")
    if not os.path.exists(p):
        continue
    fss.append(fs)
    res[fs] = {}
    for tc in ET.parse(p).getroot().iter("testcase"):
        kids = {c.tag for c in tc}
        res[fs][tc.get("name")] = ("fail" if kids & {"failure", "error"}
                                   else "notrun" if "skipped" in kids else "pass")
names = sorted(set().union(*[set(r) for r in res.values()]))
cols = ["passthrough_hp", "mirrorfs"]
print(f"{'test':<16} {cols[0]:<15} {cols[1]:<10}")
for n in names:
    print(f"{n:<16} {res.get(cols[0], {}).get(n, '-'):<15} {res.get(cols[1], {}).get(n, '-'):<10}")
for fs in fss:
    r = res[fs]
    ran = [n for n in r if r[n] != "notrun"]
    print(f"{fs}: {len(r)} tests, {len(ran)} run, {sum(r[n] == 'pass' for n in r)} passed, "
          f"{sum(r[n] == 'fail' for n in r)} failed, {len(r) - len(ran)} not run")
if len(fss) == 2:
    gap = [n for n in names if res[cols[0]].get(n) == "pass" and res[cols[1]].get(n) != "pass"]
    print(f"passing on passthrough_hp but not on mirrorfs ({len(gap)}): {' '.join(gap)}")
    extra = [n for n in names if res[cols[1]].get(n) == "pass" and res[cols[0]].get(n) != "pass"]
    print(f"passing on mirrorfs but not on passthrough_hp ({len(extra)}): {' '.join(extra)}")
    open(os.path.join(out, "gap"), "w").write(" ".join(gap))
EOF
if [ -s "$out/gap" ]; then exit 1; fi
