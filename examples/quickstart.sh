#!/usr/bin/env bash
# Quickstart: build mirror and run a complete local mirror on this machine.
#
#   ./examples/quickstart.sh          set up and start; leaves it running
#   ./examples/quickstart.sh stop     unmount and stop the daemons
#   ./examples/quickstart.sh check    start, prove a change reaches the backup, stop
#
# Everything lives under ${MIRROR_DEMO:-/tmp/mirror-demo}:
#   project/   the directory you work in (mirrorfs is mounted over it)
#   state/     the local system's state (rules, journal, logs)
#   backup/    the backup host's root; router-state/ its state
# The router listens on 127.0.0.1:${MIRROR_DEMO_PORT:-7070}.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${MIRROR_DEMO:-/tmp/mirror-demo}
port=${MIRROR_DEMO_PORT:-7070}
bin=$PWD/target/release

stop() {
  if mountpoint -q "$demo/project" 2>/dev/null; then fusermount3 -u "$demo/project" || umount -l "$demo/project"; fi
  for p in "$demo"/*.pid; do
    [ -e "$p" ] || continue
    kill "$(cat "$p")" 2>/dev/null || true
    rm -f "$p"
  done
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    if ((SECONDS > end)); then echo "quickstart: timed out waiting for $what" >&2; return 1; fi
    sleep 0.05
  done
}

case "${1:-start}" in
  stop) stop; echo "stopped"; exit 0 ;;
  start|check) ;;
  *) echo "usage: $0 [start|stop|check]" >&2; exit 2 ;;
esac

command -v fusermount3 >/dev/null || { echo "installing fuse3"; apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null; }
cargo build --release --workspace --bins
stop
rm -rf "$demo"
mkdir -p "$demo/project/src" "$demo/state" "$demo/backup" "$demo/router-state"
echo 'fn main() { println!("hello"); }' > "$demo/project/src/main.rs"

# The router accepts only sources that hold their key: make one for this source, give it to it.
echo quickstart > "$demo/state/site-id"
key=$("$bin/mirror-ctl" --state "$demo/router-state" router key add quickstart 2>/dev/null)
"$bin/mirror-ctl" --state "$demo/state" key add "127.0.0.1:$port" "$key" >/dev/null

"$bin/mirror-routerd" --listen "127.0.0.1:$port" --root "$demo/backup" --state "$demo/router-state" \
  >"$demo/routerd.log" 2>&1 &
echo $! > "$demo/routerd.pid"
wait_for 20 "the router" grep -q "listening on" "$demo/routerd.log"

"$bin/mirror-ctl" --state "$demo/state" rule add "$demo/project/" --site "127.0.0.1:$port" --dest project
"$bin/mirrorfs" "$demo/project" --state "$demo/state" >"$demo/mirrorfs.log" 2>&1 &
echo $! > "$demo/mirrorfs.pid"
wait_for 20 "the mount" grep -q "mounted" "$demo/mirrorfs.log"
"$bin/mirror-sendd" --state "$demo/state" >"$demo/sendd.log" 2>&1 &
echo $! > "$demo/sendd.pid"

# Files that existed before the rule: the rule's first copy brings them over.
wait_for 30 "the first copy" cmp -s "$demo/project/src/main.rs" "$demo/backup/quickstart/project/src/main.rs"
echo "// saved at $(date)" >> "$demo/project/src/main.rs"
wait_for 30 "the change to reach the backup" cmp -s "$demo/project/src/main.rs" "$demo/backup/quickstart/project/src/main.rs"
echo "mirror is running: $demo/project is mirrored to $demo/backup/quickstart/project"
echo "  rules:  $bin/mirror-ctl --state $demo/state rule list"
echo "  logs:   $demo/*.log"
echo "  stop:   $0 stop"
if [ "${1:-start}" = check ]; then
  stop
  echo "quickstart check passed"
fi
