#!/usr/bin/env bash
# Builds every fuzz target once, then runs each for a bounded time from the committed corpus,
# seeds and regression inputs (new inputs go to a temporary directory; the committed corpus is
# left as it is). A target that finds a crash fails the run and prints the input (base64).
#
#   fuzz/ci.sh [SECONDS_PER_TARGET]     (default 8; .ci/run calls it with 8: 7 targets, about a
#                                        minute of fuzzing in a CI fuzz step of at most 5 min)
#
# cargo fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# (the one every machine here has) accept them. No sanitizer: the crates under test forbid
# unsafe code, and the targets check memory bounds themselves (src/heap.rs); debug assertions
# (overflow checks included) are on.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never
# libFuzzer options shared by every target: per-input timeout, RSS limit.
common=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

build_start=$SECONDS
cargo fuzz build --sanitizer none --debug-assertions
printf 'fuzz build: %d s\n' "$((SECONDS - build_start))"

failed=()
for target in $(cargo fuzz list); do
  work=$(mktemp -d)
  mkdir "$work/corpus"
  log=$work/log
  opts=("${common[@]}" -max_total_time="$secs")
  case $target in
    toml_config) opts+=(-dict=fuzz/dicts/toml.dict) ;;
    node_config) opts+=(-dict=fuzz/dicts/node_config.dict) ;;
    bridge_request) opts+=(-dict=fuzz/dicts/request.dict) ;;
    ota_frames) opts+=(-dict=fuzz/dicts/frames.dict -max_len=16384) ;;
    *) opts+=(-dict=fuzz/dicts/frames.dict) ;;
  esac
  dirs=("$work/corpus")
  for d in "fuzz/corpus/$target" "fuzz/seeds/$target" "fuzz/regressions/$target"; do
    [ -d "$d" ] && dirs+=("$d")
  done
  if cargo fuzz run --sanitizer none --debug-assertions "$target" "${dirs[@]}" -- \
      -artifact_prefix="$work/" "${opts[@]}" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'DONE *cov: [0-9]* ft: [0-9]*' "$log" | sed 's/DONE *//')
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    printf 'fuzz %-14s ok: %s runs in %s s, %s, peak RSS %s MB\n' \
      "$target" "$runs" "$secs" "$cov" "$rss"
    rm -rf "$work"
  else
    printf 'fuzz %-14s FAILED; the end of its log:\n' "$target"
    grep -v -E '^(#[0-9]+|\s+NEW_FUNC)' "$log" | tail -40
    failed+=("$target")
  fi
done
if ((${#failed[@]})); then
  printf 'fuzz targets that failed: %s\n' "${failed[*]}"
  exit 1
fi
