#!/usr/bin/env python3
"""The fan-out benchmark's report (bench/fanout.sh): results.jsonl -> markdown.

    fanout_report.py RESULTS NGINX [REDIS_VERSION]

Medians over the repetitions of each cell (section, server, subscribers,
size, mode), per section (shm, redis, cross) a table per mode and one of
memory, and the verdict of each of issue 18's targets in every section: at
least 1.0x nchan's deliveries per second with a lower p99 (at a fixed rate,
where both get the same schedule: carrying it, nothing lost, with a lower
p99), and no more memory per idle subscriber than nchan. A verdict says when
the repetitions of ours and nchan overlap in the figure it compares (within
the spread). The environment variable BENCH_FANOUT_NOTE, if set, is printed
under the heading (for instance what else ran on the machine);
BENCH_FANOUT_RT=1 says the processes ran SCHED_FIFO.
"""

import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict

SECTIONS = {
    "shm": ("Channels in shared memory",
            "Our zone without `redis=`; nchan's memory store."),
    "redis": ("Channels in Redis",
              "One redis-server on CPU 0 with nginx, emptied before each measurement: our zone "
              "with `redis=redis://127.0.0.1:PORT`; nchan with `nchan_redis_pass` to an "
              "`upstream { nchan_redis_server ...; }` (its default, distributed storage)."),
    "cross": ("Across two servers through Redis",
              "Two nginx (one worker each, both on CPU 0) share the redis-server of the Redis "
              "section: the subscribers are on B, the messages are published over HTTP on A, so "
              "the latency is publish on A to receive on B. The memory is B's worker's."),
}


def load(path):
    cells = defaultdict(list)
    walls = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            section = r.get("section", "shm")
            if "wall_s" in r:
                walls[section] = r["wall_s"]
                continue
            cells[(section, r["server"], r["subscribers"], r["size"], r["mode"])].append(r)
    return cells, walls


def median(runs, key):
    vals = [r[key] for r in runs if not r.get("failed") and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def span(runs, key):
    vals = [r[key] for r in runs if not r.get("failed") and r.get(key) is not None]
    return (min(vals), max(vals)) if vals else None


def overlap(a, b):
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def fmt(v, spec="{:,.0f}"):
    return "failed" if v is None else spec.format(v)


def section_tables(cells, section, servers, verdicts):
    shapes = sorted({(k[2], k[3]) for k in cells if k[0] == section})
    for mode, title in (("fixed", "Fixed publish rate"), ("max", "Highest sustained rate (closed loop)")):
        print(f"### {title}\n")
        print("| subscribers | size | server | published | deliveries/s | p50 µs | p99 µs | lost |")
        print("|---|---|---|---|---|---|---|---|")
        for subs, size in shapes:
            for s in servers:
                runs = cells.get((section, s, subs, size, mode), [])
                print(f"| {subs:,} | {size} B | {s} | {fmt(median(runs, 'published'))} | "
                      f"{fmt(median(runs, 'deliveries_per_s'))} | {fmt(median(runs, 'p50_us'))} | "
                      f"{fmt(median(runs, 'p99_us'))} | {fmt(median(runs, 'lost'))} |")
            ours = cells.get((section, "ours", subs, size, mode), [])
            theirs = cells.get((section, "nchan", subs, size, mode), [])
            d_o, d_n = median(ours, "deliveries_per_s"), median(theirs, "deliveries_per_s")
            p_o, p_n = median(ours, "p99_us"), median(theirs, "p99_us")
            if None in (d_o, d_n, p_o, p_n) or d_n == 0:
                verdicts.append((f"{section}: {mode}, {subs:,} × {size} B", "no data", "not measured"))
                continue
            ratio = round(d_o / d_n, 2)
            if mode == "fixed":
                # Both get the same schedule: the throughput part is whether
                # ours carried it (every message published on time, give or
                # take the last one, and none lost). Deliveries per second in
                # the window count whole messages, 10,000 deliveries each at
                # 10,000 subscribers: about 5% apart by timing alone.
                target = (f"{section}: fixed, {subs:,} × {size} B: carries the rate as nchan does "
                          "(nothing lost), lower p99")
                pub_o, pub_n = median(ours, "published"), median(theirs, "published")
                lost = sum(r.get("lost", 0) for r in ours if not r.get("failed"))
                carried = pub_o is not None and pub_n is not None and pub_o >= pub_n - 1 and lost == 0
                ok = carried and p_o < p_n
                measured = (f"published {pub_o:,.0f} vs {pub_n:,.0f}, lost {lost}, "
                            f"deliveries/s {ratio:.2f}×, p99 {p_o:,.0f} vs {p_n:,.0f} µs")
                compared = (("p99_us", "p99"),)
            else:
                target = f"{section}: max, {subs:,} × {size} B: deliveries/s ≥ 1.0× nchan, lower p99"
                # Judged as printed (two decimals).
                ok = ratio >= 1.0 and p_o < p_n
                measured = f"{ratio:.2f}×, p99 {p_o:,.0f} vs {p_n:,.0f} µs"
                compared = (("deliveries_per_s", "deliveries/s"), ("p99_us", "p99"))
            spread = [name for key, name in compared if overlap(span(ours, key), span(theirs, key))]
            within = f" (within the spread: {', '.join(spread)})" if spread else ""
            verdicts.append((target, measured, ("met" if ok else "NOT met") + within))
        print()
    print("### Memory per idle subscriber\n")
    print("| subscribers | server | worker RSS before | idle | KiB per subscriber |")
    print("|---|---|---|---|---|")
    for subs in sorted({k[2] for k in cells if k[0] == section}):
        per = {}
        for s in servers:
            runs = [r for k, v in cells.items() if k[:3] == (section, s, subs) for r in v]
            per[s] = median(runs, "kib_per_subscriber")
            print(f"| {subs:,} | {s} | {fmt(median(runs, 'rss_kib_before'))} KiB | "
                  f"{fmt(median(runs, 'rss_kib_idle'))} KiB | {fmt(per[s], '{:.2f}')} |")
        if per.get("ours") is not None and per.get("nchan") is not None:
            verdicts.append((f"{section}: memory per idle subscriber at {subs:,} ≤ nchan's",
                             f"{per['ours']:.2f} vs {per['nchan']:.2f} KiB",
                             "met" if per["ours"] <= per["nchan"] else "NOT met"))
    print()


def main():
    results, nginx = sys.argv[1], sys.argv[2]
    redis = sys.argv[3] if len(sys.argv) > 3 else ""
    cells, walls = load(results)
    servers = sorted({k[1] for k in cells}, key=lambda s: s != "ours")
    sections = [s for s in SECTIONS if any(k[0] == s for k in cells)]
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    reps = max(len(v) for v in cells.values())
    print("# Channel fan-out: ngx_http_websocket_module vs nchan\n")
    uses_redis = any(s != "shm" for s in sections)
    rt = " (all SCHED_FIFO)" if os.environ.get("BENCH_FANOUT_RT") == "1" else ""
    print(f"{version}{', ' + redis if uses_redis and redis else ''}; one worker on CPU 0, "
          f"load generator on CPU 1{rt}; median of {reps} runs per cell. At a fixed rate both "
          "servers get the same schedule, so the throughput target there is that ours carries it "
          "(publishes as many messages as nchan, give or take the last, and loses none); at the "
          "highest rate a deliveries/s ratio is judged as printed (two decimals). \"Within the "
          "spread\": the repetitions of ours and nchan overlap in that figure.\n")
    note = os.environ.get("BENCH_FANOUT_NOTE")
    if note:
        print(f"{note}\n")
    verdicts = []
    for section in sections:
        title, what = SECTIONS[section]
        print(f"## {title}\n")
        print(f"{what}\n")
        section_tables(cells, section, servers, verdicts)
    print("## Targets\n")
    print("| target | measured | verdict |")
    print("|---|---|---|")
    for t, m, v in verdicts:
        print(f"| {t} | {m} | {v} |")
    if walls:
        print("\n## Wall time\n")
        print("| section | minutes |")
        print("|---|---:|")
        for s in sections:
            if s in walls:
                print(f"| {s} | {walls[s] / 60:.1f} |")


if __name__ == "__main__":
    main()
