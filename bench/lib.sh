# Shared by the bench scripts (source it).

# server_port LOG: waits (10 s at most) for dispatchd's "listening on 127.0.0.1:PORT" line in
# LOG and prints PORT; on a timeout prints LOG to stderr and returns 1.
server_port() {
  local port=
  for _ in $(seq 200); do
    port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$1" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && { echo "$port"; return 0; }
    sleep 0.05
  done
  echo "server did not start:" >&2
  cat "$1" >&2
  return 1
}

# bench_args DEFAULT_N ARGS...: for scripts taking "[N] [--bin BUILD_DIR]": sets n (the bare
# argument, else DEFAULT_N) and bin (else build); -h/--help prints the calling script's header
# comment and exits.
bench_args() {
  n=$1
  shift
  bin=build
  while [ $# -gt 0 ]; do
    case "$1" in
      --bin) bin=$2; shift 2 ;;
      -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
      *) n=$1; shift ;;
    esac
  done
}

# start_insecure_dispatchd OUT: a fresh `$bin/dispatchd --insecure --in-memory` on core 0 and a
# free port, its log in OUT/server.log, LD_PRELOAD=$SERVER_PRELOAD if set. Sets server (its PID)
# and port, and returns once it accepts connections (dispatchd-sessmux retries nothing).
start_insecure_dispatchd() {
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  LD_PRELOAD=${SERVER_PRELOAD:-} taskset -c 0 "$bin/dispatchd" --insecure --in-memory \
    --listen "127.0.0.1:$port" --admin-listen= --log-level warn 2>"$1/server.log" &
  server=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { cat "$1/server.log" >&2; exit 1; }
    sleep 0.05
  done
}
