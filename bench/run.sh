#!/usr/bin/env bash
# run.sh: issue 14's scenarios, dispatchd side by side with its peers, server pinned to core 0
# (taskset -c 0) and load on core 1; each server a fresh process per scenario and size:
#   1 heartbeat  unary Heartbeat h2c, h2load at 1, 10, 100 connections × 10 streams: calls/s,
#                p50/p99, server CPU per call (/proc/PID/stat); dispatchd, the peers, nghttpd
#                serving a 9-byte file (the HTTP/2 floor)
#   2 mtls       Heartbeat over mutual TLS with ghz at one offered rate: dispatchd and SwarmKit
#                (../shared/peers/swarmref): server CPU per call, p99
#   3 sessions   N Session streams over 100 connections (the session client, heartbeating at
#                the period answered): server RSS per session on a fresh process, CPU to set one
#                up, CPU while idle
#   4 fanout     with those N sessions open, one manager-list change (dispatchd: dispatchctl
#                managers set; peers: SIGUSR1): time until each session has the new message
#   5 status     UpdateTaskStatus with 1 and 100 updates per call (dispatchd): calls/s and the
#                call's latency, which is the time until the updates are in the store
# Writes build/bench-run/results.jsonl, report.md and PNG plots (bench/run-report.py), and with
# --update-benchmarks BENCHMARKS.md's "Side by side with the peers" section.
#
#   bench/run.sh [--quick | --smoke] [--sizes "1000 10000"] [--servers "dispatchd grpcpp-cq ..."]
#                [--scenarios "heartbeat mtls sessions status"] [--client sessmux|sessload]
#                [--update-benchmarks] [--out DIR] [--bin BUILD_DIR]
#
# --bin: where dispatchd, dispatchctl and peers/ are (default build; CTest passes its own).
# --quick: fewer calls and 1k + 10k sessions (a few minutes); --smoke: seconds per scenario,
# checks only that every scenario produced numbers (CI). --sizes "1000 10000 100000" adds 100k
# sessions (over the same 100 connections). --scenarios: only these (default all; "sessions" is
# 3 and 4). --client: the Session load of 3 and 4, for every
# server alike: sessmux (default; bench/agentsim/sessmux.cpp, our own nghttp2 client on one
# thread, light enough for 100k sessions heartbeating every 5 s) or sessload (gRPC C++'s client,
# bench/peers/sessload.cpp; it saturates its core near 12k Heartbeats/s, ~60k sessions). Servers missing here (grpc-go, swarmref, ghz not
# built or present) are skipped with a line saying so. Peers: bench/peers/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

mode=full sizes="" servers="" update=0 out=build/bench-run bin=build client=sessmux
scenarios="heartbeat mtls sessions status"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick; shift ;;
    --smoke) mode=smoke; shift ;;
    --sizes) sizes=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --update-benchmarks) update=1; shift ;;
    --out) out=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --client) client=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $mode in
  full) calls=200000 sizes=${sizes:-"1000 10000"} idle=20 mtls_rate=2000 mtls_calls=20000 uts_calls=20000 ;;
  quick) calls=60000 sizes=${sizes:-"1000 10000"} idle=10 mtls_rate=2000 mtls_calls=10000 uts_calls=5000 ;;
  smoke) calls=2000 sizes=${sizes:-"200"} idle=2 mtls_rate=200 mtls_calls=200 uts_calls=200 ;;
esac

bin=$(cd "$bin" && pwd)
peers=$bin/peers
ghz=${GHZ:-$root/../shared/tools/ghz}
swarmref=${SWARMREF:-$root/../shared/peers/swarmref/swarmref}
[ -x "$bin/dispatchd" ] && [ -x "$bin/dispatchctl" ] || { echo "run.sh: build first (scripts/build.sh)" >&2; exit 1; }
[ -x "$peers/sessload" ] || { echo "run.sh: build the peers first (bench/peers/build.sh)" >&2; exit 1; }
case $client in
  sessmux) session_client=$bin/bench/agentsim/dispatchd-sessmux ;;
  sessload) session_client=$peers/sessload ;;
  *) echo "run.sh: --client is sessmux or sessload, not $client" >&2; exit 2 ;;
esac
[ -x "$session_client" ] || { echo "run.sh: $session_client is not built (scripts/build.sh builds sessmux)" >&2; exit 1; }
command -v h2load >/dev/null && command -v nghttp >/dev/null || { echo "run.sh: needs nghttp2-client" >&2; exit 1; }

# Which servers run: every one that is here, unless --servers names them.
available() {
  case $1 in
    dispatchd) return 0 ;;
    grpcpp-cq|grpcpp-callback) [ -x "$peers/grpcpp-peer" ] ;;
    grpcgo) [ -x "$peers/grpcgo-peer" ] ;;
    nghttpd) command -v nghttpd >/dev/null ;;
    *) return 1 ;;
  esac
}
all="dispatchd grpcpp-cq grpcpp-callback grpcgo nghttpd"
chosen=""
for s in ${servers:-$all}; do
  [ "$s" = swarmref ] && continue  # scenario 2's peer only
  if available "$s"; then chosen="$chosen $s"; else
    echo "run.sh: SKIPPING $s: not built or not installed here (bench/peers/build.sh; nghttp2-server)" >&2
  fi
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
raw=$out/raw
rm -rf "$raw" && mkdir -p "$raw"
results=$out/results.jsonl
: >"$results"
pin_server=(taskset -c 0)
pin_load=(taskset -c 1)
[ "$(nproc)" -ge 2 ] || { pin_server=(); pin_load=(); echo "run.sh: one core: nothing pinned" >&2; }
tck=$(getconf CLK_TCK)

server_pid="" load_pid=""
cleanup() {
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
record() { echo "$1" >>"$results"; }
secs() { awk -v a="$1" -v b="$2" -v t="$tck" 'BEGIN { printf "%.3f", (b - a) / t }'; }

port=4500
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# start_server KIND LOG [TLS_DIR]: a fresh server on a new port ($port), pinned; sets server_pid.
start_server() {
  local kind=$1 log=$2 tls=${3:-}
  port=$((port + 1))
  case $kind in
    dispatchd)
      if [ -n "$tls" ]; then
        "${pin_server[@]}" "$bin/dispatchd" --in-memory --listen "127.0.0.1:$port" --admin-listen= --log-level warn \
          --tls-cert "$tls/server.pem" --tls-key "$tls/server.key" --tls-ca "$tls/ca.pem" 2>"$log" &
      else
        "${pin_server[@]}" "$bin/dispatchd" --insecure --in-memory --listen "127.0.0.1:$port" --admin-listen= \
          --log-level error 2>"$log" &
      fi ;;
    grpcpp-cq) "${pin_server[@]}" "$peers/grpcpp-peer" --api cq --listen "127.0.0.1:$port" 2>"$log" & ;;
    grpcpp-callback)
      "${pin_server[@]}" "$peers/grpcpp-peer" --api callback --listen "127.0.0.1:$port" 2>"$log" & ;;
    grpcgo) GOMAXPROCS=1 "${pin_server[@]}" "$peers/grpcgo-peer" -listen "127.0.0.1:$port" 2>"$log" & ;;
    nghttpd)
      mkdir -p "$out/www" && printf 'heartbeat' >"$out/www/hb"  # 9 bytes
      "${pin_server[@]}" nghttpd --no-tls -d "$out/www" "$port" 2>"$log" >/dev/null & ;;
    swarmref)
      "${pin_server[@]}" "$swarmref" --listen "127.0.0.1:$port" --log-level warn \
        --tls-cert "$tls/server.pem" --tls-key "$tls/server.key" --tls-ca "$tls/ca.pem" 2>"$log" & ;;
  esac
  server_pid=$!
  wait_port "$port" || { tail -5 "$log" >&2; echo "run.sh: $kind did not start" >&2; exit 1; }
}

stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

grpc_headers=(-H 'content-type: application/grpc' -H 'te: trailers' -H 'node-id: sessload-0')

# dispatchd wants a live session for Heartbeat: one sessload stream (node sessload-0, the
# node-id h2load sends) holds it open; the peers take any ID. Frames HeartbeatRequest{session_id}.
open_session() {
  # Emptied here, not by the background job's redirection: that runs after the fork, so the
  # loop below could read the previous scenario's ID, or an empty file truncated under it.
  : >"$raw/session.out"
  "${pin_load[@]}" "$peers/sessload" --addr "127.0.0.1:$port" --sessions 1 --connections 1 \
    --no-heartbeat --print-session-id >"$raw/session.out" 2>"$raw/session.log" &
  load_pid=$!
  for _ in $(seq 100); do [ "$(wc -l <"$raw/session.out")" -ge 1 ] && break; sleep 0.05; done
  session=$(head -1 "$raw/session.out")
  [ ${#session} = 25 ] || { echo "run.sh: no session from the server" >&2; exit 1; }
}
heartbeat_body() {
  session="aaaaaaaaaaaaaaaaaaaaaaaaa"
  [ "$2" = dispatchd ] && open_session
  { printf '\x00\x00\x00\x00\x1b\x0a\x19'; printf '%s' "$session"; } >"$1"
}
# h2load counts HTTP 200 as success, and gRPC errors are 200 too: one call's grpc-status first.
grpc_status() {
  nghttp -v "${grpc_headers[@]}" -d "$2" "http://127.0.0.1:$port/docker.swarmkit.v1.Dispatcher/$1" 2>&1 |
    grep -ao 'grpc-status: [0-9]*' | grep -o '[0-9]*$' || echo none
}
end_load() {
  [ -n "$load_pid" ] || return 0
  kill "$load_pid" 2>/dev/null || true
  wait "$load_pid" 2>/dev/null || true
  load_pid=""
}

want() { [[ " $scenarios " == *" $1 "* ]]; }
for s in $scenarios; do
  want "$s" && [[ " heartbeat mtls sessions status " == *" $s "* ]] ||
    { echo "run.sh: unknown scenario $s (heartbeat mtls sessions status)" >&2; exit 2; }
done

# ---- 1: unary Heartbeat, h2c ------------------------------------------------------------------
want heartbeat && for kind in $chosen; do
  for conns in 1 10 100; do
    name=hb-$kind-$conns
    echo "run.sh: 1 heartbeat $kind, $conns connections × 10 streams, $calls calls" >&2
    start_server "$kind" "$raw/$name.server.log"
    if [ "$kind" = nghttpd ]; then
      target=(-n "$calls" -c "$conns" -m 10 "http://127.0.0.1:$port/hb")
      st=0
    else
      heartbeat_body "$raw/hb.bin" "$kind"
      st=$(grpc_status Heartbeat "$raw/hb.bin")
      # A benchmark of an error path measures nothing anyone runs: stop.
      [ "$st" = 0 ] || { echo "run.sh: $kind: Heartbeat answers grpc-status $st, not 0" >&2; exit 1; }
      target=(-n "$calls" -c "$conns" -m 10 -d "$raw/hb.bin" "${grpc_headers[@]}"
        "http://127.0.0.1:$port/docker.swarmkit.v1.Dispatcher/Heartbeat")
    fi
    c0=$(cpu_ticks "$server_pid")
    "${pin_load[@]}" h2load --log-file="$raw/$name.h2log" "${target[@]}" >"$raw/$name.h2load" 2>&1 || true
    c1=$(cpu_ticks "$server_pid")
    record "{\"scenario\":\"heartbeat\",\"server\":\"$kind\",\"connections\":$conns,\"streams\":10,\"grpc_status\":\"$st\",\"cpu_s\":$(secs "$c0" "$c1"),\"h2load\":\"$raw/$name.h2load\",\"log\":\"$raw/$name.h2log\"}"
    end_load
    stop_server
  done
done

# ---- 2: Heartbeat over mutual TLS with ghz ----------------------------------------------------
if ! want mtls; then
  :
elif [ ! -x "$ghz" ]; then
  echo "run.sh: SKIPPING 2 mtls: no ghz at $ghz (GHZ=...)" >&2
else
  certs=$out/certs
  if [ ! -f "$certs/worker1.pem" ]; then
    if [ -x "$root/../shared/tools/make-test-certs.sh" ]; then
      "$root/../shared/tools/make-test-certs.sh" "$certs" benchorg >/dev/null 2>&1
    else
      scripts/gen-certs.sh --out "$certs" --nodes 1 >/dev/null
      cp "$certs/node-1.pem" "$certs/worker1.pem" && cp "$certs/node-1.key" "$certs/worker1.key"
    fi
  fi
  mtls_servers=dispatchd
  if [ -n "$servers" ] && [[ " $servers " != *" swarmref "* ]]; then
    echo "run.sh: SKIPPING swarmref in 2 mtls: not in --servers" >&2
  elif [ -x "$swarmref" ]; then mtls_servers="dispatchd swarmref"; else
    echo "run.sh: SKIPPING swarmref in 2 mtls: not at $swarmref (SWARMREF=...)" >&2
  fi
  for kind in $mtls_servers; do
    name=mtls-$kind
    echo "run.sh: 2 mtls $kind, $mtls_calls calls at $mtls_rate/s" >&2
    start_server "$kind" "$raw/$name.server.log" "$certs"
    # The session the heartbeats name, held open by one sessload stream with worker1's identity.
    "${pin_load[@]}" "$peers/sessload" --addr "127.0.0.1:$port" --sessions 1 --connections 1 \
      --no-heartbeat --tls-ca "$certs/ca.pem" --tls-cert "$certs/worker1.pem" \
      --tls-key "$certs/worker1.key" --print-session-id >"$raw/$name.session" 2>"$raw/$name.sessload" &
    load_pid=$!
    for _ in $(seq 100); do [ -s "$raw/$name.session" ] && break; sleep 0.05; done
    session=$(head -1 "$raw/$name.session")
    c0=$(cpu_ticks "$server_pid")
    "${pin_load[@]}" "$ghz" --cacert "$certs/ca.pem" --cert "$certs/worker1.pem" \
      --key "$certs/worker1.key" --cname swarm-manager --import-paths proto \
      --proto proto/dispatcher.proto --call docker.swarmkit.v1.Dispatcher.Heartbeat \
      -d "{\"session_id\":\"$session\"}" --rps "$mtls_rate" -n "$mtls_calls" -c 10 \
      --connections 1 -O json "127.0.0.1:$port" >"$raw/$name.ghz.json" 2>"$raw/$name.ghz.err" || true
    c1=$(cpu_ticks "$server_pid")
    record "{\"scenario\":\"mtls\",\"server\":\"$kind\",\"rate\":$mtls_rate,\"cpu_s\":$(secs "$c0" "$c1"),\"ghz\":\"$raw/$name.ghz.json\"}"
    kill "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
    load_pid=""
    stop_server
  done
fi

# ---- 3 and 4: sessions, then one manager-list change -----------------------------------------
want sessions && for n in $sizes; do
  for kind in $chosen; do
    [ "$kind" = nghttpd ] && continue
    name=sess-$kind-$n
    echo "run.sh: 3+4 sessions $kind, $n streams over 100 connections ($client)" >&2
    start_server "$kind" "$raw/$name.server.log"
    sleep 0.5  # a fresh process, settled
    r0=$(rss_kib "$server_pid") c0=$(cpu_ticks "$server_pid")
    "${pin_load[@]}" "$session_client" --addr "127.0.0.1:$port" --sessions "$n" --connections 100 \
      --times "$raw/$name.times" >"$raw/$name.json" 2>"$raw/$name.sessload" &
    load_pid=$!
    ok=0
    for _ in $(seq 1 $((n / 20 + 200))); do
      grep -q "all $n open" "$raw/$name.sessload" && { ok=1; break; }
      kill -0 "$load_pid" 2>/dev/null || break
      sleep 0.1
    done
    c1=$(cpu_ticks "$server_pid")
    setup=$(grep -o "open in [0-9.]*" "$raw/$name.sessload" | grep -o '[0-9.]*$' || echo -1)
    sleep 1
    r1=$(rss_kib "$server_pid") c1b=$(cpu_ticks "$server_pid")
    sleep "$idle"
    c2=$(cpu_ticks "$server_pid")
    # 4: one change of the manager list, from this instant.
    trigger_ms=0
    if [ "$kind" = dispatchd ]; then
      t0=$(date +%s%N)
      "$bin/dispatchctl" --addr "127.0.0.1:$port" --insecure managers ls >/dev/null 2>&1 || true
      trigger_ms=$((($(date +%s%N) - t0) / 1000000))
    fi
    instant=$(date +%s%N)
    if [ "$kind" = dispatchd ]; then
      "$bin/dispatchctl" --addr "127.0.0.1:$port" --insecure managers set \
        "manager-1=127.0.0.1:$port@10" "manager-fanout=127.0.0.1:$port@10" >/dev/null 2>"$raw/$name.ctl" || cat "$raw/$name.ctl" >&2
    else
      kill -USR1 "$server_pid"
    fi
    for _ in $(seq 1 300); do
      tail -n 2 "$raw/$name.sessload" | grep -q "changed=$n " && break
      sleep 0.1
    done
    sleep 0.6  # the client's progress line lags by up to 500 ms
    kill -INT "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
    load_pid=""
    record "{\"scenario\":\"sessions\",\"server\":\"$kind\",\"n\":$n,\"all_open\":$ok,\"setup_s\":$setup,\"rss0_kib\":$r0,\"rss1_kib\":$r1,\"setup_cpu_s\":$(secs "$c0" "$c1"),\"idle_cpu_s\":$(secs "$c1b" "$c2"),\"idle_s\":$idle,\"instant_ns\":$instant,\"trigger_ms\":$trigger_ms,\"times\":\"$raw/$name.times\",\"client\":\"$raw/$name.json\",\"session_client\":\"$client\"}"
    stop_server
  done
done

# ---- 5: UpdateTaskStatus (dispatchd) -----------------------------------------------------------
if want status; then
name=uts-dispatchd
echo "run.sh: 5 status, dispatchd, $uts_calls calls of 1 and of 100 updates" >&2
start_server dispatchd "$raw/$name.server.log"
open_session
tasks=()
for i in $(seq 1 100); do
  tasks+=("$("$bin/dispatchctl" --addr "127.0.0.1:$port" --insecure task create --node sessload-0)")
done
for per in 1 100; do
  /usr/bin/python3 bench/run-report.py --encode-status "$session" "$raw/uts-$per.bin" "${tasks[@]:0:$per}"
  st=$(grpc_status UpdateTaskStatus "$raw/uts-$per.bin")
  [ "$st" = 0 ] || { echo "run.sh: UpdateTaskStatus answers grpc-status $st, not 0" >&2; exit 1; }
  c0=$(cpu_ticks "$server_pid")
  "${pin_load[@]}" h2load --log-file="$raw/$name-$per.h2log" -n "$uts_calls" -c 10 -m 10 \
    -d "$raw/uts-$per.bin" "${grpc_headers[@]}" \
    "http://127.0.0.1:$port/docker.swarmkit.v1.Dispatcher/UpdateTaskStatus" >"$raw/$name-$per.h2load" 2>&1 || true
  c1=$(cpu_ticks "$server_pid")
  record "{\"scenario\":\"status\",\"server\":\"dispatchd\",\"updates\":$per,\"grpc_status\":\"$st\",\"cpu_s\":$(secs "$c0" "$c1"),\"h2load\":\"$raw/$name-$per.h2load\",\"log\":\"$raw/$name-$per.h2log\"}"
done
end_load
stop_server
fi

args=(--results "$results" --out "$out" --mode "$mode")
[ "$update" = 1 ] && args+=(--update-benchmarks BENCHMARKS.md)
/usr/bin/python3 bench/run-report.py "${args[@]}"
