#!/usr/bin/env bash
# container-test.sh: builds the Dockerfile's image and runs it as a real container, then talks
# to it from outside the way agents and operators do. Debian 12, as root; no Docker engine
# needed (podman + buildah, see ../shared/CONTAINERS.md).
#
#   scripts/container-test.sh
#
#  1. installs podman, buildah, debootstrap and curl when missing;
#  2. makes the base image docker.io/library/debian:bookworm from Debian's packages
#     (debootstrap minbase) when it is not in local storage; the rootfs tarball is cached in
#     $DISPATCHD_BASE_CACHE (default /var/cache/dispatchd/debian-bookworm-minbase.tar);
#  3. builds the image ($DISPATCHD_IMAGE, default dispatchd:test) and checks its configuration:
#     a non-root USER, ENTRYPOINT, HEALTHCHECK;
#  4. starts the image's entrypoint in a container (buildah run, the image's user, test
#     certificates mounted at /etc/dispatchd/certs, host network, free loopback ports given as
#     DISPATCHD_LISTEN / DISPATCHD_ADMIN_LISTEN) and waits, bounded, for it to be healthy;
#  5. smoke tests: (a) the image's own HEALTHCHECK command inside the container; (b) a grpc++
#     agent from outside (test/smoke/agent_smoke.cpp: Session, Heartbeat with mutual TLS);
#     (c) Health/Check from outside; (d) the admin endpoint's /metrics, /healthz and /readyz;
#     the server process runs as the image's user;
#  6. SIGTERM: the server must exit 0 within a bound.
# Everything it started is removed on exit. Prints a timing summary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

image=${DISPATCHD_IMAGE:-dispatchd:test}
base=docker.io/library/debian:bookworm
base_cache=${DISPATCHD_BASE_CACHE:-/var/cache/dispatchd/debian-bookworm-minbase.tar}
ready_timeout=${DISPATCHD_READY_TIMEOUT:-60}  # seconds for the server to become healthy
stop_timeout=${DISPATCHD_STOP_TIMEOUT:-30}    # seconds for it to exit after SIGTERM

# --------------------------------------------------------------------------------------------
# Bookkeeping: timings, failure, cleanup.
t_start=$(date +%s.%N)
timings=()
phase_name="" phase_t0=""
phase() {  # phase NAME: ends the running phase (recording its time) and starts NAME
  local now
  now=$(date +%s.%N)
  if [ -n "$phase_name" ]; then
    timings+=("$(awk -v a="$now" -v b="$phase_t0" -v n="$phase_name" \
      'BEGIN { printf "%7.1f s  %s", a - b, n }')")
  fi
  phase_name=$1 phase_t0=$now
  [ -z "$1" ] || echo "=== container-test: $1"
}
print_timings() {
  phase ""
  echo "--- container-test timings"
  printf '%s\n' "${timings[@]}"
  awk -v a="$(date +%s.%N)" -v b="$t_start" 'BEGIN { printf "%7.1f s  total\n", a - b }'
}

tmp="" rootfs="" ctr="" server_pid="" server_log=""
fail() {
  echo "container-test: FAIL: $*" >&2
  if [ -n "$server_log" ] && [ -s "$server_log" ]; then
    echo "--- server output (last 40 lines)" >&2
    tail -n 40 "$server_log" >&2
  fi
  exit 1
}
cleanup() {
  local rc=$?
  set +e
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL -- "-$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1
  [ -z "$tmp" ] || rm -rf "$tmp"
  [ -z "$rootfs" ] || rm -rf "$rootfs"
  print_timings
  if [ "$rc" = 0 ]; then echo "container-test: PASS"; else echo "container-test: FAILED" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "run as root (podman/buildah with chroot isolation, apt-get)"

# --------------------------------------------------------------------------------------------
phase "tools (podman, buildah, debootstrap, curl)"
need=()
for t in podman:podman buildah:buildah debootstrap:debootstrap curl:curl; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --------------------------------------------------------------------------------------------
phase "base image $base"
if podman image exists "$base"; then
  echo "present in local storage"
else
  if [ ! -s "$base_cache" ]; then
    rootfs=$(mktemp -d /var/tmp/dispatchd-rootfs.XXXXXX)
    echo "debootstrap --variant=minbase bookworm (about 2 minutes)"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null ||
      fail "debootstrap failed"
    # As Debian's official image: no downloaded packages, no package lists (each image build
    # runs apt-get update itself). 80 MB less in every image built on it.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    mkdir -p "$(dirname "$base_cache")"
    tar -C "$rootfs" -c . >"$base_cache.tmp" && mv "$base_cache.tmp" "$base_cache"
    rm -rf "$rootfs"
    rootfs=""
  fi
  echo "importing $base_cache"
  podman import "$base_cache" "$base" >/dev/null || fail "podman import failed"
fi

# --------------------------------------------------------------------------------------------
phase "image build: podman build -t $image ."
podman build --isolation=chroot --network=host --format docker -t "$image" . ||
  fail "podman build failed"
size=$(podman image inspect "$image" --format '{{.Size}}')
echo "image $image: $((size / 1000000)) MB"

user=$(podman image inspect "$image" --format '{{.Config.User}}')
entrypoint=$(podman image inspect "$image" --format '{{json .Config.Entrypoint}}')
healthcheck=$(podman image inspect "$image" --format '{{json .Config.Healthcheck.Test}}') ||
  fail "the image has no HEALTHCHECK"
echo "user: $user  entrypoint: $entrypoint  healthcheck: $healthcheck"
case "${user%%:*}" in
  "" | root | 0) fail "the image runs as root (Config.User is '$user')" ;;
esac
[ "$entrypoint" = '["dispatchd"]' ] || fail "ENTRYPOINT is $entrypoint, want [\"dispatchd\"]"
# ["CMD","dispatchctl",...] -> the command's words, one a line.
mapfile -t hc < <(echo "$healthcheck" | tr -d '[]' | tr ',' '\n' | sed 's/^"//; s/"$//')
[ "${hc[0]:-}" = CMD ] || fail "HEALTHCHECK is $healthcheck, want an exec-form CMD"
hc=("${hc[@]:1}")

# --------------------------------------------------------------------------------------------
phase "smoke client (test/smoke/agent_smoke.cpp)"
scripts/install-deps.sh >/dev/null
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDISPATCHD_TESTS=ON >/dev/null
cmake --build build --target agent_smoke --parallel "$(nproc)" ||
  fail "building agent_smoke failed"
smoke=$root/build/test/agent_smoke

# --------------------------------------------------------------------------------------------
phase "container: certificates, ports, start"
tmp=$(mktemp -d /tmp/dispatchd-container-test.XXXXXX)
ctr=$(buildah from --pull-never "$image")
in_ctr() { buildah run --isolation=chroot --network=host --user "$user" "$ctr" -- "$@"; }
uid=$(in_ctr id -u) gid=$(in_ctr id -g)
[ "$uid" != 0 ] || fail "the image's user '$user' is uid 0"
# The state directory must be the image user's.
in_ctr test -w /var/lib/dispatchd || fail "/var/lib/dispatchd is not writable by uid $uid"

scripts/gen-certs.sh --out "$tmp/certs" --nodes 1 >/dev/null
# As an operator would: the key readable by the container's user only.
chown -R "$uid:$gid" "$tmp/certs"
chmod 0750 "$tmp/certs"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    if port_free "$p" && [ "$p" != "${1:-}" ]; then
      echo "$p"
      return
    fi
  done
  fail "no free port found"
}
port=$(free_port)
admin_port=$(free_port "$port")

# The image's own configuration (DISPATCHD_* variables), with only the ports moved to free
# loopback ones, as `docker run -e` would.
run_env=(-e "DISPATCHD_LISTEN=127.0.0.1:$port" -e "DISPATCHD_ADMIN_LISTEN=127.0.0.1:$admin_port")

server_log=$tmp/server.log
# set -m: the container gets a process group of its own (buildah run, its chroot runtime and
# dispatchd), which cleanup can end as a whole.
set -m
buildah run --isolation=chroot --network=host --user "$user" \
  -v "$tmp/certs:/etc/dispatchd/certs:ro" "${run_env[@]}" "$ctr" -- \
  "$(echo "$entrypoint" | tr -d '[]"')" >"$server_log" 2>&1 &
server_pid=$!
set +m
echo "buildah run (pid $server_pid): dispatchd on 127.0.0.1:$port, admin 127.0.0.1:$admin_port"

# --------------------------------------------------------------------------------------------
in_ctr sh -c "command -v '${hc[0]}'" >/dev/null || fail "the HEALTHCHECK's ${hc[0]} is not in the image"
# The HEALTHCHECK names the default port 4242; this server listens on $port.
health_words=("${hc[@]/127.0.0.1:4242/127.0.0.1:$port}")
health_cmd() {
  buildah run --isolation=chroot --network=host --user "$user" \
    -v "$tmp/certs:/etc/dispatchd/certs:ro" "$ctr" -- "${health_words[@]}"
}
phase "wait until healthy (the image's HEALTHCHECK, at most ${ready_timeout}s)"
deadline=$(($(date +%s) + ready_timeout))
until health_cmd >"$tmp/health.out" 2>&1; do
  kill -0 "$server_pid" 2>/dev/null || fail "the server exited during start-up"
  [ "$(date +%s)" -lt "$deadline" ] ||
    fail "not healthy after ${ready_timeout}s; last health check said: $(cat "$tmp/health.out")"
  sleep 0.2
done
echo "healthy"

# --------------------------------------------------------------------------------------------
phase "smoke tests"
health_cmd || fail "(a) the image's HEALTHCHECK (${health_words[*]}) failed"
echo "ok (a) HEALTHCHECK: ${health_words[*]}"
"$smoke" --addr "127.0.0.1:$port" --certs "$tmp/certs" --node node-1 ||
  fail "(b)/(c) agent_smoke against the container failed"
echo "ok (b) grpc++ agent: Session, Heartbeat; (c) Health/Check from outside"
admin=http://127.0.0.1:$admin_port
metrics=$(curl -sf --max-time 10 "$admin/metrics") || fail "(d) GET $admin/metrics failed"
grep -q '^dispatchd_' <<<"$metrics" || fail "(d) /metrics has no dispatchd_ lines"
for p in healthz readyz; do
  code=$(curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$admin/$p")
  [ "$code" = 200 ] || fail "(d) GET $admin/$p answered $code, want 200"
done
echo "ok (d) admin: /metrics ($(grep -c '^dispatchd_' <<<"$metrics") dispatchd_ lines), /healthz, /readyz"
# The server process itself (a descendant of buildah run; chroot isolation keeps host ids).
server_proc=""
for st in /proc/[0-9]*/stat; do
  # pid (comm) state ppid pgrp ...
  read -r pid comm _ _ pgrp _ <"$st" 2>/dev/null || continue
  if [ "$comm" = "(dispatchd)" ] && [ "$pgrp" = "$server_pid" ]; then server_proc=$pid; fi
done
[ -n "$server_proc" ] || fail "no dispatchd process in the container's process group"
proc_uid=$(awk '/^Uid:/ { print $2 }' "/proc/$server_proc/status")
[ "$proc_uid" = "$uid" ] || fail "the server runs as uid $proc_uid, want the image's $uid"
echo "ok the server runs as uid $proc_uid ($user)"

# --------------------------------------------------------------------------------------------
phase "SIGTERM: graceful exit 0 (at most ${stop_timeout}s)"
# As `docker stop` does: SIGTERM to the container's main process, dispatchd. (Not to the whole
# group: buildah's chroot runtime answers SIGTERM by killing its child.) buildah run exits with
# dispatchd's status.
kill -TERM "$server_proc"
deadline=$(($(date +%s) + stop_timeout))
while kill -0 "$server_pid" 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "still running ${stop_timeout}s after SIGTERM"
  sleep 0.1
done
rc=0
wait "$server_pid" || rc=$?
server_pid=""
[ "$rc" = 0 ] || fail "after SIGTERM the container exited $rc, want 0"
echo "ok exited 0"
