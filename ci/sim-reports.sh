#!/usr/bin/env bash
# The simulator's JSON report for every scenario file, without its wall-clock section: the proof
# that a change leaves the simulator's behaviour alone (ARCHITECTURE.md, invariant 6). A change
# that alters behaviour on purpose regenerates the reports and says why.
#
#   ci/sim-reports.sh generate DIR   writes DIR/<name>.json for every scenarios/<name>.toml
#   ci/sim-reports.sh check DIR      regenerates into a temporary directory and diffs it with
#                                    DIR: exit 0 when identical, 1 on any difference (printed),
#                                    including a scenario without a report or the reverse
#
# Each report is `pmesh sim FILE --json` with the top-level `wall` object removed (run time,
# events/s, sim s per wall s, peak RSS: the only host-dependent figures in it); every other byte
# is kept as printed. The binary is $PMESH when set, else this checkout's `pmesh`, built in
# release (into $CARGO_TARGET_DIR, or target/).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: $0 generate DIR | check DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
mode=$1 dir=$2

pmesh_bin() {
  if [ -n "${PMESH:-}" ]; then
    echo "$PMESH"
    return
  fi
  cargo build --release --quiet -p pmesh --bin pmesh >&2
  echo "${CARGO_TARGET_DIR:-target}/release/pmesh"
}

# Drops the top-level `"wall": {...}` object from serde_json's pretty output (two-space indent,
# so the object's opening and closing lines are exactly `  "wall": {` and `  }` or `  },`), and
# the comma before it when it was the last key. Fails unless exactly one such object was found.
strip_wall() {
  awk '
    function flush() { if (held) print prev; held = 0 }
    $0 == "  \"wall\": {" { walls++; inwall = 1; next }
    inwall {
      if ($0 == "  }") { inwall = 0; sub(/,$/, "", prev) }
      else if ($0 == "  },") { inwall = 0 }
      next
    }
    { flush(); prev = $0; held = 1 }
    END { flush(); if (walls != 1 || inwall) exit 3 }
  '
}

# Writes one stripped report per scenario file into $1.
generate() {
  local out=$1 bin scenario name
  bin=$(pmesh_bin)
  mkdir -p "$out"
  for scenario in scenarios/*.toml; do
    name=$(basename "$scenario" .toml)
    if ! "$bin" sim "$scenario" --json | strip_wall > "$out/$name.json"; then
      echo "sim-reports: $scenario: no report (pmesh failed, or no single top-level wall object)" >&2
      exit 2
    fi
    echo "sim-reports: $scenario -> $out/$name.json" >&2
  done
}

case $mode in
  generate)
    generate "$dir"
    ;;
  check)
    [ -d "$dir" ] || { echo "sim-reports: $dir: no such directory" >&2; exit 2; }
    fresh=$(mktemp -d)
    trap 'rm -rf "$fresh"' EXIT
    generate "$fresh"
    if diff -ru "$dir" "$fresh"; then
      echo "sim-reports: all $(ls "$fresh" | wc -l) reports identical to $dir"
    else
      echo "sim-reports: reports differ from $dir (diff above: --- expected, +++ this checkout)" >&2
      exit 1
    fi
    ;;
  *)
    usage
    ;;
esac
