#!/usr/bin/env bash
# memory-return.sh: does the server give memory back when sessions end? N heartbeating Session
# streams over 100 connections on a fresh server, then the client goes away (every stream and
# connection ends); VmRSS at start, with the sessions open, and 2, 15 and 40 s after they ended.
# The nodes stay registered until their heartbeats expire (5 s x 3) and stay in the store as DOWN
# afterwards: what is left at +40 s is that state plus what the allocator keeps.
# Server on core 0, dispatchd-sessmux on core 1.
#
#   bench/memory-return.sh [N] [--bin BUILD_DIR]        (N: 10000)
# MALLOC_CONF=... is passed to the server (jemalloc's options, for an A/B). Prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_args 10000 "$@"
out=$(mktemp -d)
trap 'kill "${client:-}" "${server:-}" 2>/dev/null || true; rm -rf "$out"' EXIT
start_insecure_dispatchd "$out"
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
r0=$(rss)
taskset -c 1 "$bin/bench/agentsim/dispatchd-sessmux" --addr "127.0.0.1:$port" --sessions "$n" \
  --connections 100 >"$out/client.json" 2>"$out/client.log" &
client=$!
until grep -q "all $n open" "$out/client.log"; do
  kill -0 "$client" 2>/dev/null || { cat "$out/client.log" >&2; exit 1; }
  sleep 0.1
done
sleep 1
r1=$(rss)
kill -INT "$client"; wait "$client" || true
client=""
sleep 2; r2=$(rss)
sleep 13; r3=$(rss)
sleep 25; r4=$(rss)
echo "$n sessions: RSS MB start $((r0 / 1024)), open $((r1 / 1024)), ended +2 s $((r2 / 1024)), +15 s $((r3 / 1024)), +40 s $((r4 / 1024)); returned by +40 s: $(( (r1 - r4) * 100 / (r1 - r0) )) % of the growth"
