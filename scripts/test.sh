#!/usr/bin/env bash
# Builds dispatchd with its tests and runs the whole suite with CTest.
# Usage: scripts/test.sh [--sanitize]   (--sanitize: the same suite under ASan + UBSan)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=build
if [ "${1:-}" = "--sanitize" ]; then
  dir=build-asan
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export LSAN_OPTIONS=suppressions=$PWD/test/lsan.supp
fi
scripts/build.sh "$@"
ctest --test-dir "$dir" --output-on-failure --parallel "$(nproc)" --timeout 600
