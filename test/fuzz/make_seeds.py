#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (test/fuzz/corpus/<target>/).

The seeds are committed; run this again only to change them. Connection seeds are real gRPC
requests (HEADERS with plain HPACK literals, DATA with hand-encoded protobuf) so that the fuzzer
starts past HPACK and into the handlers. Input layouts are described at the top of each target.
"""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
PLACEHOLDER = b"@" * 25  # replaced by the harness with the session ID the server handed out


# ---- protobuf -----------------------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, value):
    return varint(num << 3) + varint(value)


def grpc_message(payload, compressed=False):
    return bytes([1 if compressed else 0]) + struct.pack(">I", len(payload)) + payload


# ---- HTTP/2 and HPACK ---------------------------------------------------------------------------

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first_byte_flags):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(s):
    return hpack_int(len(s), 7, 0) + s


STATIC = {":authority": 1, ":method": 2, ":path": 4, ":scheme": 6, "content-type": 31, "te": None}


def hpack_headers(headers):
    """Literal header fields without indexing (name indexed when the static table has it)."""
    out = bytearray()
    for name, value in headers:
        if (name, value) == (":method", b"POST"):
            out += b"\x83"
        elif (name, value) == (":scheme", b"http"):
            out += b"\x86"
        elif STATIC.get(name):
            out += hpack_int(STATIC[name], 4, 0x00) + hpack_string(value)
        else:
            out += b"\x00" + hpack_string(name.encode()) + hpack_string(value)
    return bytes(out)


def request(stream, path, body, metadata=(), method=b"POST", content_type=b"application/grpc",
            end_stream=True):
    headers = [(":method", method), (":scheme", b"http"), (":path", path.encode()),
               (":authority", b"dispatchd"), ("content-type", content_type), ("te", b"trailers")]
    headers += [(k, v) for k, v in metadata]
    out = frame(HEADERS, END_HEADERS, stream, hpack_headers(headers))
    if body is not None:
        out += frame(DATA, END_STREAM if end_stream else 0, stream, body)
    return out


NODE = [("node-id", b"node-1")]
SESSION = field_bytes(1, field_bytes(1, b"node-1.example"))  # SessionRequest{description{hostname}}
WITH_ID = field_bytes(1, PLACEHOLDER)  # Heartbeat/Assignments/Tasks request: session_id
TASK_UPDATE = field_bytes(1, PLACEHOLDER) + field_bytes(
    3, field_bytes(1, b"task-1") + field_bytes(2, field_varint(2, 512)))  # task-1 RUNNING
VOLUME_UPDATE = field_bytes(1, PLACEHOLDER) + field_bytes(
    2, field_bytes(1, b"volume-1") + field_varint(2, 1))
HEALTH = field_bytes(1, b"docker.swarmkit.v1.Dispatcher")

D = "/docker.swarmkit.v1.Dispatcher/"
H = "/grpc.health.v1.Health/"


def connection_input(flags, chunks, body, stop_before=0):
    head = bytes([flags, stop_before, len(chunks)]) + b"".join(struct.pack(">H", c) for c in chunks)
    return head + body


def connection_seeds():
    seeds = {}
    settings = 1  # flag: the harness sends the client SETTINGS frame
    slow = 2      # flag: one chunk per idle server

    check = request(1, H + "Check", grpc_message(HEALTH))
    seeds["health_check"] = connection_input(settings, [], check)
    seeds["health_check_split"] = connection_input(settings, [7, 1, 30, 0], check)

    # A client SETTINGS frame with values, a PING and a WINDOW_UPDATE before the call.
    own_settings = frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 1 << 20) + struct.pack(">HI", 1, 0))
    misc = (own_settings + frame(PING, 0, 0, b"12345678") + frame(WINDOW_UPDATE, 0, 0,
                                                                  struct.pack(">I", 1 << 20)))
    seeds["health_watch"] = connection_input(
        slow, [], misc + request(1, H + "Watch", grpc_message(HEALTH)) + frame(SETTINGS, ACK, 0))

    session = request(1, D + "Session", grpc_message(SESSION), NODE)
    rest = b"".join([
        request(3, D + "Heartbeat", grpc_message(WITH_ID), NODE),
        request(5, D + "UpdateTaskStatus", grpc_message(TASK_UPDATE), NODE),
        request(7, D + "Assignments", grpc_message(WITH_ID), NODE),
        request(9, D + "Tasks", grpc_message(WITH_ID), NODE),
        request(11, D + "UpdateVolumeStatus", grpc_message(VOLUME_UPDATE), NODE),
    ])
    # Slow client: the session is open (and its ID known) before the other calls are sent.
    seeds["session_calls"] = connection_input(settings | slow, [len(session) + 33, 0], session + rest)
    seeds["session_calls_stop"] = connection_input(settings | slow, [len(session) + 33, 120, 0],
                                                   session + rest, stop_before=3)
    seeds["session_eager"] = connection_input(settings, [], session + rest)
    seeds["session_reset_goaway"] = connection_input(
        settings | slow, [len(session) + 33, 0],
        session + request(3, D + "Assignments", grpc_message(WITH_ID), NODE) +
        frame(RST_STREAM, 0, 3, struct.pack(">I", 8)) + frame(RST_STREAM, 0, 1, struct.pack(">I", 8)) +
        frame(GOAWAY, 0, 0, struct.pack(">II", 3, 0)))
    # Writes trickle out 64 bytes at a time, every other one blocked first.
    seeds["session_slow_writes"] = connection_input(settings | slow | 4 | (4 << 4),
                                                    [len(session) + 33, 0], session + rest)
    # A deadline that expires while the session is open (flag 8: let timers run before EOF).
    seeds["session_deadline"] = connection_input(
        settings | slow | 8, [],
        request(1, D + "Session", grpc_message(SESSION), NODE + [("grpc-timeout", b"1m")]))

    refused = b"".join([
        request(1, H + "Check", grpc_message(HEALTH), method=b"PUT"),
        request(3, H + "Check", grpc_message(HEALTH), content_type=b"text/plain"),
        request(5, "/grpc.health.v1.Health/Nope", grpc_message(b"")),
        request(7, "/nope.Service/Method", grpc_message(b"")),
        request(9, "bad-path", grpc_message(b"")),
        request(11, H + "Check", grpc_message(HEALTH), [("grpc-encoding", b"gzip")]),
        request(13, H + "Check", grpc_message(HEALTH), [("grpc-timeout", b"bogus")]),
        request(15, H + "Check", grpc_message(HEALTH, compressed=True)),
        request(17, H + "Check", b"\x00\x00\x00"),  # truncated at END_STREAM
        request(19, H + "Check", grpc_message(b"\xff\xff")),  # not protobuf
        request(21, D + "Heartbeat", grpc_message(WITH_ID)),  # no node-id
        request(23, D + "Session", grpc_message(SESSION), [("node-id", b"node-2"),
                                                           ("node-role", b"swarm-manager")]),
    ])
    seeds["refusals"] = connection_input(settings | slow, [], refused)
    # A request body in many DATA frames, the call left open (no END_STREAM) until EOF.
    body = grpc_message(SESSION)
    split = b"".join(frame(DATA, 0, 1, body[i:i + 4]) for i in range(0, len(body), 4))
    seeds["session_fragmented"] = connection_input(
        settings, [50, 3, 9],
        frame(HEADERS, END_HEADERS, 1, hpack_headers(
            [(":method", b"POST"), (":scheme", b"http"), (":path", (D + "Session").encode()),
             (":authority", b"x"), ("content-type", b"application/grpc"), ("node-id", b"node-1")]))
        + split)
    return seeds


def decoder_seeds():
    two = grpc_message(b"hello") + grpc_message(b"") + grpc_message(b"world!")
    return {
        "two_messages": bytes([0xFF, 0]) + two,
        "split": bytes([0xFF, 4, 1, 0, 3, 7]) + two,
        "too_large": bytes([2, 2, 2, 3]) + grpc_message(b"12345"),
        "compressed": bytes([0xFF, 1, 2]) + grpc_message(b"abc") + grpc_message(b"z", True),
        "bad_flag": bytes([0xFF, 0]) + b"\x07\x00\x00\x00\x01x",
        "truncated": bytes([0xFF, 1, 3]) + grpc_message(b"abcdef")[:8],
    }


def metadata_seeds():
    return {
        "timeout_ms": b"100m",
        "timeout_max": b"99999999H",
        "percent": b"caf\xc3\xa9 100%25 \x01\n",
        "base64": b"aGVsbG8gd29ybGQ=",
        "base64_unpadded": b"AAECAwQ",
        "duration": b"1h2m3.5s",
        "duration_min": b"-2562047h47m16.854775808s",
        "duration_micro": b"1.5\xc2\xb5s",
    }


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    write("connection_fuzz", connection_seeds())
    write("decoder_fuzz", decoder_seeds())
    write("metadata_fuzz", metadata_seeds())
    return 0


if __name__ == "__main__":
    sys.exit(main())
