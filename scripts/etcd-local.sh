#!/usr/bin/env bash
# A throw-away etcd cluster on this machine (Debian's etcd-server) for trying several dispatchd
# managers: N members on loopback ports, data under DIR. Prints the --store URL for dispatchd.
#
# Usage: scripts/etcd-local.sh start [--members N] [--dir DIR] [--port-base P]
#        scripts/etcd-local.sh stop  [--dir DIR]
#   --members    members (default 3)
#   --dir        data directories, logs and pids (default /tmp/dispatchd-etcd)
#   --port-base  member i (1-based) listens for clients on P+10*i-10 and for peers on one more
#                (default 2379: 2379, 2389, 2399)
set -euo pipefail

cmd=${1:-}
[ $# -gt 0 ] && shift
members=3 dir=/tmp/dispatchd-etcd base=2379
while [ $# -gt 0 ]; do
  case $1 in
    --members) members=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --port-base) base=$2; shift 2 ;;
    *) echo "etcd-local.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

stop() {
  [ -d "$dir" ] || return 0
  local pids=()
  for f in "$dir"/*.pid; do
    [ -e "$f" ] || continue
    pids+=("$(cat "$f")")
    rm -f "$f"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  # A member whose peers are gone can linger trying to hand over its leadership: 3 s, then KILL.
  alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
  for _ in $(seq 30); do alive || return 0; sleep 0.1; done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

case $cmd in
  start)
    command -v etcd >/dev/null || { echo "etcd-local.sh: etcd missing: apt-get install etcd-server" >&2; exit 1; }
    stop
    mkdir -p "$dir"
    cluster="" urls=""
    for i in $(seq "$members"); do
      client=$((base + 10 * (i - 1))) peer=$((base + 10 * (i - 1) + 1))
      cluster+="${cluster:+,}e$i=http://127.0.0.1:$peer"
      urls+="${urls:+,}127.0.0.1:$client"
    done
    for i in $(seq "$members"); do
      client=$((base + 10 * (i - 1))) peer=$((base + 10 * (i - 1) + 1))
      rm -rf "$dir/e$i"
      etcd --name "e$i" --data-dir "$dir/e$i" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token dispatchd-local \
        >"$dir/e$i.log" 2>&1 &
      echo $! >"$dir/e$i.pid"
    done
    for i in $(seq "$members"); do
      client=$((base + 10 * (i - 1)))
      ok=""
      for _ in $(seq 100); do
        if curl -sf "http://127.0.0.1:$client/health" | grep -q '"health":"true"'; then ok=1; break; fi
        sleep 0.1
      done
      [ -n "$ok" ] || { echo "etcd-local.sh: member e$i not healthy:" >&2; tail -5 "$dir/e$i.log" >&2; stop; exit 1; }
    done
    echo "etcd://$urls"
    ;;
  stop) stop ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
