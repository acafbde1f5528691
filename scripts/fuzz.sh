#!/usr/bin/env bash
# R4 of the torture suite: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS seconds
# each, one after the other, on nightly (cargo-fuzz needs it). The committed seeds in
# fuzz/seeds/<target>/ (real examples and any regression inputs) run first; what
# libFuzzer finds accumulates in fuzz/corpus/<target>/ (not committed). One line per
# target:
#   TORTURE R4 <target>: runs=<n> crashes=<0|1> seconds=<s>
# and a non-zero exit when any target crashed (panic, overflow, timeout, out of memory);
# the input is left in fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [seconds] [target...]   (default: 60, every target)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-${FUZZ_SECONDS:-60}}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(manifest classad chirp propfind store_url)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal || exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked || exit 1
fi

# No sanitizer: baton's parsers are safe Rust, so ASan would only halve the runs.
# Debug assertions and overflow checks stay on (cargo-fuzz's default), so an arithmetic
# overflow is a crash, as it is in baton's debug builds and tests.
fuzz=(cargo +nightly fuzz)
"${fuzz[@]}" build -s none || exit 1

failed=0
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/logs/$t.log"
  start=$(date +%s)
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: 2 GiB is a leak or a
  # blow-up (the ad and manifest readers promise bounded memory).
  "${fuzz[@]}" run -s none "$t" "$root/fuzz/corpus/$t" "$root/fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$root/fuzz/artifacts/$t/" >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  crashes=0
  if [ $rc -ne 0 ]; then
    crashes=1
    failed=1
    echo "--- $t failed (exit $rc); the end of $log:"
    grep -v '^#[0-9]' "$log" | tail -40
    ls -1 "fuzz/artifacts/$t" | sed 's/^/    artifact: /'
  fi
  echo "TORTURE R4 $t: runs=${runs:-0} crashes=$crashes seconds=$took"
done
exit $failed
