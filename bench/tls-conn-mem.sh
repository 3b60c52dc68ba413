#!/usr/bin/env bash
# Server memory per connection, mutual TLS against plaintext h2c: for each mode a FRESH dispatchd,
# 20 warm-up connections opened and closed, VmRSS read, then N connections opened (each its own
# client certificate, TLS handshake, HTTP/2 preface and SETTINGS, with --session one idle
# Dispatcher.Session each) and held; VmRSS read again 2 s after the last one is up.
#
#   bench/tls-conn-mem.sh [N] [--session] [--modes "h2c tls13 tls12"] [-- SERVER_FLAGS...]
#
# Modes: h2c (--insecure), tls13 and tls12 (clients send their leaf certificate only, as Go
# agents do), tls13root (clients also send the root CA, as OpenSSL clients do by default).
#
# N defaults to 2000. Certificates are minted once into build/bench-certs (CA and server by
# scripts/gen-certs.sh, node certificates by bench/mint-node-certs.py) and reused. With gdb
# installed, the server's heap in use (glibc malloc_stats) is reported beside RSS: RSS also
# depends on heap history (whether the pages an allocation never writes were touched before),
# heap in use does not. SERVER_WRAP (environment) prefixes the server command, e.g.
# SERVER_WRAP="heaptrack -o /tmp/ht" to profile. DISPATCHD_BIN: another server binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=2000 session=() modes="h2c tls13 tls12" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --session) session=(--session); shift ;;
    --modes) modes=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    [0-9]*) n=$1; shift ;;
    *) echo "tls-conn-mem.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=${DISPATCHD_BIN:-build/dispatchd}
[ -x "$bin" ] || { echo "build first: scripts/build.sh --no-tests" >&2; exit 1; }
certs=${TLS_MEM_CERTS:-build/bench-certs}
warmup=20
[ -f "$certs/server.pem" ] || scripts/gen-certs.sh --out "$certs" --nodes 0 >/dev/null
python3 bench/mint-node-certs.py "$certs" $((n + warmup))
ulimit -n $((n + warmup + 1000))
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT

for mode in $modes; do
  case "$mode" in
    h2c) sflags=(--insecure) cflags=(--insecure) ;;
    tls13) sflags=(--tls-cert "$certs/server.pem" --tls-key "$certs/server.key" --tls-ca "$certs/ca.pem")
      cflags=(--certs "$certs" --tls-max 1.3) ;;
    tls13root) sflags=(--tls-cert "$certs/server.pem" --tls-key "$certs/server.key" --tls-ca "$certs/ca.pem")
      cflags=(--certs "$certs" --tls-max 1.3 --send-root) ;;
    tls12) sflags=(--tls-cert "$certs/server.pem" --tls-key "$certs/server.key" --tls-ca "$certs/ca.pem")
      cflags=(--certs "$certs" --tls-max 1.2) ;;
    *) echo "tls-conn-mem.sh: unknown mode $mode" >&2; exit 2 ;;
  esac
  : >"$work/server.log"
  # Long heartbeat period: idle sessions stay up for the whole measurement.
  ${SERVER_WRAP:-} "$bin" "${sflags[@]}" --in-memory --listen 127.0.0.1:0 --admin-listen '' \
    --heartbeat-period 1h --log-level info "${extra[@]}" 2>"$work/server.log" &
  server=$!
  port=$(server_port "$work/server.log")
  # The process that listens (with a wrapper, not $server itself).
  pid=$(ss -Hltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  heap=()
  command -v gdb >/dev/null && heap=(--heap-stats)
  python3 bench/tls-conn-probe.py --port "$port" --pid "$pid" -n "$n" --warmup "$warmup" \
    "${cflags[@]}" "${session[@]}" "${heap[@]}"
  # malloc_stats(): the "Total (incl. mmap)" in-use bytes, before and after.
  grep -A2 '^Total (incl. mmap)' "$work/server.log" | grep -o 'in use bytes *= *[0-9]*' |
    grep -o '[0-9]*$' | paste -sd' ' | while read -r b a; do
      echo "  heap in use (malloc_stats): $((b / 1024)) KiB -> $((a / 1024)) KiB, $(((a - b) / n)) bytes per connection"
    done
  kill -INT "$pid"
  wait "$server" 2>/dev/null || true
  server=
done
