#!/usr/bin/env bash
# Server CPU per Health.Check call over mutual TLS (ghz: 100,000 calls, 50 concurrent, 10
# connections), with dispatchd's own TLS 1.3 record layer and with --tls-openssl-records,
# alternating, ROUNDS times (default 3). CPU is the server's utime+stime from /proc.
#
#   bench/tls-records-cpu.sh [ROUNDS]        GHZ=path/to/ghz (default ../shared/tools/ghz)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-3}
ghz=${GHZ:-../shared/tools/ghz}
bin=${DISPATCHD_BIN:-build/dispatchd}
[ -x "$bin" ] || { echo "build first: scripts/build.sh --no-tests" >&2; exit 1; }
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
scripts/gen-certs.sh --out "$work" --nodes 1 >/dev/null
tck=$(getconf CLK_TCK)
n=100000
for round in $(seq "$rounds"); do
  for mode in own openssl; do
    extra=()
    [ "$mode" = openssl ] && extra=(--tls-openssl-records)
    : >"$work/log"
    "$bin" --tls-cert "$work/server.pem" --tls-key "$work/server.key" --tls-ca "$work/ca.pem" \
      --in-memory --listen 127.0.0.1:0 --admin-listen '' --log-level info "${extra[@]}" 2>"$work/log" &
    pid=$!
    port=$(server_port "$work/log")
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    "$ghz" --cacert "$work/ca.pem" --cert "$work/node-1.pem" --key "$work/node-1.key" \
      --cname swarm-manager --proto third_party/grpc/health/v1/health.proto \
      --call grpc.health.v1.Health.Check -d '{}' -n $n -c 50 --connections 10 \
      "127.0.0.1:$port" >"$work/ghz.txt" 2>&1
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    ok=$(grep -o '\[OK\] *[0-9]*' "$work/ghz.txt" | grep -o '[0-9]*$' || echo 0)
    cpu=$(((u1 - u0 + s1 - s0) * 10000000 / tck / n))
    echo "$mode records, round $round: $ok/$n OK, server CPU $((cpu / 10)).$((cpu % 10)) µs per call"
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
  done
done
