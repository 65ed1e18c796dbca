#!/usr/bin/env bash
# Quickstart: build mirror and set up a demo local system with one rule.
# Everything lives under ${MIRROR_DEMO:-/tmp/mirror-demo}; run it again to start afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${MIRROR_DEMO:-/tmp/mirror-demo}
command -v fusermount3 >/dev/null || { echo "installing fuse3"; apt-get install -y -qq fuse3 >/dev/null; }
cargo build --release --workspace --bins
bin=target/release
rm -rf "$demo"
mkdir -p "$demo/project/src" "$demo/state"
echo 'fn main() {}' > "$demo/project/src/main.rs"
"$bin/mirror-ctl" --state "$demo/state" rule add "$demo/project/" --site 127.0.0.1:7070 --dest project
"$bin/mirror-ctl" --state "$demo/state" rule list
