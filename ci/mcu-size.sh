#!/usr/bin/env bash
# The MCU size report: builds firmware/size-probe for riscv32imc (opt-level "s", fat LTO, core's
# optimize_for_size; see its Cargo.toml and .cargo/config.toml) once per row and prints
# .text + .rodata (llvm-size-22) next to each row's budget. Exits 1 when a row is over budget.
# Needs Debian's rustc-web, rust-web-src, lld-22 and llvm-22 (.ci/run installs them).
#   ci/mcu-size.sh            # CARGO_TARGET_DIR defaults to target/mcu
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/mcu}
probe=firmware/size-probe
elf=$CARGO_TARGET_DIR/riscv32imc-unknown-none-elf/release/pmesh-size-probe

# row | probe features | budget in bytes | where the budget comes from
rows=(
  "node only||102400|100 KiB: regression guard, measured + ~11 %"
  "node + OTA receiver|ota|196608|192 KiB: issue 16"
  "+ distributor|distributor|225280|220 KiB: regression guard, measured + ~2 %"
  "+ signature verification|signature|276480|270 KiB: regression guard, measured + ~2 %"
)

over=0
printf '%-26s %10s %10s %10s %10s  %s\n' row .text .rodata total budget verdict
for row in "${rows[@]}"; do
  IFS='|' read -r name features budget why <<<"$row"
  if [ -n "$features" ] && ! grep -q "^$features = " "$probe/Cargo.toml"; then
    printf '%-26s %10s %10s %10s %10s  %s\n' "$name" - - - "$budget" "not built: the probe has no '$features' feature yet"
    continue
  fi
  args=(--release -j2 --quiet)
  [ -n "$features" ] && args+=(--features "$features")
  # from the probe's directory, so its .cargo/config.toml (target, build-std, linker) applies
  (cd "$probe" && cargo build "${args[@]}")
  read -r text rodata < <(llvm-size-22 -A "$elf" | awk '$1==".text"{t=$2} $1==".rodata"{r=$2} END{print t, r}')
  total=$((text + rodata))
  verdict="ok ($why)"
  if ((total > budget)); then
    verdict="OVER BUDGET by $((total - budget)) B ($why)"
    over=1
  fi
  printf '%-26s %10d %10d %10d %10d  %s\n' "$name" "$text" "$rodata" "$total" "$budget" "$verdict"
done
exit $over
