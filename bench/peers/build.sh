#!/usr/bin/env bash
# Builds the benchmark peers and the session load client from Debian 12 packages into
# build/peers/ (installs the packages it needs with apt-get when missing and run as root):
#   grpcpp-peer   gRPC C++ server (--api cq | --api callback)           libgrpc++-dev
#   sessload      many Session streams over few connections (grpc++)    libgrpc++-dev
#   grpcgo-peer   grpc-go server, built offline from Debian's Go sources golang-google-grpc-dev
#
#   bench/peers/build.sh [--no-go]
# --no-go: only the C++ programs (CI: golang is a large install).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
go=1
for a in "$@"; do
  case "$a" in
    --no-go) go=0 ;;
    *) echo "peers/build.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

need() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "peers/build.sh: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

need g++ pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
out=$root/build/peers
gen=$out/gen-cpp
mkdir -p "$gen"
protos=(proto/types.proto proto/specs.proto proto/objects.proto proto/dispatcher.proto)
protoc -I proto --cpp_out="$gen" --grpc_out="$gen" \
  --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" "${protos[@]}"
# Generated code is not ours: compiled without -Werror, once, into an archive.
cxx=(g++ -std=c++20 -O2 -g)
read -r -a pc <<<"$(pkg-config --cflags grpc++ protobuf)"
read -r -a libs <<<"$(pkg-config --libs grpc++ protobuf)"
objs=()
for f in "$gen"/*.pb.cc; do
  o=${f%.cc}.o
  [ "$o" -nt "$f" ] || "${cxx[@]}" "${pc[@]}" -I "$gen" -c "$f" -o "$o"
  objs+=("$o")
done
rm -f "$out/libswarmpb.a"
ar rcs "$out/libswarmpb.a" "${objs[@]}"
ours=(-Wall -Wextra -Werror -isystem "$gen")
for prog in grpcpp_peer sessload; do
  "${cxx[@]}" "${ours[@]}" "${pc[@]}" "bench/peers/$prog.cpp" "$out/libswarmpb.a" "${libs[@]}" \
    -lpthread -o "$out/${prog//_/-}"
done
echo "peers/build.sh: built $out/grpcpp-peer and $out/sessload" >&2

[ "$go" = 1 ] || exit 0
need golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev \
  golang-google-protobuf-dev protoc-gen-go protoc-gen-go-grpc
gopath=$out/gopath
pkg=$gopath/src/dispatchpeer/swarmpb
mkdir -p "$pkg"
# The repo's protos carry no go_package option: give every file the same Go package.
m=()
for p in "${protos[@]}"; do m+=("M$(basename "$p")=dispatchpeer/swarmpb"); done
goopt=$(IFS=,; echo "${m[*]}")
protoc -I proto --go_out="$gopath/src" --go_opt="$goopt" \
  --go-grpc_out="$gopath/src" --go-grpc_opt="$goopt" "${protos[@]}"
mkdir -p "$gopath/src/dispatchpeer/cmd/grpcgo-peer"
cp bench/peers/grpcgo_peer.go "$gopath/src/dispatchpeer/cmd/grpcgo-peer/main.go"
(cd "$gopath/src/dispatchpeer/cmd/grpcgo-peer" &&
  GO111MODULE=off GOPROXY=off GOPATH="$gopath:/usr/share/gocode" \
    GOCACHE="$out/gocache" go build -o "$out/grpcgo-peer" .)
echo "peers/build.sh: built $out/grpcgo-peer" >&2
