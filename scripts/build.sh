#!/usr/bin/env bash
# Configures and builds dispatchd. Usage: scripts/build.sh [--sanitize] [--no-tests]
#   --sanitize   AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/
#   --no-tests   only the server (faster)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=build
tests=ON
# Warnings are errors in the project's own builds (a plain cmake configure leaves them warnings).
args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DDISPATCHD_WERROR=ON)
for a in "$@"; do
  case "$a" in
    --sanitize) dir=build-asan; args+=(-DDISPATCHD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug) ;;
    --no-tests) tests=OFF ;;
    *) echo "build.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
args+=(-DDISPATCHD_TESTS=$tests)
cmake -S . -B "$dir" -G Ninja "${args[@]}" >/dev/null
cmake --build "$dir" --parallel "$(nproc)"
