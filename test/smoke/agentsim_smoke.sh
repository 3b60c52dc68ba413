#!/usr/bin/env bash
# CI smoke test: the real dispatchd binary over mutual TLS and dispatchd-agentsim with N agents,
# each with its own certificate (minted by the simulator from the test CA) and connection, for a
# few seconds. Every agent must get a session (exactly one: no reconnects), heartbeats must flow,
# nothing may fail, and the server's RSS and CPU must be sampled (--server-pid). A second, short
# run uses certificates from gen-certs.sh (--certs), and a third reruns the first's minting to
# check that the cache is used.
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

"$src/scripts/gen-certs.sh" --out "$work/certs" --nodes 10 >/dev/null
"$dispatchd" --in-memory --listen 127.0.0.1:0 --admin-listen= --heartbeat-period 1s \
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

"$agentsim" --addr "$addr" --agents "$agents" --ca-cert "$work/certs/ca.pem" \
  --ca-key "$work/certs/ca.key" --cert-cache "$work/cache" --server-pid "$server_pid" \
  --for "$duration" --json >"$work/report.json" 2>"$work/agentsim.log" ||
  { cat "$work/agentsim.log" >&2; exit 1; }
report=$(sed 's/,"samples":.*//' "$work/report.json")
echo "$report"
field() { grep -o "\"$1\":[0-9.]*" <<<"$report" | head -1 | cut -d: -f2; }  # the first one
fail=0
grep -q "minted $agents certificates" "$work/agentsim.log" || { echo "FAIL: no minting" >&2; fail=1; }
[ "$(field rss_end_kb)" -gt 0 ] 2>/dev/null || { echo "FAIL: server RSS not sampled" >&2; fail=1; }
openssl x509 -in "$work/cache/node-1.pem" -noout -subject | grep -q "O = dispatchd, OU = swarm-worker, CN = node-1" ||
  { echo "FAIL: minted certificate subject" >&2; fail=1; }
[ "$(field agents_with_session)" = "$agents" ] || { echo "FAIL: not every agent got a session" >&2; fail=1; }
[ "$(field sessions_established)" = "$agents" ] || { echo "FAIL: agents had to reconnect" >&2; fail=1; }
[ "$(field errors_total)" = "0" ] || { echo "FAIL: errors" >&2; fail=1; }
# The first heartbeat goes at once, then one per second: at least two per agent in a few seconds.
[ "$(field heartbeats)" -ge $((agents * 2)) ] || { echo "FAIL: too few heartbeats" >&2; fail=1; }
if [ "$fail" != 0 ]; then
  cat "$work/agentsim.log" >&2
  exit 1
fi

# --certs (gen-certs.sh's files) still works; a rerun of the minting run uses the cache.
"$agentsim" --addr "$addr" --agents 10 --certs "$work/certs" --for 1s --json \
  >"$work/report2.json" 2>"$work/agentsim2.log" || { cat "$work/agentsim2.log" >&2; exit 1; }
grep -q '"agents_with_session":10,' "$work/report2.json" || { cat "$work/agentsim2.log" >&2; echo "FAIL: --certs" >&2; exit 1; }
"$agentsim" --addr "$addr" --agents 10 --ca-cert "$work/certs/ca.pem" --ca-key "$work/certs/ca.key" \
  --cert-cache "$work/cache" --for 1s --json >"$work/report3.json" 2>"$work/agentsim3.log" ||
  { cat "$work/agentsim3.log" >&2; exit 1; }
grep -q "10 certificates from the cache" "$work/agentsim3.log" || { cat "$work/agentsim3.log" >&2; echo "FAIL: cache not used" >&2; exit 1; }
grep -q '"agents_with_session":10,' "$work/report3.json" || { echo "FAIL: cached certificates" >&2; exit 1; }
echo "agentsim_smoke: ok"
