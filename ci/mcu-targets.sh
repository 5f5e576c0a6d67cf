#!/usr/bin/env bash
# pmesh-proto, pmesh-node and pmesh-ota on microcontroller targets, through ci/nostd-check (a
# no_std static library linking all three): riscv32imc (ESP32-C3; no atomic compare-and-swap,
# so the crates' `portable-atomic` feature) and riscv32imac are built, thumbv6m (no CAS either)
# and thumbv7em are checked. Debian's Rust (rustc-web 1.96 + rust-web-src) rebuilds core and
# alloc for each target (-Zbuild-std); .ci/run installs it. Fails on any error or warning.
#   ci/mcu-targets.sh         # CARGO_TARGET_DIR defaults to target/mcu
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/mcu}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() {
  local verb=$1 target=$2 start=$SECONDS
  if ! cargo "$verb" -j2 --manifest-path ci/nostd-check/Cargo.toml -Zbuild-std=core,alloc \
    --target "$target" >"$log" 2>&1 || grep -qE '^(warning|error)' "$log"; then
    cat "$log"
    echo "FAILED: cargo $verb for $target"
    exit 1
  fi
  printf '%-30s %-6s ok (%d s)\n' "$target" "$verb" $((SECONDS - start))
}

run build riscv32imc-unknown-none-elf
run build riscv32imac-unknown-none-elf
run check thumbv6m-none-eabi
run check thumbv7em-none-eabihf
