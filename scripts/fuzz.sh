#!/usr/bin/env bash
# Builds the libFuzzer targets in build-fuzz/ and runs each for SECONDS (default 60) on a copy of
# its seed corpus (test/fuzz/corpus/<target>), so the repository is never written to.
#   scripts/fuzz.sh [SECONDS]
# Fails on any crash, leak, timeout or sanitizer report; crashing inputs are kept in
# build-fuzz/fuzz-artifacts/<target>/. Installs nothing: scripts/install-deps.sh does.
#
# Needs clang 16 or newer (CXX may name another clang++): libstdc++ 12 only offers std::expected
# to compilers that claim __cpp_concepts >= 202002L, which clang 16-18 implement but do not claim,
# so the build claims it for them; clang 14 cannot compile <expected> at all.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
case "$seconds" in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;;
esac

if [ -z "${CXX:-}" ]; then
  for v in 19 18 17 16; do
    if command -v "clang++-$v" >/dev/null; then CC=clang-$v CXX=clang++-$v; break; fi
  done
fi
export CC=${CC:-clang} CXX=${CXX:-clang++}
command -v "$CXX" >/dev/null || { echo "fuzz.sh: $CXX not found (scripts/install-deps.sh)" >&2; exit 1; }

targets=(decoder_fuzz metadata_fuzz connection_fuzz)
dir=build-fuzz
flags=(
  -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
  -fno-omit-frame-pointer
  # std::expected from libstdc++ 12 (see above).
  -D__cpp_concepts=202002L -Wno-macro-redefined
  # asio 1.22 recognises C++20 coroutines only with GCC; clang has them too.
  -DASIO_HAS_CO_AWAIT=1 -DASIO_HAS_STD_COROUTINE=1
  # clang (not GCC) sees app::Server::io_ as unused.
  -Wno-error=unused-private-field
)
# -g1: line tables are all a crash report needs, and compile a good deal faster than -g.
# A unity build in CI, as scripts/build.sh makes one (a third less compile time).
unity=OFF
[ "${CI:-}" = true ] && unity=ON
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDISPATCHD_FUZZ=ON \
  -DDISPATCHD_TESTS=OFF -DDISPATCHD_WERROR=ON "-DCMAKE_CXX_FLAGS=${flags[*]}" \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" -DCMAKE_UNITY_BUILD=$unity >/dev/null
cmake --build "$dir" --parallel "$(nproc)" --target "${targets[@]}"

work=$(mktemp -d "${TMPDIR:-/tmp}/dispatchd-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Readable stack traces need llvm-symbolizer (package llvm or llvm-N); without it they are bare
# addresses.
symbolizer=$(command -v llvm-symbolizer || ls /usr/bin/llvm-symbolizer-* 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$symbolizer" ]; then
  ASAN_OPTIONS+=":external_symbolizer_path=$symbolizer"
  UBSAN_OPTIONS+=":external_symbolizer_path=$symbolizer"
fi

failed=()
summary=()
for t in "${targets[@]}"; do
  corpus="$work/$t"
  artifacts="$dir/fuzz-artifacts/$t"
  log="$dir/fuzz-artifacts/$t.log"
  rm -rf "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  cp -R "test/fuzz/corpus/$t/." "$corpus/"
  dict=()
  [ -f "test/fuzz/$t.dict" ] && dict=("-dict=test/fuzz/$t.dict")
  echo "fuzz.sh: $t for ${seconds}s"
  rc=0
  "$dir/test/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "${dict[@]}" "$corpus" >"$log" 2>&1 || rc=$?
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
  # Errors the server only logs (a handler or coroutine that threw) count as failures too.
  if [ "$rc" -ne 0 ] || [ -z "$done_line" ] ||
    grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: |handler threw|coroutine ended with' "$log"; then
    failed+=("$t")
    echo "fuzz.sh: $t FAILED (exit $rc); log: $log" >&2
    grep -E 'ERROR|runtime error|SUMMARY|handler threw|coroutine ended|invariant|connection_fuzz:' "$log" | head -n 20 >&2 || true
    ls -d "$artifacts"/* >&2 2>/dev/null || true
  fi
  summary+=("$t: ${done_line:-stopped early, see $log}")
done

echo "fuzz.sh: executions"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${seconds}s each without a finding"
