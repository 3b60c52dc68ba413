#!/usr/bin/env bash
# fanout-100k.sh: one manager-list change to N idle Session streams (no heartbeats, so only the
# fan-out runs), on a fresh server: RSS per session, setup CPU per session, the server's CPU per
# session for the fan-out (/proc/PID/stat, from just before the Control call until every session
# had the new list) and p50/p99 from just before starting dispatchctl to each session's message
# (with one `dispatchctl managers ls` timed just before: what dispatchctl itself adds).
# Server on core 0, dispatchd-sessmux on core 1.
#
#   bench/fanout-100k.sh [N] [--bin BUILD_DIR]        (N: 100000)
# SERVER_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 runs the server with that malloc
# (the A/B in BENCHMARKS.md). Prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_args 100000 "$@"
out=$(mktemp -d)
trap 'kill "${client:-}" "${server:-}" 2>/dev/null || true; rm -rf "$out"' EXIT
start_insecure_dispatchd "$out"
malloc=glibc
ldd "$bin/dispatchd" | grep -q jemalloc && malloc=jemalloc
[ -n "${SERVER_PRELOAD:-}" ] && malloc=$(basename "$SERVER_PRELOAD")
stat_cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
r0=$(rss "$server") c0=$(stat_cpu "$server")
taskset -c 1 "$bin/bench/agentsim/dispatchd-sessmux" --addr "127.0.0.1:$port" --sessions "$n" \
  --connections 100 --no-heartbeat --times "$out/times" >"$out/client.json" 2>"$out/client.log" &
client=$!
until grep -q "all $n open" "$out/client.log"; do
  kill -0 "$client" 2>/dev/null || { cat "$out/client.log" >&2; exit 1; }
  sleep 0.2
done
c1=$(stat_cpu "$server")
sleep 1
r1=$(rss "$server")
# What starting dispatchctl and its connection cost, timed on a read just before the change.
tl=$(date +%s%N)
"$bin/dispatchctl" --addr "127.0.0.1:$port" --insecure managers ls >/dev/null
trigger=$((($(date +%s%N) - tl) / 1000000))
a=$(stat_cpu "$server")
t0=$(date +%s%N)
"$bin/dispatchctl" --addr "127.0.0.1:$port" --insecure managers set \
  "manager-1=127.0.0.1:$port@10" "manager-x=127.0.0.1:$port@10" >/dev/null
until tail -n 2 "$out/client.log" | grep -q "changed=$n "; do sleep 0.1; done
a2=$(stat_cpu "$server")
kill -INT "$client"; wait "$client" || true
python3 - "$out/times" "$t0" "$n" "$r0" "$r1" "$c0" "$c1" "$a" "$a2" "$malloc" "$trigger" <<'PY'
import sys
times, t0, n, r0, r1, c0, c1, a, a2 = sys.argv[1], *map(int, sys.argv[2:10])
t = sorted(int(x) for x in open(times))
hz = 100  # /proc ticks
print(f"{sys.argv[10]}: {n} sessions, RSS/session {(r1 - r0) * 1024 / n:.0f} B, "
      f"setup {(c1 - c0) / hz * 1e6 / n:.1f} us/session, fan-out server CPU "
      f"{(a2 - a) / hz * 1e6 / n:.1f} us/session, got it {len(t)}, "
      f"p50 {(t[len(t) // 2] - t0) / 1e6:.0f} ms, p99 {(t[int(len(t) * .99)] - t0) / 1e6:.0f} ms "
      f"(dispatchctl's own start and call: {sys.argv[11]} ms)")
PY
