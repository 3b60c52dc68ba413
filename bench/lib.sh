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
