#!/usr/bin/env bash
# Heartbeat throughput with h2load against dispatchd (insecure h2c), server and load generator
# pinned to different cores. Usage: bench/heartbeat-h2load.sh [REQUESTS] [CONNECTIONS] [STREAMS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000} c=${2:-10} m=${3:-10}
bin=build/dispatchd
[ -x "$bin" ] || { echo "build first: scripts/build.sh --no-tests" >&2; exit 1; }
command -v h2load >/dev/null && command -v nghttp >/dev/null || { echo "needs nghttp2-client" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

taskset -c 0 "$bin" --insecure --listen 127.0.0.1:0 --log-level info 2>"$work/server.log" &
for _ in $(seq 100); do
  port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$work/server.log" | grep -o '[0-9]*$' || true)
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "${port:-}" ] || { LOG_HINT=$(cat "$work/server.log"); echo "server did not start: $LOG_HINT" >&2; exit 1; }
# An empty SessionRequest; the first SessionMessage starts with field 1 (0x0a, 25, the ID).
printf '\x00\x00\x00\x00\x00' >"$work/session.bin"
nghttp -n -H 'content-type: application/grpc' -H 'te: trailers' -H 'node-id: bench-node' \
  -d "$work/session.bin" "http://127.0.0.1:$port/docker.swarmkit.v1.Dispatcher/Session" \
  >"$work/session.out" 2>/dev/null &
for _ in $(seq 100); do [ -s "$work/session.out" ] && break; sleep 0.05; done
session=$(head -c 32 "$work/session.out" | tail -c 25)
# HeartbeatRequest{session_id}: 0x0a, 25, ID; framed with the 5-byte prefix.
{ printf '\x00\x00\x00\x00\x1b\x0a\x19'; printf '%s' "$session"; } >"$work/heartbeat.bin"
taskset -c 1 h2load -n "$n" -c "$c" -m "$m" -d "$work/heartbeat.bin" \
  -H 'content-type: application/grpc' -H 'te: trailers' -H 'node-id: bench-node' \
  "http://127.0.0.1:$port/docker.swarmkit.v1.Dispatcher/Heartbeat" | grep -E "finished in|requests:|status codes"
