#!/usr/bin/env bash
# CI smoke test: the real dispatchd binary over mutual TLS and dispatchd-agentsim with N agents,
# each with its own certificate and connection, for a few seconds. Every agent must get a session
# (exactly one: no reconnects), heartbeats must flow, and nothing may fail.
#   agentsim_smoke.sh DISPATCHD AGENTSIM SOURCE_DIR [AGENTS] [DURATION]
set -euo pipefail
dispatchd=$1 agentsim=$2 src=$3 agents=${4:-100} duration=${5:-4s}
work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$src/scripts/gen-certs.sh" --out "$work/certs" --nodes "$agents" >/dev/null
"$dispatchd" --listen 127.0.0.1:0 --admin-listen= --heartbeat-period 1s \
  --tls-cert "$work/certs/server.pem" --tls-key "$work/certs/server.key" \
  --tls-ca "$work/certs/ca.pem" 2>"$work/server.log" &
server_pid=$!
addr=
for _ in $(seq 1 300); do
  addr=$(sed -n 's/.*dispatchd listening on \([0-9.]*:[0-9]*\).*/\1/p' "$work/server.log" | head -1)
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; echo "dispatchd exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/server.log" >&2; echo "dispatchd did not start" >&2; exit 1; }

"$agentsim" --addr "$addr" --agents "$agents" --certs "$work/certs" --for "$duration" --json \
  >"$work/report.json" 2>"$work/agentsim.log" || { cat "$work/agentsim.log" >&2; exit 1; }
report=$(cat "$work/report.json")
echo "$report"
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$report"; }
fail=0
[ "$(field agents_with_session)" = "$agents" ] || { echo "FAIL: not every agent got a session" >&2; fail=1; }
[ "$(field sessions_established)" = "$agents" ] || { echo "FAIL: agents had to reconnect" >&2; fail=1; }
[ "$(field errors_total)" = "0" ] || { echo "FAIL: errors" >&2; fail=1; }
# The first heartbeat goes at once, then one per second: at least two per agent in a few seconds.
[ "$(field heartbeats)" -ge $((agents * 2)) ] || { echo "FAIL: too few heartbeats" >&2; fail=1; }
if [ "$fail" != 0 ]; then
  cat "$work/agentsim.log" >&2
  exit 1
fi
