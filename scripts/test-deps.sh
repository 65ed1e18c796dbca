#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian or Ubuntu machine: the system packages (FUSE,
# the tools the fault tests drive), pjdfstest, and the second user pjdfstest needs (fsgqa).
# Needs root to install; installs nothing when everything is there already, so a second run
# changes nothing. scripts/test-all.sh runs it first.
#
#   scripts/test-deps.sh            install what is missing
#   scripts/test-deps.sh --check    only say what is missing (exit 1 if anything is)
set -euo pipefail
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
# cargo install puts pjdfstest here.
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
have() { command -v "$1" >/dev/null 2>&1; }

if ! have cargo; then
  echo "test-deps: cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

# command the tests run -> the Debian package that has it
tools=(
  fusermount3:fuse3      # every mount
  getfattr:attr          # xattr tests
  ip:iproute2            # network namespaces
  nft:nftables           # network faults (drop, reject, loss)
  mkfs.ext4:e2fsprogs    # small file systems for full-disk tests
  chattr:e2fsprogs       # immutable files (EPERM even for root)
  losetup:mount          # loop devices for those file systems
  setpriv:util-linux     # running a daemon as another user
  pkg-config:pkg-config
  git:git                # git repositories mirrored and checked in the backup
  cc:gcc                 # a program built in a mirrored tree runs from the backup
  setfacl:acl            # an access ACL set through the mount shows in the mode at once
  rsync:rsync            # spool files carried by rsync (spool tests)
  rclone:rclone          # spool files carried by rclone move (spool tests)
)
packages=()
for t in "${tools[@]}"; do
  cmd=${t%%:*} pkg=${t#*:}
  if ! have "$cmd" && [[ " ${packages[*]-} " != *" $pkg "* ]]; then
    packages+=("$pkg")
  fi
done
want_pjdfstest=false
have pjdfstest || want_pjdfstest=true
want_fsgqa=false
id fsgqa >/dev/null 2>&1 || want_fsgqa=true

missing=("${packages[@]}")
$want_pjdfstest && missing+=("pjdfstest (cargo install)")
$want_fsgqa && missing+=("user fsgqa")
if ((${#missing[@]} == 0)); then
  echo "test-deps: everything the tests need is installed"
  [ -e /dev/fuse ] || { echo "test-deps: /dev/fuse is missing: FUSE tests cannot run here" >&2; exit 1; }
  exit 0
fi
if $check; then
  echo "test-deps: missing: ${missing[*]}"
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "test-deps: missing: ${missing[*]}; run as root (sudo $0) to install them" >&2
  exit 1
fi

if ((${#packages[@]})); then
  echo "test-deps: installing ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${packages[@]}" >/dev/null
fi
if $want_pjdfstest; then
  echo "test-deps: installing pjdfstest (cargo install --locked pjdfstest)"
  cargo install --locked --quiet pjdfstest
fi
if $want_fsgqa; then
  echo "test-deps: adding user fsgqa (pjdfstest's second user)"
  useradd -M -U fsgqa
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || { echo "test-deps: /dev/fuse is missing: FUSE tests cannot run here" >&2; exit 1; }
echo "test-deps: done"
