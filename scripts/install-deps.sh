#!/usr/bin/env bash
# Installs every Debian 12 package dispatchd's build and tests need. Idempotent and
# non-interactive; run as root (or through sudo).
#
#   scripts/install-deps.sh [--build-only]
#
# --build-only installs just what `scripts/build.sh --no-tests` needs (the Dockerfile's build
# stage): no googletest, h2load, clang-format or clang 16.
set -euo pipefail

build_only=0
for a in "$@"; do
  case "$a" in
    --build-only) build_only=1 ;;
    *) echo "install-deps.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

packages=(
  # build
  build-essential cmake ninja-build pkg-config mold
  libasio-dev libnghttp2-dev libssl-dev libprotobuf-dev protobuf-compiler libfmt-dev openssl
  libjemalloc-dev
  # dispatchctl (and the tests' peers): the gRPC C++ client
  libgrpc++-dev protobuf-compiler-grpc
)
if [ "$build_only" = 0 ]; then
  packages+=(
    # tests: googletest, h2load; nghttpd and python3 for bench/run.sh --smoke (small packages)
    libgtest-dev libgmock-dev nghttp2-client nghttp2-server python3
    # tests: a real etcd for the etcd client (test/etcd; skipped without /usr/bin/etcd)
    etcd-server
    # formatting check
    clang-format
    # fuzzing (scripts/fuzz.sh): clang 16 compiles libstdc++'s <expected>; clang 14 cannot
    clang-16 libclang-rt-16-dev llvm-16
  )
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
