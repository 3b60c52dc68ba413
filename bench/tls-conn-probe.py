#!/usr/bin/env python3
"""Opens N connections to a running dispatchd and holds them, for bench/tls-conn-mem.sh.

Each connection: (mutual TLS with its own client certificate node-<i>.pem, ALPN h2 | plaintext
h2c), the HTTP/2 preface and SETTINGS, the ACK of the server's SETTINGS, and with --session one
Dispatcher.Session stream (empty SessionRequest) whose first SessionMessage is awaited. Then every
connection stays open and idle (its incoming bytes are drained) until the server's RSS has been
read. Prints the server's VmRSS before and after and the growth per connection.

  tls-conn-probe.py --port P --pid PID -n N [--certs DIR] [--insecure] [--session]
                    [--tls-max 1.2|1.3] [--send-root] [--heap-stats] [--warmup K] [--settle SECONDS] [--hold SECONDS]
"""
import argparse
import asyncio
import os
import ssl
import struct
import subprocess
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    # HPACK "literal header field without indexing, new name", no Huffman (lengths < 127).
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def session_request(node_id, tls):
    hdrs = b"".join(
        literal(k, v)
        for k, v in [
            (":method", "POST"),
            (":scheme", "https" if tls else "http"),
            (":path", "/docker.swarmkit.v1.Dispatcher/Session"),
            (":authority", "swarm-manager"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("node-id", node_id),
        ]
    )
    # HEADERS (END_HEADERS) then one DATA frame: an empty SessionRequest, END_STREAM.
    return frame(1, 0x4, 1, hdrs) + frame(0, 0x1, 1, b"\x00\x00\x00\x00\x00")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def heap_stats(pid):
    # glibc's malloc_stats() prints the arenas' totals on the server's stderr (needs gdb);
    # bench/tls-conn-mem.sh reads them from the server log.
    subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-ex", "call (void)malloc_stats()"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


class Conn:
    def __init__(self, args, i):
        self.args, self.i = args, i
        self.reader = self.writer = None
        self.drain_task = None

    def ssl_context(self):
        a = self.args
        # The client sends its leaf certificate only, as a SwarmKit agent does (Go sends the chain
        # in its certificate file: the leaf, plus intermediates when the CA has any). An OpenSSL
        # client with the CA in its verify store would send the root too, and the server would
        # keep a decoded copy of it (~4.8 KB) for the connection's life. So the server is
        # authenticated by pinning its certificate instead (checked in open()).
        # --send-root: what an OpenSSL client does by default (the CA in its verify store).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if a.send_root:
            ctx.load_verify_locations(os.path.join(a.certs, "ca.pem"))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(os.path.join(a.certs, f"node-{self.i}.pem"), os.path.join(a.certs, f"node-{self.i}.key"))
        ctx.set_alpn_protocols(["h2"])
        if a.tls_max == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def read_frame(self):
        head = await self.reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        payload = await self.reader.readexactly(length)
        return head[3], head[4], int.from_bytes(head[5:9], "big"), payload

    async def open(self):
        a = self.args
        if a.insecure:
            self.reader, self.writer = await asyncio.open_connection(a.host, a.port)
        else:
            self.reader, self.writer = await asyncio.open_connection(
                a.host, a.port, ssl=self.ssl_context(), server_hostname="swarm-manager"
            )
            sslobj = self.writer.get_extra_info("ssl_object")
            if sslobj.selected_alpn_protocol() != "h2":
                raise RuntimeError(f"ALPN {sslobj.selected_alpn_protocol()!r}")
            if sslobj.getpeercert(binary_form=True) != a.server_der:
                raise RuntimeError("the server's certificate is not certs/server.pem")
        # A large connection window so the server never waits on us.
        self.writer.write(PREFACE + frame(4, 0, 0) + frame(8, 0, 0, struct.pack(">I", 1 << 24)))
        while True:
            ftype, flags, _, _ = await self.read_frame()
            if ftype == 4 and not flags & 1:
                break
        self.writer.write(frame(4, 1, 0))
        if a.session:
            self.writer.write(session_request(f"node-{self.i}", not a.insecure))
            got = b""
            while len(got) < 5:  # the first bytes of the first SessionMessage
                ftype, flags, stream, payload = await self.read_frame()
                if ftype == 0 and stream == 1:
                    got += payload
                elif ftype == 1 and stream == 1 and flags & 1:
                    raise RuntimeError("Session ended at once (trailers-only)")
                elif ftype == 3:
                    raise RuntimeError("Session reset")
        await self.writer.drain()
        self.drain_task = asyncio.create_task(self.drain())

    async def drain(self):
        try:
            while await self.reader.read(65536):
                pass
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass

    def close(self):
        if self.drain_task:
            self.drain_task.cancel()
        if self.writer:
            self.writer.transport.abort()


async def open_many(args, first, count):
    sem = asyncio.Semaphore(args.concurrency)
    conns = [Conn(args, first + k) for k in range(count)]

    async def one(c):
        async with sem:
            await c.open()

    results = await asyncio.gather(*(one(c) for c in conns), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {count} connections failed, first: {errors[0]!r}")
    return conns


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--certs", default="certs")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--session", action="store_true")
    p.add_argument("--tls-max", choices=["1.2", "1.3"], default="1.3")
    p.add_argument("--send-root", action="store_true", help="clients send leaf and root CA")
    p.add_argument("--heap-stats", action="store_true", help="make the server print malloc_stats()")
    p.add_argument("--warmup", type=int, default=20, help="connections opened and closed first")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--hold", type=float, default=0.0, help="keep the connections this much longer")
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    if not args.insecure:
        with open(os.path.join(args.certs, "server.pem")) as f:
            args.server_der = ssl.PEM_cert_to_DER_cert(f.read())

    # Warm-up: one-time state (provider fetches, pools, the first session's store entries)
    # is not charged to the connections measured.
    if args.warmup:
        warm = await open_many(args, args.n + 1, args.warmup)
        for c in warm:
            c.close()
        await asyncio.sleep(args.settle)
    before = rss_kib(args.pid)
    cpu_before = cpu_seconds(args.pid)
    if args.heap_stats:
        heap_stats(args.pid)
    t0 = time.monotonic()
    conns = await open_many(args, 1, args.n)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(args.pid) - cpu_before
    await asyncio.sleep(args.settle)
    after = rss_kib(args.pid)
    if args.heap_stats:
        heap_stats(args.pid)
    per = (after - before) * 1024 / args.n
    mode = "h2c" if args.insecure else f"mTLS(max {args.tls_max}{', leaf+root' if args.send_root else ''})"
    print(
        f"{mode} n={args.n} session={'yes' if args.session else 'no'}: "
        f"VmRSS {before} KiB -> {after} KiB, {per:.0f} bytes ({per / 1024:.2f} KiB) per connection "
        f"[opened in {elapsed:.1f} s, server CPU {cpu * 1e6 / args.n:.0f} µs per connection]"
    )
    if args.hold:
        await asyncio.sleep(args.hold)
    for c in conns:
        c.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except RuntimeError as e:
        print(f"tls-conn-probe: {e}", file=sys.stderr)
        sys.exit(1)
