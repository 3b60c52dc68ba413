#!/usr/bin/env python3
"""Mints node-<i>.{pem,key} for i in FIRST..LAST in DIR, signed by DIR/ca.{pem,key} (made by
scripts/gen-certs.sh), shaped like gen-certs.sh's node certificates (ECDSA P-256, O/OU/CN =
ORG/swarm-worker/node-<i>, serverAuth+clientAuth) but minted in-process: thousands per second
where gen-certs.sh --nodes forks openssl three times per node. Existing files are kept.

  mint-node-certs.py DIR LAST [--first 1] [--org dispatchd]
"""
import argparse
import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("last", type=int)
p.add_argument("--first", type=int, default=1)
p.add_argument("--org", default="dispatchd")
a = p.parse_args()

with open(os.path.join(a.dir, "ca.pem"), "rb") as f:
    ca = x509.load_pem_x509_certificate(f.read())
with open(os.path.join(a.dir, "ca.key"), "rb") as f:
    ca_key = serialization.load_pem_private_key(f.read(), None)
now = datetime.datetime.now(datetime.timezone.utc)
os.umask(0o077)
for i in range(a.first, a.last + 1):
    pem, keyf = (os.path.join(a.dir, f"node-{i}.{ext}") for ext in ("pem", "key"))
    if os.path.exists(pem) and os.path.exists(keyf):
        continue
    key = ec.generate_private_key(ec.SECP256R1())
    cn = f"node-{i}"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, a.org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-worker"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    with open(keyf, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    with open(pem, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
