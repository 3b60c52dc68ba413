#!/usr/bin/env bash
# gen-certs.sh: a throw-away certificate authority and SwarmKit-shaped certificates for the
# quick start, the tests and the benchmarks. Subjects follow SwarmKit: CN = node ID,
# OU = role (swarm-manager / swarm-worker), O = cluster organisation.
#
#   scripts/gen-certs.sh [--out DIR] [--org ORG] [--nodes N] [--manager-id ID] [--test-variants]
#
# Writes DIR/ca.pem, DIR/server.{pem,key} (CN = --manager-id, SANs swarm-manager, swarm-ca,
# localhost, 127.0.0.1), DIR/node-<i>.{pem,key} for i in 1..N (workers), DIR/ctl.{pem,key} (the
# operator's certificate for dispatchctl: OU swarm-manager, CN dispatchctl). --test-variants adds
# wrong-org, wrong-role, manager, untrusted (other CA), self-signed and expired certificates.
# Defaults: --out certs, --org dispatchd, --nodes 2, --manager-id manager-1. Keys are ECDSA P-256.
set -euo pipefail

out=certs org=dispatchd nodes=2 manager_id=manager-1 variants=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --org) org=$2; shift 2 ;;
    --org=*) org=${1#*=}; shift ;;
    --nodes) nodes=$2; shift 2 ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    --manager-id) manager_id=$2; shift 2 ;;
    --manager-id=*) manager_id=${1#*=}; shift ;;
    --test-variants) variants=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gen-certs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "gen-certs.sh: openssl is not installed" >&2; exit 1; }
mkdir -p "$out"
cd "$out"
umask 077

keygen() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

self_signed_ca() {  # name cn
  keygen "$1.key"
  openssl req -new -x509 -key "$1.key" -out "$1.pem" -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# issue NAME CN OU O SIGNER [server]
issue() {
  local name=$1 cn=$2 ou=$3 o=$4 signer=$5 kind=${6:-client}
  keygen "$name.key"
  openssl req -new -key "$name.key" -out "$name.csr" -subj "/O=$o/OU=$ou/CN=$cn" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    if [ "$kind" = server ]; then
      echo "subjectAltName=DNS:swarm-manager,DNS:swarm-ca,DNS:$cn,DNS:localhost,IP:127.0.0.1"
    else
      echo "subjectAltName=DNS:$cn"
    fi
  } >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$signer.pem" -CAkey "$signer.key" -CAcreateserial \
    -out "$name.pem" -days 825 -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

[ -f ca.pem ] || self_signed_ca ca "dispatchd test root CA ($org)"
issue server "$manager_id" swarm-manager "$org" ca server
for i in $(seq 1 "$nodes"); do issue "node-$i" "node-$i" swarm-worker "$org" ca; done
issue ctl dispatchctl swarm-manager "$org" ca

if [ "$variants" = 1 ]; then
  issue manager node-m1 swarm-manager "$org" ca
  issue wrong-org node-x1 swarm-worker other-org ca
  issue wrong-role node-r1 swarm-auditor "$org" ca
  [ -f other-ca.pem ] || self_signed_ca other-ca "some other CA"
  issue untrusted node-u1 swarm-worker "$org" other-ca
  keygen self-signed.key
  openssl req -new -x509 -key self-signed.key -out self-signed.pem -days 30 \
    -subj "/O=$org/OU=swarm-worker/CN=node-s1" 2>/dev/null
  # Expired: valid only in 2020. `openssl ca` is what accepts explicit past dates.
  keygen expired.key
  openssl req -new -key expired.key -out expired.csr -subj "/O=$org/OU=swarm-worker/CN=node-e1" 2>/dev/null
  mkdir -p ca-db && : >ca-db/index.txt && echo 1000 >ca-db/serial
  cat >ca-db/ca.cnf <<CNF
[ca]
default_ca = past
[past]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
default_md = sha256
policy = any
unique_subject = no
[any]
O = optional
OU = optional
CN = supplied
CNF
  openssl ca -batch -config ca-db/ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
    -out expired.pem -startdate 20200101000000Z -enddate 20200102000000Z -notext >/dev/null 2>&1
  rm -f expired.csr
fi
chmod 644 ./*.pem
echo "gen-certs.sh: certificates for organisation '$org' in $(pwd)"
