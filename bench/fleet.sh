#!/usr/bin/env bash
# fleet.sh: issue 12's fleet scenarios with dispatchd-agentsim, each against a fresh server over
# mutual TLS (every agent its own certificate, minted from the CA below and cached):
#   steady  N agents idle (Session, Heartbeat every ~5 s, Assignments): server RSS per agent and
#           server CPU per heartbeat in the steady window; against dispatchd and swarmref
#   herd    fleet up, SIGTERM dispatchd, start it again on the same address and --state-dir:
#           time until every agent has a session, max per-agent reconnect, errors by code
#   fanout  fleet up, `dispatchctl managers set` once: p50/p99/max until each agent saw the list
#   churn   CHURN % of the agents drop their connection abruptly every second for CHURN_FOR:
#           missed heartbeats of the others, server RSS before/during/after
# Server and simulator are pinned to different cores (taskset). Writes build/fleet/results.json
# (plus each run's raw report), prints a markdown table, draws PNG plots (bench/plot-fleet.py,
# python3-matplotlib) and, with --update-benchmarks, rewrites BENCHMARKS.md's Fleet section.
#
#   bench/fleet.sh [--quick] [--sizes "1000 10000"] [--scenarios "steady herd fanout churn"]
#                  [--peers "dispatchd swarmref"] [--churn PCT] [--churn-for D]
#                  [--sim-args "ARGS"] [--server-args "ARGS"] [--update-benchmarks] [--out DIR]
#
# --sim-args: more dispatchd-agentsim flags for every run (e.g. "--max-connecting 32").
# --server-args: more dispatchd flags for every run (e.g. "--max-handshakes 0").
# --quick: 1,000 agents, churn for 15 s, shorter waits: a few minutes in all.
# This machine's RLIMIT_NOFILE hard limit caps one process (server or simulator) at that many
# descriptors; sizes that do not fit are skipped with a note (the script says which, and why).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=0 sizes="" scenarios="steady herd fanout churn" peers="dispatchd swarmref"
churn_pct=1 churn_for="" update=0 out=build/fleet sim_args="" server_args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --sizes) sizes=$2; shift 2 ;;
    --sizes=*) sizes=${1#*=}; shift ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --scenarios=*) scenarios=${1#*=}; shift ;;
    --peers) peers=$2; shift 2 ;;
    --peers=*) peers=${1#*=}; shift ;;
    --churn) churn_pct=$2; shift 2 ;;
    --churn=*) churn_pct=${1#*=}; shift ;;
    --churn-for) churn_for=$2; shift 2 ;;
    --churn-for=*) churn_for=${1#*=}; shift ;;
    --sim-args) sim_args=$2; shift 2 ;;
    --sim-args=*) sim_args=${1#*=}; shift ;;
    --server-args) server_args=$2; shift 2 ;;
    --server-args=*) server_args=${1#*=}; shift ;;
    --update-benchmarks) update=1; shift ;;
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "fleet.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$sizes" ]; then
  if [ "$quick" = 1 ]; then sizes="1000"; else sizes="1000 10000"; fi
fi
if [ -z "$churn_for" ]; then
  if [ "$quick" = 1 ]; then churn_for=15s; else churn_for=60s; fi
fi
steady_secs=15  # ≥ 2 heartbeat periods (5 s default, kept) after all sessions + 2 s
[ "$quick" = 1 ] && steady_secs=12
swarmref=${SWARMREF:-$root/../shared/peers/swarmref/swarmref}

# --- What fits here -------------------------------------------------------------------------
hard=$(ulimit -Hn)
max_agents=$((hard - 150))  # the server also holds its listener, logs, state files…
fit_sizes=""
for n in $sizes; do
  if [ "$n" -gt "$max_agents" ]; then
    echo "fleet.sh: SKIPPING $n agents: one process may hold at most $hard descriptors here" \
      "(RLIMIT_NOFILE hard limit; raising it needs CAP_SYS_RESOURCE), so neither the server nor" \
      "the simulator can hold $n connections. The largest size that fits is ~$max_agents." >&2
    skipped="${skipped:-} $n"
  else
    fit_sizes="$fit_sizes $n"
  fi
done
fit_sizes=${fit_sizes# }
[ -n "$fit_sizes" ] || { echo "fleet.sh: no size fits this machine" >&2; exit 1; }
largest=0
for n in $fit_sizes; do [ "$n" -gt "$largest" ] && largest=$n; done
ulimit -n "$hard"

# --- Build what is missing --------------------------------------------------------------------
agentsim=build/bench/agentsim/dispatchd-agentsim
if [ ! -x build/dispatchd ] || [ ! -x build/dispatchctl ] || [ ! -x "$agentsim" ]; then
  echo "fleet.sh: building (scripts/build.sh)" >&2
  scripts/build.sh
fi
if [ ! -x "$swarmref" ]; then
  echo "fleet.sh: no swarmref at $swarmref (set SWARMREF): measuring dispatchd only" >&2
  peers=$(tr ' ' '\n' <<<"$peers" | grep -v '^swarmref$' | tr '\n' ' ')
fi

if [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0) pin_sim=(taskset -c 1)
else
  pin_server=() pin_sim=()
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
certs=$out/certs
[ -f "$certs/ca.pem" ] || scripts/gen-certs.sh --out "$certs" --nodes 0 >/dev/null
cache=$out/cert-cache
sim_common=(--ca-cert "$certs/ca.pem" --ca-key "$certs/ca.key" --cert-cache "$cache")
port=4390
runs=$out/runs
rm -rf "$runs" && mkdir -p "$runs"

# Mint every agent's certificate once, on all cores, before anything is measured.
echo "fleet.sh: certificates for $largest agents (minted once, then cached in $cache)" >&2
"$agentsim" "${sim_common[@]}" --agents "$largest" --addr 127.0.0.1:1 --for 0s >/dev/null \
  2>"$out/mint.log" || { cat "$out/mint.log" >&2; exit 1; }
grep '^agentsim:' "$out/mint.log" | head -1 >&2 || true

server_pid= sim_pid=
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

# start_server KIND PORT LOG [STATE_DIR]: starts it, waits until it listens, sets server_pid and
# writes the PID to $out/server.pid (the simulator follows that file across restarts).
start_server() {
  local kind=$1 p=$2 log=$3 state=${4:-}
  local extra=()
  if [ "$kind" = dispatchd ]; then
    if [ -n "$state" ]; then extra=(--state-dir "$state"); else extra=(--in-memory); fi
    # shellcheck disable=SC2206  # word splitting wanted: several flags in one argument
    [ -n "$server_args" ] && extra+=($server_args)
    "${pin_server[@]}" build/dispatchd --listen "127.0.0.1:$p" --admin-listen= \
      --tls-cert "$certs/server.pem" --tls-key "$certs/server.key" --tls-ca "$certs/ca.pem" \
      "${extra[@]}" 2>>"$log" &
  else
    "${pin_server[@]}" "$swarmref" --listen "127.0.0.1:$p" \
      --tls-cert "$certs/server.pem" --tls-key "$certs/server.key" --tls-ca "$certs/ca.pem" \
      2>>"$log" &
  fi
  server_pid=$!
  echo "$server_pid" >"$out/server.pid"
  for _ in $(seq 1 200); do
    grep -q "listening on" "$log" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || { tail -5 "$log" >&2; echo "fleet.sh: $kind exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "fleet.sh: $kind did not start" >&2
  exit 1
}

stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# start_sim NAME N [flags...]: the simulator in the background, its JSON report in $runs/NAME.json.
start_sim() {
  local name=$1 n=$2
  shift 2
  "${pin_sim[@]}" "$agentsim" "${sim_common[@]}" --addr "127.0.0.1:$port" --agents "$n" \
    --server-pid-file "$out/server.pid" --for 30m --json $sim_args "$@" \
    >"$runs/$name.json" 2>"$runs/$name.log" &
  sim_pid=$!
}

# wait_sessions NAME N TIMEOUT_S: until the simulator's progress line shows N open sessions.
wait_sessions() {
  local name=$1 n=$2 limit=$3 start=$SECONDS
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    if tail -n 3 "$runs/$name.log" 2>/dev/null | grep -q " sessions=$n "; then return 0; fi
    kill -0 "$sim_pid" 2>/dev/null || { tail -5 "$runs/$name.log" >&2; return 1; }
    sleep 0.5
  done
  echo "fleet.sh: $name: not all $n agents had a session after ${limit}s" >&2
  tail -n 2 "$runs/$name.log" >&2
  return 1
}

end_sim() {
  kill -INT "$sim_pid" 2>/dev/null || true
  wait "$sim_pid" 2>/dev/null || true
  sim_pid=
}

connect_limit() { echo $(($1 / 50 + 60)); }  # seconds allowed to get the whole fleet up

has() { [[ " $scenarios " == *" $1 "* ]]; }

for n in $fit_sizes; do
  if has steady; then
    for peer in $peers; do
      name=steady-$peer-$n
      port=$((port + 1))
      echo "fleet.sh: $name" >&2
      start_server "$peer" "$port" "$runs/$name.server.log"
      start_sim "$name" "$n"
      wait_sessions "$name" "$n" "$(connect_limit "$n")" || true
      sleep $((2 + steady_secs))
      end_sim
      stop_server
    done
  fi

  if has herd; then
    name=herd-dispatchd-$n
    port=$((port + 1))
    echo "fleet.sh: $name" >&2
    state=$out/state-$n
    rm -rf "$state" && mkdir -p "$state"
    start_server dispatchd "$port" "$runs/$name.server.log" "$state"
    start_sim "$name" "$n"
    if wait_sessions "$name" "$n" "$(connect_limit "$n")"; then
      sleep 3
      echo "fleet.sh: $name: SIGTERM to dispatchd, then start it again" >&2
      stop_server
      start_server dispatchd "$port" "$runs/$name.server.log" "$state"
      sleep 2
      wait_sessions "$name" "$n" 180 || true
      sleep 3
    fi
    end_sim
    stop_server
  fi

  if has fanout; then
    name=fanout-dispatchd-$n
    port=$((port + 1))
    echo "fleet.sh: $name" >&2
    start_server dispatchd "$port" "$runs/$name.server.log"
    start_sim "$name" "$n" --fanout-after "@$runs/$name.instant"
    if wait_sessions "$name" "$n" "$(connect_limit "$n")"; then
      sleep 2
      date +%s%N >"$runs/$name.instant"
      # A second manager entry (same address, so a dial to it still works) changes the list.
      build/dispatchctl --addr "127.0.0.1:$port" --tls-ca "$certs/ca.pem" \
        --tls-cert "$certs/ctl.pem" --tls-key "$certs/ctl.key" \
        managers set "manager-1=127.0.0.1:$port@10" "manager-fanout=127.0.0.1:$port@10" >&2
      sleep 5
    fi
    end_sim
    stop_server
  fi

  if has churn; then
    name=churn-dispatchd-$n
    port=$((port + 1))
    echo "fleet.sh: $name ($churn_pct %/s for $churn_for)" >&2
    start_server dispatchd "$port" "$runs/$name.server.log"
    start_sim "$name" "$n" --churn "$churn_pct" --churn-for "$churn_for"
    if wait_sessions "$name" "$n" "$(connect_limit "$n")"; then
      for _ in $(seq 1 60); do
        grep -q "churn .* starts" "$runs/$name.log" && break
        sleep 0.5
      done
      secs=$(python3 -c "import re,sys; s=sys.argv[1]; m=re.fullmatch(r'(?:(\d+)m)?(?:(\d+)s)?', s); print(int(m.group(1) or 0)*60+int(m.group(2) or 0))" "$churn_for")
      sleep $((secs + 15))  # 15 s after: does the server's memory come back?
    fi
    end_sim
    stop_server
  fi
done

args=(--runs "$runs" --out "$out/results.json" --skipped "${skipped:-}")
[ "$quick" = 1 ] && args+=(--quick)
[ "$update" = 1 ] && args+=(--update-benchmarks BENCHMARKS.md)
python3 bench/fleet-report.py "${args[@]}"
# The plots need matplotlib: Debian's python3-matplotlib (installed here when missing and root).
plot_py=
for py in python3 /usr/bin/python3; do
  if "$py" -c "import matplotlib" 2>/dev/null; then plot_py=$py; break; fi
done
if [ -z "$plot_py" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "fleet.sh: installing python3-matplotlib for the plots" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-matplotlib \
    >"$out/apt.log" 2>&1 && /usr/bin/python3 -c "import matplotlib" 2>/dev/null && plot_py=/usr/bin/python3
fi
if [ -n "$plot_py" ]; then
  "$plot_py" bench/plot-fleet.py --runs "$runs" --out "$out"
else
  echo "fleet.sh: no plots: python3-matplotlib is not installed (apt-get install python3-matplotlib)" >&2
fi
