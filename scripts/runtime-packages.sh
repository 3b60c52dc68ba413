#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries the given binaries load, one a line:
# `ldd` finds the libraries, `dpkg -S` their packages. The Dockerfile's runtime stage installs
# exactly these, so the list follows the binaries (dispatchctl's grpc++ included) by itself.
#
#   scripts/runtime-packages.sh BINARY...
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: runtime-packages.sh BINARY..." >&2; exit 2; }

libs=$(for b in "$@"; do
  out=$(ldd "$b") || { echo "runtime-packages.sh: ldd $b failed" >&2; exit 1; }
  if grep -q "not found" <<<"$out"; then
    echo "runtime-packages.sh: $b has unresolved libraries:" >&2
    grep "not found" <<<"$out" >&2
    exit 1
  fi
  awk '$2 == "=>" && $3 ~ /^\// { print $3 }' <<<"$out"
done | sort -u)

for lib in $libs; do
  # With merged /usr, a library ldd finds in /lib is owned by its package as /lib/... or as
  # /usr/lib/...; ask for the path as ldd printed it, then as resolved.
  owner=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null) || {
    echo "runtime-packages.sh: no package owns $lib" >&2
    exit 1
  }
  # "libssl3:amd64: /usr/lib/x86_64-linux-gnu/libssl.so.3" -> libssl3
  echo "${owner%%:*}"
done | sort -u
