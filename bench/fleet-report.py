#!/usr/bin/env python3
"""fleet-report.py: gathers bench/fleet.sh's runs (one dispatchd-agentsim --json report each)
into results.json, prints markdown tables, and with --update-benchmarks rewrites the part of
BENCHMARKS.md between <!-- fleet:begin --> and <!-- fleet:end -->."""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys


def load_runs(dirs):
    runs = {}
    for path in sorted(p for d in dirs for p in glob.glob(os.path.join(d, "*.json"))):
        name = os.path.basename(path)[:-5]
        if name in runs:  # the same scenario from another directory: label it with that run
            scen, server, n = name.rsplit("-", 2)
            label = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
            name = f"{scen}-{server} ({label})-{n}"
        try:
            with open(path) as f:
                runs[name] = json.load(f)
        except (OSError, ValueError) as e:
            print(f"fleet-report: {path}: {e}", file=sys.stderr)
    return runs


def key(name):
    scen, server, n = name.rsplit("-", 2)
    return scen, server, int(n)


def errs(r):
    e = r.get("errors", {})
    return ", ".join(f"{k} {v}" for k, v in sorted(e.items())) or "none"


def kib(kb):
    return f"{kb / 1024:.1f} MiB" if kb is not None and kb >= 0 else "—"


def ramp_cpu_ms(r):
    """Server CPU per session while the fleet connects (TLS handshake + registration): CPU from
    the first sample to the first with every agent in session, over the agents."""
    smp = [s for s in r.get("samples", []) if s.get("server_cpu_s", -1) >= 0]
    if not smp:
        return None
    for s in smp:
        if s["sessions"] >= r["agents"] and s["server_pid"] == smp[0]["server_pid"]:
            return 1000 * (s["server_cpu_s"] - smp[0]["server_cpu_s"]) / r["agents"]
    return None


def cpu_shares(r, t0, t1):
    """Share of a core the server and the simulator used between t0 and t1 (s since start)."""
    smp = [x for x in r.get("samples", []) if t0 <= x["t"] <= t1 + 1.01]
    if len(smp) < 2 or smp[-1]["t"] <= smp[0]["t"]:
        return "—"
    dt = smp[-1]["t"] - smp[0]["t"]
    srv = [x for x in smp if x.get("server_cpu_s", -1) >= 0 and x["server_pid"] == smp[-1]["server_pid"]]
    out = []
    # "waiting": share of the time the main thread sat on a run queue (schedstat): CPU it wanted
    # and did not get because the core was busy with other work.
    if len(srv) >= 2 and srv[-1]["t"] > srv[0]["t"]:
        sdt = srv[-1]["t"] - srv[0]["t"]
        txt = f"server {100 * (srv[-1]['server_cpu_s'] - srv[0]['server_cpu_s']) / sdt:.0f} %"
        if srv[0].get("server_run_delay_s", -1) >= 0:
            txt += f" (waiting {100 * (srv[-1]['server_run_delay_s'] - srv[0]['server_run_delay_s']) / sdt:.0f} %)"
        out.append(txt)
    if "sim_cpu_s" in smp[0]:
        txt = f"simulator {100 * (smp[-1]['sim_cpu_s'] - smp[0]['sim_cpu_s']) / dt:.0f} %"
        if smp[0].get("sim_run_delay_s", -1) >= 0:
            txt += f" (waiting {100 * (smp[-1]['sim_run_delay_s'] - smp[0]['sim_run_delay_s']) / dt:.0f} %)"
        out.append(txt)
    return ", ".join(out) or "—"


def tables(runs):
    out = []
    by = {}
    for name, r in runs.items():
        scen, server, n = key(name)
        by.setdefault(scen, []).append((n, server, r))
    for v in by.values():
        v.sort(key=lambda t: (t[0], t[1]))

    if "steady" in by:
        out += ["#### Steady fleet (each agent its own mTLS connection and certificate, idle Session, "
                "Heartbeat every ~5 s)", "",
                "| server | agents | agents with a session | sessions/s to full fleet | registration p50 / p99 | "
                "heartbeat RTT p50 / p99 (steady window) | server RSS start → end | **RSS per agent** | steady window | "
                "**server CPU per heartbeat** | CPU in the steady window (share of a core) | server CPU per "
                "session while connecting (share of a core) | errors |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        per = {}
        for n, server, r in by["steady"]:
            s = r.get("server", {})
            st = s.get("steady", {})
            win = st.get("to_s", 0) - st.get("from_s", 0)
            # RSS growth per agent holding a session at the end (recomputed from the samples).
            smp = [x for x in r.get("samples", []) if x.get("server_rss_kb", -1) >= 0]
            holding = r["agents"] - r.get("agents_without_session_at_end", 0)
            if smp and holding > 0:
                s = dict(s, rss_growth_per_agent_kib=(smp[-1]["server_rss_kb"] - smp[0]["server_rss_kb"]) / holding)
            per[(n, server)] = s
            hb = r.get("heartbeat_rtt_steady_ms") or r["heartbeat_rtt_ms"]
            rc = ramp_cpu_ms(r)
            ramp = f"{rc:.2f} ms" if rc is not None else "—"
            if r.get("time_to_all_sessions_s", -1) > 0:
                ramp += f" ({cpu_shares(r, 0, r['time_to_all_sessions_s'])})"
            held = "" if holding == n else f" (**{holding:,} at the end**)"
            rate = f"{r['sessions_per_second']:.0f}" if r["sessions_per_second"] > 0 else "never whole"
            cphb = st.get("cpu_per_heartbeat_us", -1)
            cphb = f"**{cphb:.0f} µs**" if cphb >= 0 else "—"
            if "heartbeat_rtt_steady_ms" not in r:
                hb_note = " (whole run)"
            elif win <= 0:
                hb, hb_note = None, ""
            elif hb is r["heartbeat_rtt_ms"]:
                hb_note = ""
            else:
                hb_note = ""
            if win > 0:
                core = cpu_shares(r, st["from_s"], st["to_s"] - 1.01)
            else:
                core = "—"
            out.append(
                f"| {server} | {n:,} | {r['agents_with_session']:,}{held} | {rate} | "
                f"{r['registration_ms']['p50']:.0f} / {r['registration_ms']['p99']:.0f} ms | "
                + (f"{hb['p50']:.2f} / {hb['p99']:.1f} ms{hb_note} | " if hb else "— | ")
                + f"{kib(s.get('rss_start_kb'))} → {kib(s.get('rss_end_kb'))} | "
                + (f"**{s.get('rss_growth_per_agent_kib', 0):.1f} KiB** | " if holding == n else
                   f"{s.get('rss_growth_per_agent_kib', 0):.0f} KiB per session held (fleet never whole) | ")
                + f"{win:.0f} s, "
                f"{st.get('heartbeats', 0):,} heartbeats | {cphb} | "
                f"{core} | {ramp} | {errs(r)} |")
        ratios = []
        for (n, server), s in sorted(per.items()):
            ref = per.get((n, "swarmref"))
            if server == "dispatchd" and ref:
                a, b = s.get("rss_growth_per_agent_kib", 0), ref.get("rss_growth_per_agent_kib", 0)
                ca = s.get("steady", {}).get("cpu_per_heartbeat_us", 0)
                cb = ref.get("steady", {}).get("cpu_per_heartbeat_us", 0)
                if a > 0 and ca > 0 and cb > 0:
                    ratios.append(f"{n:,} agents: swarmref / dispatchd = {b / a:.1f}× RSS per agent, "
                                  f"{cb / ca:.1f}× CPU per heartbeat")
                elif a > 0:
                    ratios.append(f"{n:,} agents: swarmref never held the whole fleet (no steady window)")
        if ratios:
            out += ["", "Ratios: " + "; ".join(ratios) + "."]
        out.append("")

    if "herd" in by:
        out += ["#### Thundering herd (SIGTERM dispatchd under the fleet, start it again on the same "
                "address and --state-dir)", "",
                "| agents | all back after | per-agent reconnect p50 / p99 / max | reconnects | "
                "errors meanwhile (by code) | agents without a session at the end | CPU meanwhile (share of a core) |",
                "|---|---|---|---|---|---|---|"]
        for n, server, r in by["herd"]:
            h = r.get("restart")
            if not h:
                out.append(f"| {n:,} | no restart seen | | | {errs(r)} | |")
                continue
            back = f"{h['all_back_after_s']:.1f} s" if h["all_back_after_s"] >= 0 else "**never**"
            e = ", ".join(f"{k} {v}" for k, v in sorted(h["errors"].items())) or "none"
            out.append(f"| {n:,} | {back} | {h['reconnect_p50_ms']:.0f} / {h['reconnect_p99_ms']:.0f} / "
                       f"{h['reconnect_max_ms']:.0f} ms | {h['reconnects']:,} | {e} | "
                       f"{r.get('agents_without_session_at_end', 0)} | "
                       f"{cpu_shares(r, h['lost_at_s'], h['lost_at_s'] + max(h['all_back_after_s'], 0))} |")
        out.append("")

    if "fanout" in by:
        out += ["#### Fan-out (one `dispatchctl managers set`; latency from just before the call until "
                "each agent's first SessionMessage with the new list)", "",
                "| agents | agents that saw the new list | p50 | p99 | max |", "|---|---|---|---|---|"]
        for n, server, r in by["fanout"]:
            lists = r.get("fanout", {}).get("lists", [])
            if not lists:
                out.append(f"| {n:,} | 0 | | | |")
                continue
            l = lists[0]
            out.append(f"| {n:,} | {l['agents']:,} | {l['p50_ms']:.1f} ms | {l['p99_ms']:.1f} ms | "
                       f"{l['max_ms']:.1f} ms |")
        out.append("")

    if "churn" in by:
        out += ["#### Churn (agents dropped abruptly, RST, and reconnecting with the agent's backoff)", "",
                "| agents | churn | drops | never-dropped agents: heartbeat errors / NotFound / sessions lost | "
                "server RSS before → max during → 15 s after | errors |",
                "|---|---|---|---|---|---|"]
        for n, server, r in by["churn"]:
            c = r.get("churn")
            if not c:
                out.append(f"| {n:,} | did not start | | | | {errs(r)} |")
                continue
            out.append(f"| {n:,} | {c['pct_per_s']:g} %/s for {c['to_s'] - c['from_s']:.0f} s | "
                       f"{c['drops']:,} | {c['healthy_heartbeat_errors']} / {c['healthy_not_registered']} / "
                       f"{c['healthy_sessions_lost']} | {kib(c['server_rss_before_kb'])} → "
                       f"{kib(c['server_rss_during_max_kb'])} → {kib(c['server_rss_after_kb'])} | {errs(r)} |")
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True, nargs="+", help="one or more runs directories")
    ap.add_argument("--out", required=True)
    ap.add_argument("--skipped", default="")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--update-benchmarks", metavar="FILE")
    a = ap.parse_args()
    runs = load_runs(a.runs)
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"date": date, "commit": commit, "quick": a.quick, "nproc": os.cpu_count(),
            "machine": platform.machine(), "skipped_sizes": a.skipped.split()}
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in runs.items()}
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "runs": slim}, f, indent=1)
    md = tables(runs)
    head = f"Measured {date} at commit {commit} ({os.cpu_count()} cores; server and simulator pinned to different cores)"
    if a.quick:
        head += ", `--quick`"
    head += "."
    if a.skipped.split():
        head += (f" Not run: {', '.join(a.skipped.split())} agents — this machine's RLIMIT_NOFILE hard limit "
                 "keeps one process under that many connections.")
    print(head + "\n\n" + md)
    if a.update_benchmarks:
        with open(a.update_benchmarks) as f:
            text = f.read()
        begin, end = "<!-- fleet:begin -->", "<!-- fleet:end -->"
        block = f"{begin}\n{head}\n\n{md}\n{end}"
        if begin in text and end in text:
            text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n## Fleet (bench/fleet.sh)\n\n" + block + "\n"
        with open(a.update_benchmarks, "w") as f:
            f.write(text)
        print(f"fleet-report: updated {a.update_benchmarks}", file=sys.stderr)


if __name__ == "__main__":
    main()
