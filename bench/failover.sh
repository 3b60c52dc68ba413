#!/usr/bin/env bash
# Leader failover with several managers on etcd (issue 16): three dispatchd managers on a local
# three-member etcd (scripts/etcd-local.sh), N simulated SwarmKit agents (dispatchd-agentsim,
# h2c, following the manager list). Each repetition SIGKILLs the current leader and measures,
# from the kill, when another manager is leader (dispatchd_cluster_leader 1) and when half, 99 %
# and all of the agents have a Session on it again (dispatchd_sessions{state="streaming"},
# sampled every 50 ms), then starts the killed manager again (it rejoins as a follower).
#
# Usage: bench/failover.sh [--agents N] [--reps N] [--lease-ttl D] [--bin DIR]
#   --agents     agents (default 1000)
#   --reps       leader kills (default 3)
#   --lease-ttl  the managers' --etcd-lease-ttl (default 5s)
#   --bin        build directory with dispatchd and bench/agentsim (default build)
set -euo pipefail
cd "$(dirname "$0")/.."

agents=1000 reps=3 ttl=5s bin=build
while [ $# -gt 0 ]; do
  case $1 in
    --agents) agents=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --lease-ttl) ttl=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "failover.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
sim=$bin/bench/agentsim/dispatchd-agentsim
for f in "$bin/dispatchd" "$sim"; do
  [ -x "$f" ] || { echo "failover.sh: $f missing: build first (scripts/build.sh)" >&2; exit 1; }
done

work=$(mktemp -d /var/tmp/dispatchd-failover.XXXXXX)
declare -A pid
sim_pid=""
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
  for i in 1 2 3; do [ -n "${pid[$i]:-}" ] && kill -9 "${pid[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/etcd-local.sh stop --dir "$work/etcd"
  rm -rf "$work"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
metric() {  # MANAGER NAME
  curl -s --max-time 1 "http://127.0.0.1:$((9250 + $1))/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}
leader() {
  for i in 1 2 3; do
    [ -n "${pid[$i]:-}" ] && [ "$(metric "$i" dispatchd_cluster_leader)" = 1 ] && { echo "$i"; return; }
  done
  echo ""
}
start_manager() {
  "$bin/dispatchd" --insecure --node-id "manager-$1" --listen "127.0.0.1:$((4250 + $1))" \
    --admin-listen "127.0.0.1:$((9250 + $1))" --store "$store" --etcd-lease-ttl "$ttl" \
    --log-level warn 2>>"$work/manager-$1.log" &
  pid[$1]=$!
}

store=$(scripts/etcd-local.sh start --dir "$work/etcd" --port-base 23790)
for i in 1 2 3; do start_manager "$i"; done
for _ in $(seq 300); do [ -n "$(leader)" ] && break; sleep 0.05; done
l=$(leader)
[ -n "$l" ] || { echo "failover.sh: no leader elected" >&2; exit 1; }
"$sim" --insecure --addr 127.0.0.1:4251 --agents "$agents" --for 1h >"$work/sim.out" 2>&1 &
sim_pid=$!
streaming() { metric "$1" 'dispatchd_sessions{state="streaming"}'; }
for _ in $(seq 1200); do [ "$(streaming "$l")" = "$agents" ] && break; sleep 0.05; done
[ "$(streaming "$l")" = "$agents" ] || { echo "failover.sh: agents never all had a session" >&2; exit 1; }

echo "| rep | killed | new leader | elected after ms | 50 % back ms | 99 % back ms | all back ms |"
echo "|---|---|---|---|---|---|---|"
for rep in $(seq 1 "$reps"); do
  l=$(leader)
  t0=$(now_ms)
  kill -9 "${pid[$l]}"; wait "${pid[$l]}" 2>/dev/null || true; pid[$l]=""
  elected="" half="" most="" all="" n=""
  while [ -z "$all" ] && [ $(($(now_ms) - t0)) -lt 120000 ]; do
    n=$(leader)
    if [ -n "$n" ]; then
      [ -z "$elected" ] && elected=$(($(now_ms) - t0))
      s=$(streaming "$n"); s=${s:-0}
      [ -z "$half" ] && [ "$s" -ge $((agents / 2)) ] && half=$(($(now_ms) - t0))
      [ -z "$most" ] && [ "$s" -ge $((agents * 99 / 100)) ] && most=$(($(now_ms) - t0))
      [ "$s" -ge "$agents" ] && all=$(($(now_ms) - t0))
    fi
    sleep 0.05
  done
  echo "| $rep | manager-$l | manager-${n:-?} | ${elected:-—} | ${half:-—} | ${most:-—} | ${all:-—} |"
  [ -n "$all" ] || { echo "failover.sh: not every agent came back within 120 s" >&2; exit 1; }
  start_manager "$l"
  for _ in $(seq 200); do [ "$(metric "$l" dispatchd_cluster_managers)" = 3 ] && break; sleep 0.05; done
done
