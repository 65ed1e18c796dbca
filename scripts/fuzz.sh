#!/usr/bin/env bash
# Runs the cargo fuzz targets (fuzz/) for MIRROR_FUZZ_SECONDS each (default 60): all of them,
# or those named as arguments. Fails on the first crash, leak or allocation over the limit.
# Needs cargo-fuzz (installed here when missing); builds with the stable toolchain and
# RUSTC_BOOTSTRAP=1 for the sanitizer flags (no nightly toolchain needed).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
secs="${MIRROR_FUZZ_SECONDS:-60}"
targets=("$@")
((${#targets[@]})) || targets=(frame journal_record rt1_record rule spool)

command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
export RUSTC_BOOTSTRAP=1
fuzz=(cargo fuzz)

"${fuzz[@]}" build --release
for t in "${targets[@]}"; do
  corpus="$(mktemp -d)"
  log="$(mktemp)"
  cp -r "seeds/$t/." "$corpus/"
  [ -d "regressions/$t" ] && cp -r "regressions/$t/." "$corpus/"
  echo "fuzz: $t for ${secs}s"
  # -malloc_limit_mb: any single allocation over 256 MiB is a failure (no unbounded
  # allocation from a length prefix); -rss_limit_mb bounds the whole process.
  if ! "${fuzz[@]}" run --release "$t" "$corpus" -- \
    -max_total_time="$secs" -malloc_limit_mb=256 -rss_limit_mb=1024 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/ (copy it to fuzz/regressions/$t/ once fixed)" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" | tr '\n' ' '
  echo
  rm -rf "$corpus" "$log"
done
echo "fuzz: no crash in ${#targets[@]} targets (${secs}s each)"
