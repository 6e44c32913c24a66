#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (fuzz/, cargo fuzz with libFuzzer) from the committed
# corpus. Installs cargo-fuzz when it is missing. Builds without a sanitizer, which the one stable
# toolchain allows (Rust's own checks: bounds, overflow, the targets' assertions).
#
#   scripts/fuzz.sh                 # each target for RUNS executions (default 100000), as CI does
#   RUNS=0 SECONDS_EACH=600 scripts/fuzz.sh   # each target for 10 minutes instead
#   scripts/fuzz.sh decode          # one target
#
# New inputs go to a scratch directory; a crash leaves its input in fuzz/artifacts/<target>/
# and fails the script. To keep new coverage, merge it into the corpus:
#   cd fuzz && cargo fuzz cmin -s none --release <target> corpus/<target>
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz@0.13.2
fi
runs="${RUNS:-100000}"
seconds="${SECONDS_EACH:-0}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode fold_orders)
cd fuzz
for target in "${targets[@]}"; do
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  limit=(-runs="$runs")
  [ "$seconds" -gt 0 ] && limit=(-max_total_time="$seconds")
  echo "== fuzz target $target: ${limit[*]}, from corpus/$target =="
  log="$scratch.log"
  if ! cargo fuzz run -s none --release "$target" "$scratch" "corpus/$target" -- \
    -dict=dict/events.dict -max_len=8192 "${limit[@]}" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed; its input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^Done' "$log" || true
  rm -rf "$scratch" "$log"
done
