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
# Twice as many tests as cores: most of them wait (on timers, on peers, on etcd) more than they
# compute (the suite runs in 90 s instead of 130 s on 2 cores). Not under the sanitizers: there
# the load tests (10k sessions within a heartbeat timeout, agentsim's TLS fleet) need the CPU.
jobs=$(($(nproc) * 2))
[ "$dir" = build-asan ] && jobs=$(nproc)
ctest --test-dir "$dir" --output-on-failure --parallel "$jobs" --timeout 600
