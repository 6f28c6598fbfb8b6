#!/usr/bin/env bash
# Fuzzes every parser of outside input (fuzz/fuzz_targets/, cargo fuzz = libFuzzer) from its seed
# corpus in fuzz/corpus/, with the text protocols' dictionaries in fuzz/dict/. New inputs go to
# .deps/fuzz/corpus/TARGET (the seeds in the repository stay as they are); a crash is saved in
# fuzz/artifacts/TARGET/ and stops the run with its input named.
#
#   scripts/fuzz.sh --ci       # what CI runs: 30,000 inputs per target from the seeds, libFuzzer
#                              # seed 1, a fresh scratch corpus: the same inputs on every machine
#   scripts/fuzz.sh 3600       # an hour per target, growing .deps/fuzz/corpus
#   scripts/fuzz.sh 60 sip_message sdp_offer
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CI=0
if [ "${1:-}" = --ci ]; then CI=1; shift; fi
SECONDS_EACH=20
if [ $CI = 0 ] && [ $# -gt 0 ]; then SECONDS_EACH=$1; shift; fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cd fuzz
echo "fuzz: building the targets (nightly, libFuzzer, optimised with debug assertions)" >&2
mkdir -p "$ROOT/.deps/fuzz"
if ! cargo +nightly fuzz build -O >"$ROOT/.deps/fuzz/build.log" 2>&1; then
  # A target that does not build fails here, with the compiler's words, not later per target.
  echo "fuzz: the targets do not build; from $ROOT/.deps/fuzz/build.log:" >&2
  grep -E -A12 '^error' "$ROOT/.deps/fuzz/build.log" >&2 || tail -40 "$ROOT/.deps/fuzz/build.log" >&2
  exit 1
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
declare -A dict=([sip_message]=sip [sdp_offer]=sip [rs_metadata]=sip [twilio_session]=json [audiohook_session]=json)
status=0
for t in "${targets[@]}"; do
  work=$ROOT/.deps/fuzz/corpus/$t
  args=(-print_final_stats=1 -artifact_prefix="artifacts/$t/" -max_len=65536)
  if [ $CI = 1 ]; then
    work=$ROOT/.deps/fuzz/ci-corpus/$t
    rm -rf "$work"
    args+=(-seed=1 -runs=30000 -max_total_time=120)
  else
    args+=(-max_total_time="$SECONDS_EACH")
  fi
  mkdir -p "$work" "artifacts/$t"
  [ -n "${dict[$t]:-}" ] && args+=(-dict="dict/${dict[$t]}.dict")
  log=$ROOT/.deps/fuzz/$t.log
  if cargo +nightly fuzz run -O "$t" "$work" "corpus/$t" -- "${args[@]}" >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
    echo "fuzz: $t: $execs runs, coverage $cov, no crash"
  else
    status=1
    echo "fuzz: $t FAILED; its log: $log; the input:" >&2
    grep -E 'Test unit written to|panicked|ERROR' "$log" >&2 || tail -30 "$log" >&2
  fi
done
exit $status
