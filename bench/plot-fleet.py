#!/usr/bin/env python3
"""plot-fleet.py: PNG plots of bench/fleet.sh's runs (python3-matplotlib).

  fleet-rss.png        server RSS against agents with a session, per server and fleet size
  fleet-fanout-cdf.png share of agents that saw the new manager list, against time
  fleet-restart.png    open sessions and connections around the server restart
  fleet-churn.png      server RSS and open sessions during and after churn
"""

import argparse
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(dirs, prefix):
    out = []
    for path in sorted(p for d in dirs for p in glob.glob(os.path.join(d, prefix + "-*.json"))):
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError):
            continue
        _, server, n = os.path.basename(path)[:-5].rsplit("-", 2)
        out.append((server, int(n), r))
    return sorted(out, key=lambda t: (t[1], t[0]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True, nargs="+", help="one or more runs directories")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    made = []

    steady = load(a.runs, "steady")
    if steady:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for server, n, r in steady:
            pts = [(s["sessions"], s["server_rss_kb"] / 1024) for s in r["samples"] if s["server_rss_kb"] >= 0]
            if not pts:
                continue
            per = r.get("server", {}).get("rss_growth_per_agent_kib", 0)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".",
                    label=f"{server}, {n:,} agents ({per:.1f} KiB/agent)")
        ax.set_xlabel("agents with a session (each its own mTLS connection)")
        ax.set_ylabel("server RSS (MiB)")
        ax.set_title("Server memory against the fleet")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(a.out, "fleet-rss.png")
        fig.savefig(p, dpi=110)
        made.append(p)

    fanout = load(a.runs, "fanout")
    if fanout:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for server, n, r in fanout:
            lists = r.get("fanout", {}).get("lists", [])
            if not lists:
                continue
            lat = sorted(lists[0]["latencies_ms"])
            ax.plot(lat, [(i + 1) / n for i in range(len(lat))],
                    label=f"{server}, {n:,} agents (p99 {lists[0]['p99_ms']:.0f} ms)")
        ax.set_xlabel("ms after `dispatchctl managers set`")
        ax.set_ylabel("share of agents that saw the new list")
        ax.set_title("Manager list fan-out")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(a.out, "fleet-fanout-cdf.png")
        fig.savefig(p, dpi=110)
        made.append(p)

    herd = load(a.runs, "herd")
    if herd:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for server, n, r in herd:
            h = r.get("restart")
            t0 = h["lost_at_s"] if h else 0
            xs = [s["t"] - t0 for s in r["samples"]]
            ax.plot(xs, [s["sessions"] / n for s in r["samples"]], label=f"{n:,} agents: sessions")
            ax.plot(xs, [s["connected"] / n for s in r["samples"]], linestyle=":",
                    label=f"{n:,} agents: connections")
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("s after the first session was lost (SIGTERM to dispatchd)")
        ax.set_ylabel("share of the fleet")
        ax.set_title("Reconnect after a server restart (1 s samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(a.out, "fleet-restart.png")
        fig.savefig(p, dpi=110)
        made.append(p)

    churn = load(a.runs, "churn")
    if churn:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax2 = ax.twinx()
        for server, n, r in churn:
            xs = [s["t"] for s in r["samples"] if s["server_rss_kb"] >= 0]
            ax.plot(xs, [s["server_rss_kb"] / 1024 for s in r["samples"] if s["server_rss_kb"] >= 0],
                    label=f"{n:,} agents: server RSS")
            ax2.plot([s["t"] for s in r["samples"]], [s["sessions"] for s in r["samples"]],
                     linestyle=":", label=f"{n:,} agents: sessions")
            c = r.get("churn")
            if c:
                ax.axvspan(c["from_s"], c["to_s"], color="orange", alpha=0.15)
        ax.set_xlabel("s since the simulator started (shaded: churn)")
        ax.set_ylabel("server RSS (MiB)")
        ax2.set_ylabel("open sessions")
        ax.set_title("Churn: server memory")
        ax.grid(alpha=0.3)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
        fig.tight_layout()
        p = os.path.join(a.out, "fleet-churn.png")
        fig.savefig(p, dpi=110)
        made.append(p)

    for p in made:
        print(f"plot-fleet: {p}")


if __name__ == "__main__":
    main()
