#!/usr/bin/env bash
# How long `dispatchctl node ls` takes on N registered nodes (default 10000): the operator's
# "list the cluster" on a large cluster. Nodes are registered by ghz Session calls in insecure
# mode (agent-0 … agent-N-1); the heartbeat period is long so that none goes down meanwhile.
# Usage: bench/ctl-node-ls.sh [NODES]   (needs build/dispatchd, build/dispatchctl, ../shared/tools/ghz)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
ghz=../shared/tools/ghz
[ -x build/dispatchd ] && [ -x build/dispatchctl ] || { echo "build first: scripts/build.sh --no-tests" >&2; exit 1; }
[ -x "$ghz" ] || { echo "skipped: $ghz not found (the load client lives beside the project)"; exit 0; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

taskset -c 0 build/dispatchd --insecure --in-memory --listen 127.0.0.1:0 --admin-listen= \
  --heartbeat-period 1h --heartbeat-epsilon 0s --rate-limit-period 0s 2>"$work/server.log" &
for _ in $(seq 100); do
  port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$work/server.log" | grep -o '[0-9]*$' || true)
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "${port:-}" ] || { echo "server did not start: $(cat "$work/server.log")" >&2; exit 1; }
addr=127.0.0.1:$port
taskset -c 1 "$ghz" --insecure --call docker.swarmkit.v1.Dispatcher/Session -d '{}' \
  -m '{"node-id":"agent-{{.RequestNumber}}"}' -n "$n" -c 200 -t 2s "$addr" >/dev/null 2>&1 || true
ctl=(taskset -c 1 build/dispatchctl --insecure --addr "$addr" --timeout 60s)
have=$("${ctl[@]}" node ls -q | wc -l)
echo "nodes registered: $have"
for args in "node ls" "--json node ls" "node ls -q"; do
  best=""
  for _ in 1 2 3; do
    start=$(date +%s%N)
    "${ctl[@]}" $args >/dev/null
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    if [ -z "$best" ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
  done
  echo "dispatchctl $args: ${best} ms (best of 3, whole process)"
done
