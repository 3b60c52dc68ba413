#!/usr/bin/env bash
# What durability costs (issue 16): UpdateTaskStatus through h2load against the same dispatchd
# durable (the default: a write-ahead log, every reply after its fdatasync) and --in-memory, in
# interleaved repetitions of one run. Prints a Markdown table: calls/s, latency p50/p99 (from
# h2load's per-request log), server CPU per call, fsyncs per second and transactions per fsync.
#
# Usage: bench/durable-status.sh [--calls N] [--reps N] [--bin DIR] [--etcd]
#   --etcd   also the store in etcd (three local members, scripts/etcd-local.sh): one manager,
#            the leader, every reply after its fenced etcd transaction
#   --calls  calls per measurement (default 50000)
#   --reps   repetitions of each mode, interleaved (default 3; the table shows medians)
#   --bin    build directory with dispatchd, dispatchctl and peers/sessload (default build)
# Two shapes: "1×1" one connection, one call at a time (latency); "10×10" 10 connections × 10
# streams (throughput: group commit at work). Server on core 0, h2load on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."

calls=50000 reps=3 bin=build modes="durable in-memory"
while [ $# -gt 0 ]; do
  case $1 in
    --etcd) modes="durable etcd in-memory"; shift ;;
    --calls) calls=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "durable-status.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for f in "$bin/dispatchd" "$bin/dispatchctl" "$bin/peers/sessload"; do
  [ -x "$f" ] || { echo "durable-status.sh: $f missing: build first (scripts/build.sh)" >&2; exit 1; }
done
command -v h2load >/dev/null || { echo "durable-status.sh: h2load missing (nghttp2-client)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/dispatchd-durable.XXXXXX)
server_pid="" load_pid=""
cleanup() {
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ $modes == *etcd* ]]; then scripts/etcd-local.sh stop --dir "$work/etcd"; fi
  rm -rf "$work"
}
trap cleanup EXIT
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
metric() { curl -s "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# UpdateTaskStatus calls answered OK (h2load counts HTTP 200, which gRPC errors are too).
oks() {
  curl -s "http://127.0.0.1:$admin/metrics" |
    awk '/^grpc_server_handled_total/ && /grpc_method="UpdateTaskStatus"/ && /grpc_code="OK"/ { print $2 }'
}
headers=(-H 'content-type: application/grpc' -H 'te: trailers' -H 'node-id: sessload-0')

port=4700
results=$work/results
run_mode() {  # MODE REP
  local mode=$1 rep=$2 extra=()
  port=$((port + 2)) admin=$((port + 1))
  if [ "$mode" = durable ]; then
    extra=(--state-dir "$work/state-$rep")
  elif [ "$mode" = etcd ]; then
    extra=(--store "$etcd_store" --etcd-prefix "/bench-$rep/")
  else
    extra=(--in-memory)
  fi
  taskset -c 0 "$bin/dispatchd" --insecure --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --log-level warn "${extra[@]}" 2>"$work/server-$mode-$rep.log" &
  server_pid=$!
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  if [ "$mode" = etcd ]; then  # elected (alone) before it serves
    for _ in $(seq 200); do [ "$(metric dispatchd_cluster_leader)" = 1 ] && break; sleep 0.05; done
  fi
  : >"$work/session.out"
  taskset -c 1 "$bin/peers/sessload" --addr "127.0.0.1:$port" --sessions 1 --connections 1 \
    --print-session-id >"$work/session.out" 2>/dev/null &
  load_pid=$!
  for _ in $(seq 100); do [ "$(wc -l <"$work/session.out")" -ge 1 ] && break; sleep 0.05; done
  local session task
  session=$(head -1 "$work/session.out")
  task=$("$bin/dispatchctl" --addr "127.0.0.1:$port" --insecure task create --node sessload-0)
  python3 bench/run-report.py --encode-status "$session" "$work/body.bin" "$task"
  for shape in 1x1 10x10; do
    local c=${shape%x*} m=${shape#*x}
    local c0 s0 r0 c1 s1 r1 k0 k1
    local sm=dispatchd_wal_syncs_total rm=dispatchd_wal_records_total
    [ "$mode" = etcd ] && sm=dispatchd_etcd_txns_total rm=dispatchd_etcd_commits_total
    c0=$(cpu_ticks "$server_pid") s0=$(metric $sm) r0=$(metric $rm) k0=$(oks)
    taskset -c 1 h2load -n "$calls" -c "$c" -m "$m" -d "$work/body.bin" "${headers[@]}" \
      --log-file="$work/h2-$mode-$shape-$rep.log" \
      "http://127.0.0.1:$port/docker.swarmkit.v1.Dispatcher/UpdateTaskStatus" >"$work/h2-$mode-$shape-$rep.out" 2>&1
    c1=$(cpu_ticks "$server_pid") s1=$(metric $sm) r1=$(metric $rm) k1=$(oks)
    echo "$mode $shape $rep $((c1 - c0)) ${s0:-0} ${s1:-0} ${r0:-0} ${r1:-0} $work/h2-$mode-$shape-$rep $((${k1:-0} - ${k0:-0}))" >>"$results"
  done
  kill "$load_pid" 2>/dev/null || true; wait "$load_pid" 2>/dev/null || true; load_pid=""
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

if [[ $modes == *etcd* ]]; then
  etcd_store=$(scripts/etcd-local.sh start --dir "$work/etcd" --port-base 23790)
fi
for rep in $(seq 1 "$reps"); do
  for mode in $modes; do
    echo "durable-status.sh: rep $rep, $mode" >&2
    run_mode "$mode" "$rep"
  done
done

python3 - "$results" "$tck" "$calls" <<'EOF'
import re, statistics, sys
results, tck, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for line in open(results):
    mode, shape, rep, ticks, s0, s1, r0, r1, base, oks = line.split()
    out = open(base + ".out").read()
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded", out)
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    lat = sorted(int(l.split()[2]) for l in open(base + ".log") if l.strip())
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
    syncs, recs = float(s1) - float(s0), float(r1) - float(r0)
    rows.setdefault((shape, mode), []).append(dict(
        rps=float(m.group(3)), p50=pick(0.50), p99=pick(0.99), ok=min(int(ok.group(1)), int(oks)),
        cpu=int(ticks) / tck / calls * 1e6, fsyncs=syncs / secs, per=(recs / syncs if syncs else 0)))
med = lambda xs: statistics.median(xs)
print("| shape | store | calls/s | p50 ms | p99 ms | server CPU µs/call | syncs/s | commits per sync |")
print("|---|---|---|---|---|---|---|---|")
for shape in ("1x1", "10x10"):
    for mode in ("durable", "etcd", "in-memory"):
        r = rows.get((shape, mode), [])
        if not r:
            continue
        f = lambda k: med([x[k] for x in r])
        fs = f"{f('fsyncs'):.0f}" if mode != "in-memory" else "—"
        per = f"{f('per'):.1f}" if mode != "in-memory" else "—"
        print(f"| {shape.replace('x', '×')} | {mode} | {f('rps'):.0f} | {f('p50'):.3f} | {f('p99'):.3f} | "
              f"{f('cpu'):.1f} | {fs} | {per} |")
    for name in ("durable", "etcd"):
      d, i = rows.get((shape, name)), rows.get((shape, "in-memory"))
      if d and i:
        print(f"| {shape.replace('x', '×')} | {name} ÷ in-memory | {med([x['rps'] for x in d]) / med([x['rps'] for x in i]):.2f}× | "
              f"{med([x['p50'] for x in d]) / med([x['p50'] for x in i]):.1f}× | {med([x['p99'] for x in d]) / med([x['p99'] for x in i]):.1f}× | "
              f"{med([x['cpu'] for x in d]) / med([x['cpu'] for x in i]):.2f}× | | |")
bad = [k for k, r in rows.items() for x in r if x["ok"] != calls]
if bad:
    print(f"\nnot every call succeeded in: {sorted(set(bad))}", file=sys.stderr)
    sys.exit(1)
EOF
