#!/usr/bin/env python3
"""The fan-out benchmark's report (bench/fanout.sh): results.jsonl -> markdown.

Medians over the repetitions of each cell (server, subscribers, size, mode),
a table per mode, and the verdict of each of issue 18's targets: at least
1.0x nchan's deliveries per second with a lower p99, and no more memory per
idle subscriber than nchan.
"""

import json
import statistics
import subprocess
import sys
from collections import defaultdict


def load(path):
    cells = defaultdict(list)
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            cells[(r["server"], r["subscribers"], r["size"], r["mode"])].append(r)
    return cells


def median(runs, key):
    vals = [r[key] for r in runs if not r.get("failed") and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, spec="{:,.0f}"):
    return "failed" if v is None else spec.format(v)


def main():
    results, nginx = sys.argv[1], sys.argv[2]
    cells = load(results)
    servers = sorted({k[0] for k in cells}, key=lambda s: s != "ours")
    shapes = sorted({(k[1], k[2]) for k in cells})
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    reps = max(len(v) for v in cells.values())
    print("# Channel fan-out: ngx_http_websocket_module vs nchan\n")
    print(f"{version}, one worker on CPU 0, load generator on CPU 1; "
          f"median of {reps} runs per cell.\n")
    verdicts = []
    for mode, title in (("fixed", "Fixed publish rate"), ("max", "Highest sustained rate (closed loop)")):
        print(f"## {title}\n")
        print("| subscribers | size | server | published | deliveries/s | p50 µs | p99 µs | lost |")
        print("|---|---|---|---|---|---|---|---|")
        for subs, size in shapes:
            for s in servers:
                runs = cells.get((s, subs, size, mode), [])
                print(f"| {subs:,} | {size} B | {s} | {fmt(median(runs, 'published'))} | "
                      f"{fmt(median(runs, 'deliveries_per_s'))} | {fmt(median(runs, 'p50_us'))} | "
                      f"{fmt(median(runs, 'p99_us'))} | {fmt(median(runs, 'lost'))} |")
            ours = cells.get(("ours", subs, size, mode), [])
            theirs = cells.get(("nchan", subs, size, mode), [])
            d_o, d_n = median(ours, "deliveries_per_s"), median(theirs, "deliveries_per_s")
            p_o, p_n = median(ours, "p99_us"), median(theirs, "p99_us")
            if None in (d_o, d_n, p_o, p_n) or d_n == 0:
                verdicts.append((f"{mode}, {subs:,} × {size} B", "no data", "not measured"))
                continue
            ratio = d_o / d_n
            ok = ratio >= 1.0 and p_o < p_n
            verdicts.append((f"{mode}, {subs:,} × {size} B: deliveries/s ≥ 1.0× nchan, lower p99",
                             f"{ratio:.2f}×, p99 {p_o:,.0f} vs {p_n:,.0f} µs",
                             "met" if ok else "NOT met"))
        print()
    print("## Memory per idle subscriber\n")
    print("| subscribers | server | worker RSS before | idle | KiB per subscriber |")
    print("|---|---|---|---|---|")
    for subs in sorted({k[1] for k in cells}):
        per = {}
        for s in servers:
            runs = [r for k, v in cells.items() if k[0] == s and k[1] == subs for r in v]
            per[s] = median(runs, "kib_per_subscriber")
            print(f"| {subs:,} | {s} | {fmt(median(runs, 'rss_kib_before'))} KiB | "
                  f"{fmt(median(runs, 'rss_kib_idle'))} KiB | {fmt(per[s], '{:.2f}')} |")
        if per.get("ours") is not None and per.get("nchan") is not None:
            verdicts.append((f"memory per idle subscriber at {subs:,} ≤ nchan's",
                             f"{per['ours']:.2f} vs {per['nchan']:.2f} KiB",
                             "met" if per["ours"] <= per["nchan"] else "NOT met"))
    print("\n## Targets\n")
    print("| target | measured | verdict |")
    print("|---|---|---|")
    for t, m, v in verdicts:
        print(f"| {t} | {m} | {v} |")


if __name__ == "__main__":
    main()
