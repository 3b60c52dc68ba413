#!/usr/bin/env bash
# Where a reconnecting fleet's TLS handshakes run (--tls-handshake-threads): N simulated agents
# (dispatchd-agentsim, each its own certificate and mTLS connection) connect at once to a fresh
# dispatchd, for each thread count given; reports the time until every agent had a session and
# the server's CPU split between its io thread and the rest (the handshake pool), per session.
#
#   bench/handshake-pool.sh [N] [--threads "0 1"] [--reps 3] [--server-cpus 0] [--sim-cpus 1]
#
# Runs are interleaved (0 1 0 1 ...). The server and simulator CPU sets are taskset lists; give
# the server more than one CPU for a pool to help wall time (the default pins both to one core
# each, which shows only how the CPU is split).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=4000 threads="0 1" reps=3 server_cpus=0 sim_cpus=1
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --server-cpus) server_cpus=$2; shift 2 ;;
    --sim-cpus) sim_cpus=$2; shift 2 ;;
    [0-9]*) n=$1; shift ;;
    *) echo "handshake-pool.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=${DISPATCHD_BIN:-build/dispatchd}
sim=build/bench/agentsim/dispatchd-agentsim
[ -x "$bin" ] && [ -x "$sim" ] || { echo "build first: scripts/build.sh" >&2; exit 1; }
certs=build/bench-certs
[ -f "$certs/ca.pem" ] || scripts/gen-certs.sh --out "$certs" --nodes 0 >/dev/null
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
ticks=$(getconf CLK_TCK)

# utime+stime of one /proc stat file, in ticks (the command name may hold spaces).
cpu_of() { sed 's/^.*) //' "$1" | awk '{print $12 + $13}'; }

printf '| threads | rep | agents with a session | time to all sessions (s) | io thread CPU per session (µs) | pool CPU per session (µs) | total per session (µs) |\n'
printf '|---|---|---|---|---|---|---|\n'
for rep in $(seq "$reps"); do
  for t in $threads; do
    : >"$work/server.log"
    taskset -c "$server_cpus" "$bin" --in-memory --listen 127.0.0.1:0 --admin-listen '' --log-level info --heartbeat-period 1h \
      --tls-cert "$certs/server.pem" --tls-key "$certs/server.key" --tls-ca "$certs/ca.pem" \
      --tls-handshake-threads "$t" 2>"$work/server.log" &
    server=$!
    port=$(server_port "$work/server.log")
    io0=$(cpu_of /proc/$server/task/$server/stat)
    all0=$(cpu_of /proc/$server/stat)
    taskset -c "$sim_cpus" "$sim" --ca-cert "$certs/ca.pem" --ca-key "$certs/ca.key" \
      --cert-cache "$certs/agentsim-cache" --addr "127.0.0.1:$port" --agents "$n" --for 8s \
      --json >"$work/sim.json" 2>"$work/sim.log"
    io1=$(cpu_of /proc/$server/task/$server/stat)
    all1=$(cpu_of /proc/$server/stat)
    kill "$server"; wait "$server" 2>/dev/null || true; server=
    python3 - "$work/sim.json" "$t" "$rep" "$io0" "$io1" "$all0" "$all1" "$ticks" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, rep = sys.argv[2], sys.argv[3]
io0, io1, all0, all1, hz = map(float, sys.argv[4:9])
s = max(r["agents_with_session"], 1)
io = (io1 - io0) / hz * 1e6 / s
total = (all1 - all0) / hz * 1e6 / s
print(f'| {t} | {rep} | {r["agents_with_session"]} | {r["time_to_all_sessions_s"]} | {io:.0f} | {total - io:.0f} | {total:.0f} |')
PY
  done
done
