#!/usr/bin/env bash
# What one request costs a server when every request arrives alone on its own connection, as an
# agent's Heartbeat does: h2load holds N connections and sends one request per connection every
# 1/RPS seconds (-m 1 --rps), server and h2load pinned to different cores. Compares dispatchd
# (Dispatcher.Heartbeat over h2c) with nghttpd serving a 9-byte file on the same nghttp2 — the
# HTTP/2 floor for such a request on this machine. Reports server CPU per request (utime+stime
# from /proc/PID/stat over a window after warm-up) for each, interleaved REPS times.
#
#   bench/isolated-requests.sh [--conns N] [--rps R] [--reps K] [--window SECONDS]
#
# Defaults: 10000 connections × 0.2 requests/s each (2,000 requests/s: the rate of 10,000
# agents at the default 5 s heartbeat), 3 reps, 20 s windows. Needs nghttp2-client and
# nghttp2-server (h2load, nghttp, nghttpd).
set -euo pipefail
cd "$(dirname "$0")/.."
conns=10000 rps=0.2 reps=3 window=20
while [ $# -gt 0 ]; do
  case "$1" in
    --conns) conns=$2; shift 2 ;;
    --conns=*) conns=${1#*=}; shift ;;
    --rps) rps=$2; shift 2 ;;
    --rps=*) rps=${1#*=}; shift ;;
    --reps) reps=$2; shift 2 ;;
    --reps=*) reps=${1#*=}; shift ;;
    --window) window=$2; shift 2 ;;
    --window=*) window=${1#*=}; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "isolated-requests.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for t in h2load nghttp nghttpd; do
  command -v "$t" >/dev/null || { echo "isolated-requests.sh: needs $t (nghttp2-client, nghttp2-server)" >&2; exit 1; }
done
[ -x build/dispatchd ] && [ -x build/peers/sessload ] ||
  { echo "isolated-requests.sh: build first (scripts/build.sh builds dispatchd and build/peers/sessload)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((conns + 100)) ]; then
  echo "isolated-requests.sh: RLIMIT_NOFILE $(ulimit -n) is too low for $conns connections" >&2
  exit 1
fi
work=$(mktemp -d)
server= sessload=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
hz=$(getconf CLK_TCK)
warmup=$((conns / 1000 + 10))  # h2load opens the connections first

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# run KIND: starts the server, loads it, prints "KIND us_per_request requests_in_window".
run() {
  local kind=$1 port url extra=()
  port=$((4900 + RANDOM % 500))
  if [ "$kind" = nghttpd ]; then
    mkdir -p "$work/htdocs" && printf 'heartbeat' >"$work/htdocs/hb"
    taskset -c 0 nghttpd --no-tls -d "$work/htdocs" "$port" >/dev/null 2>&1 &
    server=$!
    url=http://127.0.0.1:$port/hb
    sleep 0.5
  else
    taskset -c 0 build/dispatchd --insecure --in-memory --listen "127.0.0.1:$port" --admin-listen= \
      --log-level warn 2>"$work/server.log" &
    server=$!
    sleep 0.5
    # One Session (held open by sessload as node sessload-0) gives the session ID every
    # Heartbeat names; one call must answer grpc-status 0 before the load, or the figures would
    # be those of an error path.
    : >"$work/session.out"
    build/peers/sessload --addr "127.0.0.1:$port" --sessions 1 --connections 1 --no-heartbeat \
      --print-session-id >"$work/session.out" 2>"$work/session.log" &
    sessload=$!
    for _ in $(seq 100); do [ "$(wc -l <"$work/session.out")" -ge 1 ] && break; sleep 0.05; done
    local session
    session=$(head -1 "$work/session.out")
    [ ${#session} = 25 ] || { echo "isolated-requests.sh: no session from the server" >&2; exit 1; }
    { printf '\x00\x00\x00\x00\x1b\x0a\x19'; printf '%s' "$session"; } >"$work/hb.bin"
    local st
    st=$(nghttp -v -H 'content-type: application/grpc' -H 'te: trailers' -H 'node-id: sessload-0' \
      -d "$work/hb.bin" "http://127.0.0.1:$port/docker.swarmkit.v1.Dispatcher/Heartbeat" 2>&1 |
      grep -ao 'grpc-status: [0-9]*' | grep -o '[0-9]*$' || echo none)
    [ "$st" = 0 ] || { echo "isolated-requests.sh: Heartbeat answers grpc-status $st" >&2; exit 1; }
    url=http://127.0.0.1:$port/docker.swarmkit.v1.Dispatcher/Heartbeat
    extra=(-d "$work/hb.bin" -H 'content-type: application/grpc' -H 'te: trailers'
           -H 'node-id: sessload-0')
  fi
  taskset -c 1 h2load -c "$conns" -m 1 --rps "$rps" -D $((warmup + window + 5)) \
    "${extra[@]}" "$url" >"$work/h2load.out" 2>&1 &
  local load=$!
  sleep "$warmup"
  local a b
  a=$(cpu_ticks "$server")
  sleep "$window"
  b=$(cpu_ticks "$server")
  wait "$load" || true
  [ -n "$sessload" ] && { kill "$sessload" 2>/dev/null; wait "$sessload" 2>/dev/null || true; }
  sessload=
  kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true
  server=
  grep -q "0 failed, 0 errored" "$work/h2load.out" ||
    echo "isolated-requests.sh: $kind: h2load saw failures: $(grep 'requests:' "$work/h2load.out")" >&2
  python3 -c "import sys; t,c,r,w,hz=map(float,sys.argv[1:6]); n=c*r*w; print(f'{sys.argv[6]} {t*1e6/hz/n:.1f} {int(n)}')" \
    "$((b - a))" "$conns" "$rps" "$window" "$hz" "$kind"
}

echo "# $conns connections x $rps requests/s each, ${window} s windows, $reps reps (server on core 0)"
for i in $(seq 1 "$reps"); do
  run dispatchd
  run nghttpd
done | tee "$work/results"
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip() and not l.startswith('#')]
by = {}
for kind, us, _ in rows:
    by.setdefault(kind, []).append(float(us))
med = {k: statistics.median(v) for k, v in by.items()}
for k, v in sorted(med.items()):
    print(f"{k}: median {v:.1f} us of server CPU per request ({', '.join(f'{x:.1f}' for x in by[k])})")
if 'dispatchd' in med and 'nghttpd' in med:
    print(f"dispatchd / nghttpd = {med['dispatchd'] / med['nghttpd']:.2f}")
PY
