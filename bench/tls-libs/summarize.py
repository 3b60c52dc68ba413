#!/usr/bin/env python3
"""Medians of run.sh's result lines, as two Markdown tables (properties, then measurements)."""
import statistics
import sys
from collections import defaultdict


def fields(line):
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


runs = defaultdict(list)  # (lib, mode, tls) -> [{"server": ..., "client": ...}]
library, reload_method = {}, {}
key = None
with open(sys.argv[1]) as f:
    for line in f:
        line = line.rstrip("\n")
        if line.startswith("run "):
            r = fields(line)
            key = (r["lib"], r["mode"], r["tls"])
            runs[key].append({})
        elif line.startswith("client "):
            runs[key][-1]["client"] = fields(line)
        elif line.startswith("result "):
            runs[key][-1]["server"] = fields(line)
        elif line.startswith("library "):
            library[key[0]] = line.split(" ", 1)[1]
        elif line.startswith("reload "):
            reload_method[key[0]] = line.split(" ", 1)[1]

libs = list(dict.fromkeys(k[0] for k in runs))


def values(lib, mode, tls, field, side="server"):
    return [float(r[side][field]) for r in runs.get((lib, mode, tls), []) if side in r]


def median(lib, mode, tls, field, side="server"):
    v = values(lib, mode, tls, field, side)
    return statistics.median(v) if v else None


def spread(lib, mode, tls, field):
    """The median, with the smallest and largest run when there were several."""
    v = values(lib, mode, tls, field)
    if len(v) < 2:
        return num(median(lib, mode, tls, field))
    return f"{num(statistics.median(v))} ({num(min(v))}–{num(max(v))})"


def all_ok(lib, mode, tls, field):
    rs = [r for r in runs.get((lib, mode, tls), []) if "server" in r]
    if not rs:
        return "–"
    ok = [int(r["server"][field]) == int(r["server"]["n"]) for r in rs]
    return "yes" if all(ok) else ("no" if not any(ok) else "partly")


def versions(lib):
    seen = []
    for tls in ("1.3", "1.2"):
        for r in runs.get((lib, "full", tls), []):
            v = r.get("server", {}).get("versions", "")
            if v.split("x")[0] and v.split("x")[0] not in seen:
                seen.append(v.split("x")[0])
    return " + ".join(seen)


def reload_seen(lib):
    rs = [r["client"] for r in runs.get((lib, "full", "1.3"), []) if "client" in r]
    if not rs:
        return "–"
    c = rs[0]
    took = all(x["server_cn_before_reload"] != x["after"] and x["conn0_after_reload"] == "ok"
               for x in rs)
    return f"{'yes' if took else 'NO'} ({c['server_cn_before_reload']} → {c['after']})"


def num(value):
    return "–" if value is None else f"{value:,.0f}"


print("| library | versions negotiated | key exchange | CN/OU/O full | CN/OU/O resumed | ALPN h2 "
      "| resumed / N | ticket B | reload (server CN old → new) |")
print("|---|---|---|---|---|---|---:|---:|---|")
for lib in libs:
    resumed = median(lib, "resume", "1.3", "resumed")
    n = median(lib, "resume", "1.3", "n")
    groups = {r["client"].get("group", "?") for r in runs.get((lib, "full", "1.3"), [])
              if "client" in r}
    print(f"| {lib} ({library.get(lib, '?')}) | {versions(lib)} | {', '.join(sorted(groups))} "
          f"| {all_ok(lib, 'full', '1.3', 'identity_ok')} "
          f"| {all_ok(lib, 'resume', '1.3', 'identity_ok')} "
          f"| {all_ok(lib, 'full', '1.3', 'alpn_ok')} "
          f"| {num(resumed)} / {num(n)} "
          f"| {num(median(lib, 'resume', '1.3', 'ticket_B', 'client'))} "
          f"| {reload_seen(lib)} |")
print()
print("| library | full 1.3 CPU µs (min–max) | resumed 1.3 CPU µs | full 1.2 CPU µs "
      "| heap B/conn 1.3 | RSS B/conn 1.3 | heap B/conn resumed | heap B/conn 1.2 "
      "| RSS B/conn 1.2 | peak heap B in one 1.3 handshake |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for lib in libs:
    print(f"| {lib} | {spread(lib, 'full', '1.3', 'cpu_us')} "
          f"| {spread(lib, 'resume', '1.3', 'cpu_us')} "
          f"| {spread(lib, 'full', '1.2', 'cpu_us')} "
          f"| {num(median(lib, 'full', '1.3', 'heap_B'))} "
          f"| {num(median(lib, 'full', '1.3', 'rss_B'))} "
          f"| {num(median(lib, 'resume', '1.3', 'heap_B'))} "
          f"| {num(median(lib, 'full', '1.2', 'heap_B'))} "
          f"| {num(median(lib, 'full', '1.2', 'rss_B'))} "
          f"| {num(median(lib, 'full', '1.3', 'peak_B'))} |")
print()
for lib in libs:
    print(f"- {lib}: reload = {reload_method.get(lib, '?')}")
