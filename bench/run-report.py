#!/usr/bin/python3
"""bench/run.sh's report: reads results.jsonl and the raw files it names, writes report.md
(markdown tables, ratios against dispatchd), PNG plots when matplotlib is there, and with
--update-benchmarks replaces BENCHMARKS.md's "Side by side with the peers" section.
With --smoke (mode smoke) it fails unless every scenario produced numbers.

Also --encode-status SESSION OUT TASK...: a gRPC-framed UpdateTaskStatusRequest that sets each
task RUNNING (h2load's request body for scenario 5)."""
import argparse
import json
import os
import re
import sys

SECTION = "## Side by side with the peers (issue 14)"
PEER_ORDER = ["dispatchd", "grpcpp-cq", "grpcpp-callback", "grpcgo", "nghttpd", "swarmref"]


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def encode_status(session, out, tasks):
    running = varint(2 << 3) + varint(512)  # TaskStatus.state = RUNNING
    msg = field(1, session.encode())
    for t in tasks:
        msg += field(3, field(1, t.encode()) + field(2, running))
    with open(out, "wb") as f:
        f.write(b"\x00" + len(msg).to_bytes(4, "big") + msg)


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def h2load(rec):
    if rec.get("grpc_status", "0") != "0":
        # The calls failed at the gRPC level (h2load sees HTTP 200): no figures from them.
        return {"calls_s": None, "calls": 0, "p50_ms": None, "p99_ms": None, "cpu_us": None}
    text = open(rec["h2load"]).read()
    m = re.search(r"finished in ([\d.]+)m?s, ([\d.]+) req/s", text)
    ok = re.search(r"(\d+) succeeded", text)
    lat = []
    if os.path.exists(rec["log"]):
        for line in open(rec["log"]):
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "200":
                lat.append(int(parts[2]) / 1000.0)  # µs → ms
    calls = int(ok.group(1)) if ok else 0
    return {
        "calls_s": float(m.group(2)) if m else None,
        "calls": calls,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "cpu_us": rec["cpu_s"] * 1e6 / calls if calls else None,
    }


def ghz(rec):
    try:
        j = json.load(open(rec["ghz"]))
    except (OSError, ValueError):
        return {}
    ok = (j.get("statusCodeDistribution") or {}).get("OK", 0)
    p99 = next((d["latency"] for d in j.get("latencyDistribution") or [] if d["percentage"] == 99),
               None)
    return {
        "calls_s": j.get("rps"),
        "calls": ok,
        "p99_ms": p99 / 1e6 if p99 else None,
        "cpu_us": rec["cpu_s"] * 1e6 / ok if ok else None,
    }


def sessions(rec):
    n = rec["n"]
    times = []
    if os.path.exists(rec["times"]):
        times = [(int(x) - rec["instant_ns"]) / 1e6 for x in open(rec["times"]) if x.strip()]
    return {
        "rss_b": (rec["rss1_kib"] - rec["rss0_kib"]) * 1024 / n if rec["all_open"] else None,
        "setup_cpu_us": rec["setup_cpu_s"] * 1e6 / n if rec["all_open"] else None,
        "setup_s": rec["setup_s"] if rec["setup_s"] >= 0 else None,
        "idle_cpu_pct": rec["idle_cpu_s"] / rec["idle_s"] * 100,
        "fan_got": len(times),
        "fan_p50": pct(times, 50),
        "fan_p99": pct(times, 99),
        "fan_max": max(times) if times else None,
        "fan_times": times,
    }


def f(v, digits=1):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def ratio(a, b):
    return f"{b / a:.2f}×" if a and b else "—"


def order(server):
    return PEER_ORDER.index(server) if server in PEER_ORDER else 99


def table(title, note, header):
    """A section's heading, its note and a table header; numeric columns (all but the first)
    right-aligned."""
    cols = header.count("|") - 1
    return ([title, ""] + ([note, ""] if note else []) +
            [header, "|---|" + "---:|" * (cols - 1)])


def report(recs, mode):
    lines = []
    hb = [dict(r, **h2load(r)) for r in recs if r["scenario"] == "heartbeat"]
    if hb:
        lines += table("### 1. Unary Heartbeat, h2c (h2load, 10 streams per connection)",
                       "The last column is the server's CPU per call over dispatchd's at the same "
                       "connection count (above 1×: dispatchd uses less).",
                       "| server | connections | calls/s | p50 ms | p99 ms | server CPU µs/call | "
                       "CPU/call vs dispatchd |")
        base = {r["connections"]: r["cpu_us"] for r in hb if r["server"] == "dispatchd"}
        for r in sorted(hb, key=lambda r: (r["connections"], order(r["server"]))):
            lines.append(f"| {r['server']} | {r['connections']} | {f(r['calls_s'], 0)} | "
                         f"{f(r['p50_ms'], 2)} | {f(r['p99_ms'], 2)} | {f(r['cpu_us'], 2)} | "
                         f"{ratio(base.get(r['connections']), r['cpu_us'])} |")
        lines.append("")
    mt = [dict(r, **ghz(r)) for r in recs if r["scenario"] == "mtls"]
    if mt:
        lines += table("### 2. Heartbeat over mutual TLS (ghz, one offered rate)", None,
                       "| server | offered calls/s | calls/s | OK calls | p99 ms | "
                       "server CPU µs/call | CPU/call vs dispatchd |")
        base = next((r["cpu_us"] for r in mt if r["server"] == "dispatchd"), None)
        for r in sorted(mt, key=lambda r: order(r["server"])):
            lines.append(f"| {r['server']} | {r['rate']} | {f(r.get('calls_s'), 0)} | "
                         f"{f(r.get('calls'))} | {f(r.get('p99_ms'), 2)} | {f(r.get('cpu_us'), 1)} "
                         f"| {ratio(base, r.get('cpu_us'))} |")
        lines.append("")
    ss = [dict(r, **sessions(r)) for r in recs if r["scenario"] == "sessions"]
    if ss:
        lines += table("### 3. Idle Session streams over 100 connections (fresh server each)",
                       "RSS per session: the server's VmRSS growth from start to all sessions "
                       "open, over N. Setup CPU includes the heartbeats that fell in the setup "
                       "window. Idle CPU: the sessions heartbeating at the 5 s period the server "
                       "answers.",
                       "| server | sessions | all open in s | RSS per session B | "
                       "setup CPU µs/session | idle CPU % of a core | RSS vs dispatchd | "
                       "setup CPU vs dispatchd |")
        base = {r["n"]: r for r in ss if r["server"] == "dispatchd"}
        for r in sorted(ss, key=lambda r: (r["n"], order(r["server"]))):
            b = base.get(r["n"], {})
            lines.append(f"| {r['server']} | {r['n']:,} | {f(r['setup_s'], 2)} | {f(r['rss_b'], 0)} "
                         f"| {f(r['setup_cpu_us'], 1)} | {f(r['idle_cpu_pct'], 2)} | "
                         f"{ratio(b.get('rss_b'), r['rss_b'])} | "
                         f"{ratio(b.get('setup_cpu_us'), r['setup_cpu_us'])} |")
        lines += [""] + table(
            "### 4. Fan-out of one manager-list change to every open session",
            "From the change (dispatchd: `dispatchctl managers set`; peers: SIGUSR1) to each "
            "session's new message, on the client's clock. dispatchd's figures include starting "
            "dispatchctl and its connection: the trigger column is one `dispatchctl managers ls` "
            "timed just before (0 for a signal).",
            "| server | sessions | got it | trigger ms | p50 ms | p99 ms | max ms |")
        for r in sorted(ss, key=lambda r: (r["n"], order(r["server"]))):
            lines.append(f"| {r['server']} | {r['n']:,} | {r['fan_got']:,} | "
                         f"{f(float(r.get('trigger_ms', 0)), 1)} | {f(r['fan_p50'], 1)} "
                         f"| {f(r['fan_p99'], 1)} | {f(r['fan_max'], 1)} |")
        lines.append("")
    st = [dict(r, **h2load(r)) for r in recs if r["scenario"] == "status"]
    if st:
        lines += table("### 5. UpdateTaskStatus (dispatchd; h2load, 10 connections × 10 streams)",
                       "A call is answered once its batch is in the store, so its latency is the "
                       "time until the update is stored.",
                       "| updates per call | calls/s | updates/s | p50 ms | p99 ms | "
                       "server CPU µs/call |")
        for r in st:
            ups = r["calls_s"] * r["updates"] if r["calls_s"] else None
            lines.append(f"| {r['updates']} | {f(r['calls_s'], 0)} | {f(ups, 0)} | "
                         f"{f(r['p50_ms'], 2)} | {f(r['p99_ms'], 2)} | {f(r['cpu_us'], 1)} |")
        lines.append("")
    missing = [name for name, rows, key in
               [("heartbeat", hb, "cpu_us"), ("sessions", ss, "rss_b"), ("fanout", ss, "fan_p99"),
                ("status", st, "calls_s")]
               if not rows or any(r[key] is None for r in rows)]
    if mt and any(r.get("cpu_us") is None for r in mt):
        missing.append("mtls")
    return lines, (hb, mt, ss, st), missing


def plots(data, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("run-report: no plots: python3-matplotlib is not installed", file=sys.stderr)
        return []
    hb, _, ss, _ = data
    made = []
    if hb:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        conns = sorted({r["connections"] for r in hb})
        servers = sorted({r["server"] for r in hb}, key=order)
        width = 0.8 / len(servers)
        for i, s in enumerate(servers):
            rows = {r["connections"]: r for r in hb if r["server"] == s}
            xs = [c + i * width for c in range(len(conns))]
            axes[0].bar(xs, [rows.get(c, {}).get("calls_s") or 0 for c in conns], width, label=s)
            axes[1].bar(xs, [rows.get(c, {}).get("cpu_us") or 0 for c in conns], width, label=s)
        for ax, title in zip(axes, ["Heartbeat calls/s", "server CPU µs per call"]):
            ax.set_xticks([c + 0.4 - width / 2 for c in range(len(conns))])
            ax.set_xticklabels([f"{c} conn × 10" for c in conns])
            ax.set_title(title)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "heartbeat.png"), dpi=100)
        made.append("heartbeat.png")
    if ss:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in sorted(ss, key=lambda r: (order(r["server"]), r["n"])):
            t = sorted(r["fan_times"])
            if t:
                ax.plot(t, [(i + 1) / r["n"] for i in range(len(t))], label=f"{r['server']} {r['n']:,}")
        ax.set_xlabel("ms after the manager-list change")
        ax.set_ylabel("fraction of sessions with the new list")
        ax.set_title("Fan-out")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "fanout-cdf.png"), dpi=100)
        made.append("fanout-cdf.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in sorted({r["server"] for r in ss}, key=order):
            rows = sorted((r for r in ss if r["server"] == s and r["all_open"]), key=lambda r: r["n"])
            ax.plot([r["n"] for r in rows], [(r["rss1_kib"] - r["rss0_kib"]) / 1024 for r in rows],
                    marker="o", label=s)
        ax.set_xscale("log")
        ax.set_xlabel("open sessions")
        ax.set_ylabel("server RSS growth, MiB")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "sessions-rss.png"), dpi=100)
        made.append("sessions-rss.png")
    return made


def update_benchmarks(path, body):
    text = open(path).read()
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[nxt + 1:] if nxt >= 0 else "")
    open(path, "w").write(text)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--encode-status":
        encode_status(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="full")
    ap.add_argument("--update-benchmarks")
    a = ap.parse_args()
    recs = [json.loads(line) for line in open(a.results) if line.strip()]
    lines, data, missing = report(recs, a.mode)
    made = plots(data, a.out)
    cmd = {"full": "bench/run.sh", "quick": "bench/run.sh --quick",
           "smoke": "bench/run.sh --smoke"}[a.mode]
    body = "\n".join([SECTION, "", f"`{cmd} --update-benchmarks` (server `taskset -c 0`, load "
                      "`taskset -c 1`; peers from `bench/peers/build.sh`). Written by "
                      "bench/run-report.py; plots beside the results (" + ", ".join(made) + "). The "
                      "machine is shared and noisy: compare ratios within one run, not absolute "
                      "figures across runs.",
                      ""] + lines)
    with open(os.path.join(a.out, "report.md"), "w") as fh:
        fh.write(body)
    print(body)
    if a.update_benchmarks:
        update_benchmarks(a.update_benchmarks, body)
    if missing:
        print(f"run-report: no numbers for: {', '.join(missing)}", file=sys.stderr)
        return 1 if a.mode == "smoke" else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
