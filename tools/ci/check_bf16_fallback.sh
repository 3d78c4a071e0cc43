#!/usr/bin/env bash
# Runs the bfloat16 tests (the performer_bf16_tests target, built for x86-64-v3) under QEMU's
# user-mode emulation of a Haswell: a CPU with AVX2 but neither AVX512-BF16 nor AMX, whatever
# CPU runs this. Passes when the run passes, some portable cases ran, and every case named for a
# fast backend (amx, avx512) reported itself skipped rather than passed.
# Usage: tools/ci/check_bf16_fallback.sh path/to/performer_bf16_tests
set -euo pipefail

binary=${1:?usage: $0 path/to/performer_bf16_tests}
cpu=Haswell-v4
if ! command -v qemu-x86_64 >/dev/null; then
  echo "check_bf16_fallback: qemu-x86_64 not found (apt-get install qemu-user)" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
OMP_NUM_THREADS=2 qemu-x86_64 -cpu "$cpu" "$binary" >"$log" 2>&1 || status=$?
passed=$(grep -c '^\[       OK \]' "$log" || true)
skipped=$(grep -c '^\[  SKIPPED \] .* ([0-9]* ms)$' "$log" || true)
fast_passed=$(grep -iE '^\[       OK \] .*(amx|avx512)' "$log" || true)
fast_skipped=$(grep -ciE '^\[  SKIPPED \] .*(amx|avx512).* \([0-9]* ms\)$' "$log" || true)

echo "check_bf16_fallback: emulated $cpu: $passed cases passed, $skipped skipped" \
  "($fast_skipped of them named for amx or avx512), exit status $status"
if [[ $status -ne 0 ]]; then
  grep -E '^\[  FAILED  \]|Failure|exception' "$log" | head -n 40 >&2
  echo "check_bf16_fallback: the tests failed on the emulated $cpu" >&2
  exit 1
fi
if [[ -n "$fast_passed" ]]; then
  echo "$fast_passed" >&2
  echo "check_bf16_fallback: fast-backend cases above passed on a CPU that cannot run them" >&2
  exit 1
fi
if [[ $passed -eq 0 || $fast_skipped -eq 0 ]]; then
  echo "check_bf16_fallback: expected portable cases to pass and fast-backend ones to skip" >&2
  exit 1
fi
