#!/usr/bin/env bash
# TLS libraries side by side for dispatchd's mutual TLS (issue 12): server CPU per handshake (full
# and resumed) and heap kept per idle connection, for OpenSSL (default and tuned), GnuTLS and
# wolfSSL as Debian packages them. Not part of the build; see README.md beside this script.
#
#   bench/tls-libs/run.sh [N]     N connections per run (default 1000)
#     ROUNDS=3          runs of each case; the table gives medians
#     LIBS="openssl openssl-tuned gnutls wolfssl"   (those whose headers are missing are skipped)
#     DISTINCT=1        a certificate and key of its own per connection (0: worker1's for all)
#     CERTS_TOOL=...    make-test-certs.sh (default ../shared/tools beside the repository)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
n=${1:-1000}
rounds=${ROUNDS:-3}
distinct=${DISTINCT:-1}
certs_tool=${CERTS_TOOL:-$repo/../shared/tools/make-test-certs.sh}
[ -x "$certs_tool" ] || [ -f "$certs_tool" ] || {
  echo "skipped: no make-test-certs.sh at $certs_tool (set CERTS_TOOL)"
  exit 0
}
org=tlslibs-org
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cxx=(g++ -O2 -std=c++20 -Wall -Wextra -Werror)
sources=("$here/server.cpp" "$here/heap_count.cpp" "$here/backend_openssl.cpp")
libs_link=(-lssl -lcrypto)
built=(openssl openssl-tuned)
if [ -f /usr/include/gnutls/gnutls.h ]; then
  cxx+=(-DTLSLIBS_GNUTLS)
  sources+=("$here/backend_gnutls.cpp")
  libs_link+=(-lgnutls)
  built+=(gnutls)
else
  echo "GnuTLS headers missing (apt-get install libgnutls28-dev): gnutls skipped"
fi
if [ -f /usr/include/wolfssl/ssl.h ]; then
  cxx+=(-DTLSLIBS_WOLFSSL)
  sources+=("$here/backend_wolfssl.cpp")
  libs_link+=(-lwolfssl)
  built+=(wolfssl)
else
  echo "wolfSSL headers missing (apt-get install libwolfssl-dev): wolfssl skipped"
fi
"${cxx[@]}" -o "$work/server" "${sources[@]}" "${libs_link[@]}"
g++ -O2 -std=c++20 -Wall -Wextra -Werror -o "$work/client" "$here/client.cpp" -lssl -lcrypto
bash "$certs_tool" "$work/certs" "$org" >/dev/null

libs=()
for lib in ${LIBS:-openssl openssl-tuned gnutls wolfssl}; do
  [[ " ${built[*]} " == *" $lib "* ]] && libs+=("$lib")
done

# One run: the server on core 0 prints its port, the client on core 1 connects; both print one
# line of results. The server's first line is read from its pipe, so nothing sleeps.
run_one() { # LIB MODE TLS
  local srv word port pid
  exec {srv}< <(timeout 600 taskset -c 0 "$work/server" --lib "$1" --mode "$2" --n "$n" \
    --certs "$work/certs" --org "$org" 2>&1)
  pid=$!
  read -r -u "$srv" word port || true
  if [ "$word" != port ]; then
    echo "server failed: $word $port $(cat <&"$srv")" >&2
    return 1
  fi
  if ! timeout 600 taskset -c 1 "$work/client" --port "$port" --n "$n" --mode "$2" --tls "$3" \
    --certs "$work/certs" --org "$org" --distinct "$distinct"; then
    kill "$pid" 2>/dev/null || true
    echo "client failed ($1 $2 TLS $3): $(cat <&"$srv")" >&2
    return 1
  fi
  cat <&"$srv"
  exec {srv}<&-
}

results=$work/results.txt
for round in $(seq "$rounds"); do
  for lib in "${libs[@]}"; do
    for case in "full 1.3" "resume 1.3" "full 1.2"; do
      set -- $case
      echo "run round=$round lib=$lib mode=$1 tls=$2" | tee -a "$results"
      run_one "$lib" "$1" "$2" | tee -a "$results"
    done
  done
done
echo
echo "N=$n rounds=$rounds distinct_client_certs=$distinct load average: $(cut -d' ' -f1-3 /proc/loadavg)"
dpkg-query -W -f '${Package} ${Version}\n' libssl3 libgnutls30 'libwolfssl*' 2>/dev/null | grep -v -- '-dev' || true
python3 "$here/summarize.py" "$results"
