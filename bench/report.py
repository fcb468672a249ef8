#!/usr/bin/env python3
"""Turns bench/run.sh's results.jsonl into the markdown report.

Prints the main table on stdout and writes the whole report to --out.
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
from collections import defaultdict

TARGETS = ["echo", "pass", "tunnel", "rust-echo", "fws-echo"]
# The standalone echo servers that websocket_echo is measured against.
REFERENCES = ["rust-echo", "fws-echo"]
LABEL = {
    "echo": "echo",
    "pass": "pass→echo",
    "tunnel": "tunnel→echo",
    "rust-echo": "rust-echo",
    "fws-echo": "fastwebsockets",
    "passpool": "pass→echo, keepalive 16",
    "trivial": "trivial echo",
}


def human_size(n):
    n = int(n)
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def fmt_num(x, digits=0):
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def fmt_us(x):
    if x is None:
        return "–"
    if x >= 10000:
        return f"{x / 1000:,.1f} ms"
    return f"{x:,.0f} µs"


def ratio(a, b):
    if a is None or not b:
        return "–"
    return f"{a / b:.2f}×"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def cpu_busy(res, i):
    busy = (res.get("cpu") or {}).get("busy") or []
    return busy[i] if i < len(busy) else None


def cpu_cell(a):
    """CPU 0 (server) / CPU 1 (load generator) busy, with flags"""
    if a.get("busy0") is None:
        return "–"
    text = f"{a['busy0'] * 100:.0f}/{a['busy1'] * 100:.0f}%"
    if a["busy1"] >= 0.95 and a["busy0"] < 0.90:
        text += " †"
    if (a.get("other") or 0) >= 0.15:
        text += " ‡"
    return text


def table_head(header):
    """A markdown table's header line and its separator: the first column left-aligned, the others right-aligned"""
    return [header, "|---|" + "---:|" * (header.count("|") - 2)]


def section(title, *paragraphs):
    """A heading and its paragraphs, each followed by an empty line"""
    lines = [title, ""]
    for p in paragraphs:
        lines += [p, ""]
    return lines


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append({"kind": "garbled", "line": line})
    return rows


def rep_stats(results):
    """What every throughput table shows of a cell's repetitions: medians over those that did not fail"""
    ok = [x for x in results if not x.get("failed")]
    return ok, {
        "reps": len(results),
        "failed": len(results) - len(ok),
        "rate": median([x.get("msgs_per_sec") for x in ok]),
        "rates": [x.get("msgs_per_sec") for x in ok],
        "p50": median([x.get("p50_us") for x in ok]),
        "p99": median([x.get("p99_us") for x in ok]),
        "errors": sum(x.get("errors", 0) for x in ok),
        "busy0": median([cpu_busy(x, 0) for x in ok]),
        "busy1": median([cpu_busy(x, 1) for x in ok]),
        "other": median([(x.get("cpu") or {}).get("other") for x in ok]),
    }


def aggregate(rows, kind):
    """(target, size, conns, window) -> medians over repetitions"""
    groups = defaultdict(list)
    for r in rows:
        if r.get("kind") != kind:
            continue
        res = r["result"]
        if res.get("failed"):
            key = (r["target"], None, None, None)
        else:
            key = (r["target"], res["size"], res["connections"], res["window"])
        groups[key].append(res)
    out = {}
    for key, results in groups.items():
        ok, out[key] = rep_stats(results)
        out[key].update({
            "mbps": median([x.get("mb_per_sec") for x in ok]),
            "p999": median([x.get("p999_us") for x in ok]),
            "silent": sum(x.get("silent_connections", 0) for x in ok),
        })
    return out


def throughput_table(agg, skipped, window_note):
    cells = sorted({(k[1], k[2], k[3]) for k in agg if k[1] is not None})
    for s, c in skipped:
        cells.append((s, c, None))
    cells.sort(key=lambda x: (x[0], x[1]))
    lines = table_head(
        "| target | size | conns | msgs/s | MB/s | p50 | p99 | vs tunnel | vs rust-echo | vs fastwebsockets | errors | CPU busy srv/gen |"
    )
    for size, conns, window in cells:
        if window is None:
            lines.append(
                f"| *all* | {human_size(size)} | {conns} | skipped: {human_size(size * conns)} in flight "
                f"per direction would not fit the time and memory budget | | | | | | | | |"
            )
            continue
        tun = agg.get(("tunnel", size, conns, window), {}).get("rate")
        rust = agg.get(("rust-echo", size, conns, window), {}).get("rate")
        fws = agg.get(("fws-echo", size, conns, window), {}).get("rate")
        for t in TARGETS:
            a = agg.get((t, size, conns, window))
            if not a:
                continue
            err = str(a["errors"])
            if a["failed"]:
                err += f" ({a['failed']} runs failed)"
            if a["silent"]:
                err += f" ({a['silent']} silent conns)"
            lines.append(
                f"| {LABEL[t]} | {human_size(size)} | {conns} | {fmt_num(a['rate'])} | "
                f"{fmt_num(a['mbps'], 1)} | {fmt_us(a['p50'])} | {fmt_us(a['p99'])} | "
                f"{'' if t == 'tunnel' else ratio(a['rate'], tun)} | "
                f"{'' if t == 'rust-echo' else ratio(a['rate'], rust)} | "
                f"{'' if t == 'fws-echo' else ratio(a['rate'], fws)} | {err} | {cpu_cell(a)} |"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------ callgrind

MALLOC = {
    "malloc", "__libc_malloc", "calloc", "__libc_calloc", "realloc", "__libc_realloc",
    "posix_memalign", "__posix_memalign", "memalign", "__libc_memalign", "aligned_alloc",
}
POOL = {"ngx_palloc", "ngx_pnalloc", "ngx_pcalloc", "ngx_pmemalign"}


def callgrind_parse(path):
    """total Ir, and call counts to heap and nginx pool allocators"""
    names = {}
    total = None
    cfn = None
    heap = pool = 0
    comp = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = comp.match(line.rstrip("\n"))
                if m:
                    ident, name = m.group(1), m.group(2)
                    if name is not None:
                        names[ident] = name
                    name = names.get(ident, "")
                else:
                    name = line.split("=", 1)[1].strip()
                if line.startswith("cfn="):
                    cfn = name
            elif line.startswith("calls="):
                n = int(line[6:].split()[0])
                if cfn in MALLOC:
                    heap += n
                elif cfn in POOL:
                    pool += n
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    return total, heap, pool


def callgrind_self_costs(path, key):
    """self cost (callgrind_annotate) summed by key(function, object file name)"""
    try:
        out = subprocess.run(
            ["callgrind_annotate", "--auto=no", "--threshold=100", path],
            capture_output=True, text=True, check=True,
        ).stdout
    except Exception:
        return {}
    costs = {}
    pat = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)(?:\s+\[([^\]]*)\])?$")
    for line in out.splitlines():
        m = pat.match(line)
        if not m or "PROGRAM TOTALS" in line or ":" not in m.group(2):
            continue
        k = key(m.group(2).split(":", 1)[1].strip(), (m.group(3) or "?").rsplit("/", 1)[-1])
        costs[k] = costs.get(k, 0) + int(m.group(1).replace(",", ""))
    return costs


def callgrind_functions(path):
    """self cost by function"""
    return callgrind_self_costs(path, lambda fn, obj: fn)


def callgrind_delta(runs):
    """Two callgrind runs ({messages: row}) with different message counts: (smaller run, larger run,
    messages between them, (instructions, heap allocations, pool allocations) per message), or None
    when a run failed"""
    small, large = sorted(runs)
    a, b = runs[small], runs[large]
    try:
        ta, ha, pa = callgrind_parse(a["file"])
        tb, hb, pb = callgrind_parse(b["file"])
        d = b["result"]["total"] - a["result"]["total"]
    except (OSError, KeyError, TypeError):
        return None
    if ta is None or tb is None or d <= 0:
        return None
    return a, b, d, ((tb - ta) / d, max(0.0, (hb - ha) / d), max(0.0, (pb - pa) / d))


def perf_line(r, label):
    """A perf stat row as a list item: instructions per message"""
    try:
        ins = int(r["instructions"])
        return f"- {label}: {ins / max(1, r['result']['total']):,.0f} instructions / message (perf stat)"
    except (ValueError, KeyError):
        return f"- {label}: perf stat failed"


def idle_count(n, round1):
    """N, and how many opened and stayed open when not all N did"""
    opened = (round1.get("ready_line") or {}).get("open", "?")
    still = (round1.get("done_line") or {}).get("still_open", "?")
    return f"{n}" if opened == n and still == n else f"{n} (opened {opened}, still open after hold {still})"


def short_fn(name, width=90):
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    return name if len(name) <= width else name[: width - 1] + "…"


def cpu_section(rows):
    runs = defaultdict(dict)
    for r in rows:
        if r.get("kind") == "callgrind":
            runs[r["target"]][r["m"]] = r
    if not runs:
        return None, {}
    lines = [
        "Method: valgrind --tool=callgrind on the server process (nginx with `master_process off; daemon off;`), "
        "64 connections × M ping-pong messages of 1 KiB from the load generator; two runs with different M, "
        "and the difference of instructions (Ir) divided by the difference of echoed messages, so that start-up, "
        "handshakes and shutdown cancel out. Callgrind counts user-space instructions only: the kernel's work in "
        "recv/send/epoll_wait is not in these figures. pass and tunnel run their upstream echo server in the same process, so "
        "their figure includes the echo backend; \"alone\" subtracts the echo figure.",
        "",
        *table_head("| server | instructions / message | heap allocations / message | nginx pool allocations / message |"),
    ]
    per_msg = {}
    profiles = {}
    for t in TARGETS:
        if t not in runs or len(runs[t]) < 2:
            continue
        delta = callgrind_delta(runs[t])
        if delta is None:
            lines.append(f"| {LABEL[t]} | run failed | | |")
            continue
        a, b, d, (per_msg[t], heap, pool) = delta
        cpu_section.heap_per_msg = getattr(cpu_section, "heap_per_msg", {})
        cpu_section.heap_per_msg[t] = heap
        lines.append(f"| {LABEL[t]} | {per_msg[t]:,.0f} | {heap:.2f} | {pool:.2f} |")
        fa, fb = callgrind_functions(a["file"]), callgrind_functions(b["file"])
        delta = {k: (fb.get(k, 0) - fa.get(k, 0)) / d for k in fb}
        profiles[t] = sorted(delta.items(), key=lambda kv: -kv[1])[:12]
    for t in ["pass", "tunnel"]:
        if t in per_msg and "echo" in per_msg:
            lines.append(f"| {LABEL[t].split('→')[0]} alone (minus echo) | {per_msg[t] - per_msg['echo']:,.0f} | | |")
    cpu_section.per_msg = per_msg
    return "\n".join(lines), profiles


# ------------------------------------------------------------------ targets


# ------------------------------------------------------------------ capped


def capped_setup(rows):
    """The capped section's setup row, and the reason it was skipped (or None)"""
    setup = next((r for r in rows if r.get("kind") == "capped-setup"), None)
    skipped = next((r["reason"] for r in rows if r.get("kind") == "capped-skipped"), None)
    return setup, skipped


def capped_aggregate(rows):
    """(target, size, conns, window) -> medians, with the server's CPU time per message"""
    agg = aggregate(rows, "capped")
    for key, a in agg.items():
        ok = [r["result"] for r in rows if r.get("kind") == "capped" and r["target"] == key[0]
              and not r["result"].get("failed") and (r["result"].get("size"), r["result"].get("connections"),
                                                     r["result"].get("window")) == key[1:]]
        srv = [((x.get("cpu") or {}).get("server"), x.get("msgs_per_sec")) for x in ok]
        a["cpu_us"] = median([c / m * 1e6 for c, m in srv if c is not None and m])
        a["srv"] = median([c for c, _ in srv])
        a["gen"] = median([(x.get("cpu") or {}).get("loadgen") for x in ok])
    return agg


def by_size_window(agg, t, size, w):
    """A target's cell at a size and window, whatever its connection count (the capped section takes
    fewer than 64 connections where 64 would put too much in flight)"""
    return next((a for k, a in agg.items() if k[0] == t and k[1] == size and k[3] == w), None)


def rate_spread(a):
    """(max − min) / median of a cell's msgs/s over its repetitions (0 with one repetition)"""
    return (max(a["rates"]) - min(a["rates"])) / a["rate"] if len(a["rates"]) > 1 and a["rate"] else 0


def capped_how(setup):
    """How the server was capped, in words"""
    cap, q, p = setup["cap"], setup["quota_us"], setup["period_us"]
    if setup["how"] == "rt":
        return (f"{cap} of one CPU: `cpu.rt_runtime_us` {q} per `cpu.rt_period_us` {p} in a cgroup v1 "
                "(RT group scheduling), the server SCHED_FIFO as in the rest of this run (`BENCH_RT=1`)")
    files = "`cpu.cfs_quota_us` {} per `cpu.cfs_period_us` {}".format(q, p) if setup["cgroup"] == "v1" \
        else f"`cpu.max` \"{q} {p}\""
    policy = ("the server SCHED_OTHER for this section (a CFS quota does not throttle SCHED_FIFO tasks), "
              "the load generator still SCHED_FIFO" if str(setup.get("rt")) == "1" else "the server SCHED_OTHER")
    return f"{cap} of one CPU: a CFS quota, {files} in a cgroup {setup['cgroup']}, {policy}"


def capped_section(rows, meta, agg):
    """The capped (server-bound) section: markdown lines"""
    setup, skipped = capped_setup(rows)
    if skipped:
        return section("## Server-bound: the server capped by a cgroup", f"Skipped: {skipped}.")
    if not agg or not setup:
        return []
    cap = float(setup["cap"])
    out = section(
        f"## Server-bound: echo, rust-echo and fastwebsockets with the server held to {setup['cap']} of one CPU",
        "Uncapped, the load generator's one core saturates before the echo servers at 64 connections with small "
        "messages (the † cells above), so those figures and their ratios measure the load generator and swing "
        "from run to run. "
        f"Here the server process (the nginx worker, rust-echo or fastwebsockets) runs in a cgroup that gives it "
        f"{capped_how(setup)}; "
        "the load generator, uncapped on CPU 1, has CPU to spare (*gen* well under 100%), so msgs/s is what each "
        "server does with the same CPU time, and *server CPU / msg* is its cost per message (user + system time "
        "of the process, loopback TCP processed in its context included). 64 connections (fewer where 64 "
        "would put more than `BENCH_CAP_MAX_INFLIGHT` in flight: *conns*), "
        f"{meta.get('reps')} repetitions interleaved, {meta.get('cap_warmup')} s warm-up then "
        f"{meta.get('duration')} s measured ({meta.get('duration_large', meta.get('duration'))} s with 64 KiB and "
        "1 MiB messages), medians. The kernel enforces the quota at scheduler ticks, so the server "
        "runs in bursts and is then held until its next period: latencies include such waits of several "
        "milliseconds, for all servers alike, and p99 compares how fast each works through its backlog rather "
        "than the uncapped latency. *process CPU srv/gen*: cores used by the server and the load generator; "
        f"**◊** marks a cell where the server used under 85% of its {setup['cap']} (the cap was not the limit) or "
        "the load generator used ≥ 0.85 cores (not clearly server-bound); ‡ as above (other processes lowered "
        "all servers' figures here too, even SCHED_FIFO ones that they cannot preempt, so such measurements "
        "are redone as elsewhere).",
    )
    out.extend(table_head(
        "| server | size | conns | window | msgs/s | vs rust-echo | vs fastwebsockets | p50 | p99 | server CPU / msg | errors | process CPU srv/gen | CPU busy srv/gen |"
    ))
    for w in sorted({k[3] for k in agg if k[3] is not None}):
        for size in sorted({k[1] for k in agg if k[3] == w}):
            rust = (by_size_window(agg, "rust-echo", size, w) or {}).get("rate")
            fws = (by_size_window(agg, "fws-echo", size, w) or {}).get("rate")
            for t in TARGETS:
                conns = next((k[2] for k in agg if k[0] == t and k[1] == size and k[3] == w), None)
                a = agg.get((t, size, conns, w))
                if not a:
                    continue
                err = str(a["errors"]) + (f" ({a['failed']} runs failed)" if a["failed"] else "")
                if a["silent"]:
                    err += f" ({a['silent']} silent conns)"
                mark = " ◊" if (a["srv"] is not None and a["srv"] < 0.85 * cap) or (a["gen"] or 0) >= 0.85 else ""
                out.append(
                    f"| {LABEL[t]} | {human_size(size)} | {conns} | {w} | {fmt_num(a['rate'])} | "
                    f"{'' if t == 'rust-echo' else ratio(a['rate'], rust)} | "
                    f"{'' if t == 'fws-echo' else ratio(a['rate'], fws)} | {fmt_us(a['p50'])} | {fmt_us(a['p99'])} | "
                    f"{fmt_num(a['cpu_us'], 2)} µs | {err} | {fmt_num(a['srv'], 2)}/{fmt_num(a['gen'], 2)}{mark} | "
                    f"{cpu_cell(a)} |"
                )
    spread = [(k, (max(a["rates"]) - min(a["rates"])) / a["rate"]) for k, a in sorted(agg.items(), key=lambda kv: (kv[0][3] or 0, kv[0][1] or 0))
              if k[1] is not None and len(a["rates"]) > 1 and a["rate"]]
    if spread:
        out.append("")
        out.append(
            "Spread (max − min) / median of msgs/s over the repetitions: "
            + ", ".join(f"{LABEL[k[0]]} {human_size(k[1])} w{k[3]} {v * 100:.0f}%" for k, v in spread)
            + ". A ratio closer to 1 than that does not tell the servers apart."
        )
    out.append("")
    return out


ECHO_TARGET_SIZES = (16, 1024, 65536, 1048576)


def echo_verdict(cells):
    """websocket_echo against the faster of the references in one set of cells ({target: cell}): None
    without echo or a reference, else (ratio, the faster reference, its cell, the other references'
    text, met, the larger repetition spread of echo and that reference)"""
    e = cells.get("echo")
    refs = [(t, cells[t]) for t in REFERENCES if cells.get(t) and cells[t]["rate"]]
    if not e or not e["rate"] or not refs:
        return None
    best, b = max(refs, key=lambda tr: tr[1]["rate"])
    r = e["rate"] / b["rate"]
    others = "; ".join(f"{LABEL[t]} {fmt_num(a['rate'])}, echo {e['rate'] / a['rate']:.2f}× that"
                       for t, a in refs if t != best)
    return r, best, b, others, r >= 1.0, max(rate_spread(e), rate_spread(b))


def targets_summary(rows, matrix, pipe, window, capped=None):
    """The issues' targets, measured (W = window of the main table); websocket_echo's verdict from the
    capped (server-bound) figures where there are any."""
    out = ["## The targets (issue 20), as measured here", ""]
    capped = capped or {}
    setup, cap_skipped = capped_setup(rows)

    def cell(agg, t, size, conns, w):
        return agg.get((t, size, conns, int(w)))

    def flag(cells):
        return " (load generator saturated †)" if any(
            a and a["busy1"] is not None and a["busy1"] >= 0.95 and a["busy0"] < 0.90 for a in cells) else ""

    lines = []
    cap_name = f"capped at {setup['cap']} CPU" if setup else ""
    pass_cells = []
    for w in dict.fromkeys((int(window), 16)):
        agg = matrix if w == int(window) else pipe
        for (t, size, conns, cw), p in sorted(agg.items(), key=lambda kv: (kv[0][1] or 0, kv[0][2] or 0)):
            tun = agg.get(("tunnel", size, conns, cw))
            if t == "pass" and cw == w and p["rate"] and tun and tun["rate"]:
                pass_cells.append((size, conns, w, p["rate"] / tun["rate"], max(rate_spread(p), rate_spread(tun))))
    if pass_cells:
        missed = [c for c in pass_cells if c[3] < 1.0]
        lines.append(
            f"- websocket_pass ≥ 1.0× the byte tunnel in every cell: **{len(pass_cells) - len(missed)} of "
            f"{len(pass_cells)} met**; lowest {min(c[3] for c in pass_cells):.2f}×"
            + ("" if not missed else "; missed: " + ", ".join(
                f"{human_size(sz)} × {cn} window {w} {r:.2f}×{' (within the spread)' if abs(r - 1) < sp else ''}"
                for sz, cn, w, r, sp in missed))
        )
    per_msg = getattr(cpu_section, "per_msg", {})
    if {"pass", "tunnel", "echo"} <= per_msg.keys():
        pa, ta = per_msg["pass"] - per_msg["echo"], per_msg["tunnel"] - per_msg["echo"]
        if ta > 0:
            lines.append(
                f"- user-space instructions per relayed 1 KiB message ≤ 1.5× the tunnel's (callgrind, the echo "
                f"backend subtracted): pass **{pa:,.0f}** vs tunnel {ta:,.0f}, **{pa / ta:.2f}×**: "
                f"{'met' if pa / ta <= 1.5 else 'missed'}"
            )
    echo_lines = []
    for w in (1, 16):
        agg = matrix if w == int(window) else pipe if w == 16 else {}
        for size in ECHO_TARGET_SIZES:
            keys = ["echo", *REFERENCES]
            uncapped = echo_verdict({t: cell(agg, t, size, 64, w) for t in keys})
            capped_v = echo_verdict({t: by_size_window(capped, t, size, w) for t in keys})
            if capped_v:
                r, best, b, others, ok, sp = capped_v
                e = by_size_window(capped, "echo", size, w)
                conns = next((k[2] for k in capped if k[0] == "echo" and k[1] == size and k[3] == w), "?")
                line = (f"  - {human_size(size)} × {conns}, window {w}: **{r:.2f}×** {LABEL[best]} ({fmt_num(e['rate'])} vs "
                        f"{fmt_num(b['rate'])} msgs/s{'; ' + others if others else ''}), p99 {fmt_us(e['p99'])} vs "
                        f"{fmt_us(b['p99'])}: **{'met' if ok else 'missed'}**")
                if abs(r - 1) < sp:
                    line += f" (but within the repetitions' spread, {sp * 100:.0f}%)"
                if uncapped:
                    line += (f"; uncapped (64 conns) {uncapped[0]:.2f}× {LABEL[uncapped[1]]}"
                             f"{flag([agg.get(('echo', size, 64, w)), uncapped[2]])}")
                echo_lines.append(line)
            elif uncapped:
                r, best, b, others, ok, sp = uncapped
                why = f"capped section skipped: {cap_skipped}" if cap_skipped else "no capped figure"
                echo_lines.append(f"  - {human_size(size)} × 64, window {w}: uncapped **{r:.2f}×** {LABEL[best]}"
                             f"{' (' + others + ')' if others else ''}: {'met' if ok else 'missed'} ({why})"
                             f"{flag([agg.get(('echo', size, 64, w)), b])}")
    if echo_lines:
        lines.append("- websocket_echo ≥ 1.0× the faster of rust-echo and fastwebsockets, server-bound"
                     f"{' (' + cap_name + ')' if capped else ''}, msgs/s:")
        lines.extend(echo_lines)
    mem = {r["target"]: r for r in rows if r.get("kind") == "memory"}
    for target, limit, what in (("echo-log", 4, "with the access log on"), ("echo", 1.5, "with access_log off")):
        m = mem.get(target)
        if m and m.get("rounds"):
            per = (m["rounds"][0]["rss_open_kib"] - m["rss_before_kib"]) / m["n"]
            lines.append(
                f"- ≤ {limit:g} KiB worker RSS per idle echo session {what}: **{per:.2f} KiB** with {m['n']} "
                f"idle: {'met' if per <= limit else f'missed by {per - limit:.2f} KiB'}"
            )
    copies = {r["target"]: r for r in rows if r.get("kind") == "copies"}
    for target in ("echo", "pass"):
        c = copies.get(target)
        if c and c["messages"]:
            per_byte = c["copied"] / (c["messages"] * c["size"])
            # pass relays each byte twice (client to upstream, upstream back)
            legs = 2 if target == "pass" else 1
            lines.append(
                f"- a {human_size(c['size'])} message copied at most once in and once out: {target} copies "
                f"**{per_byte:.2f} bytes per byte echoed** ({legs * 2} allowed): "
                f"{'met' if per_byte <= legs * 2 + 0.05 else 'missed'}"
            )
    heap = getattr(cpu_section, "heap_per_msg", {})
    if "echo" in heap:
        lines.append(
            f"- no heap allocation per message in the steady state (callgrind, 1 KiB): echo "
            f"**{heap['echo']:.2f}**, pass→echo **{heap.get('pass', float('nan')):.2f}** malloc calls per message"
        )
    if not lines:
        return []
    out.extend(lines)
    out.append("")
    if capped:
        out.append(
            "The websocket_echo verdicts come from the server-bound figures (the server held to "
            f"{setup['cap']} of one CPU, see that section), because uncapped the load generator's one core "
            "saturates before the echo servers do with small messages, so the uncapped ratio measures the load "
            "generator, not the servers. Each names the faster of the two reference servers in that cell and "
            "the ratio to it."
        )
        out.append("")
    out.append(
        "A cell marked † measured the load generator, not the server: the server had CPU to spare. "
        "The CPU cost section below compares the servers' work per message independently of that."
    )
    out.append("")
    return out


# ------------------------------------------------------------------ compressed

DEFLATE = ["deflate-off", "deflate-on", "deflate-nct"]
DLABEL = {
    "deflate-off": "deflate off",
    "deflate-on": "deflate on",
    "deflate-nct": "deflate on, no context takeover",
}


def callgrind_objects(path):
    """self cost by object file, e.g. libz.so, memset/memcpy apart"""
    def key(fn, obj):
        if fn.startswith("__mem") or fn.startswith("__memset") or "memset" in fn or "memmove" in fn or "memcpy" in fn:
            return obj + " (memset/memcpy)"
        return obj
    return callgrind_self_costs(path, key)


def deflate_wire(res, way):
    """bytes of data frames on the wire per message, one way ("sent" or "recv")"""
    d = ((res.get("wire") or {}).get(way)) or {}
    return d["bytes"] / d["msgs"] if d.get("msgs") else None


def deflate_section(rows, meta):
    """The compressed (permessage-deflate) section: (markdown lines, summary lines)."""
    tput = [r for r in rows if r.get("kind") in ("deflate", "deflate-pipelined")]
    mem = [r for r in rows if r.get("kind") == "deflate-memory"]
    cg = defaultdict(dict)
    for r in rows:
        if r.get("kind") == "deflate-callgrind":
            cg[r["target"]][r["m"]] = r
    perf = [r for r in rows if r.get("kind") == "deflate-perf"]
    if not (tput or mem or cg or perf):
        return [], []
    out = ["## Compressed: permessage-deflate, 1 KiB JSON-like text × 64 connections", ""]
    out.append(
        "`websocket_echo` in three locations of the same nginx: `websocket_deflate off;` (the offer is "
        "declined), `websocket_deflate on;` (context takeover, the default), and `websocket_deflate on; "
        "websocket_deflate_context_takeover off;` (the server then answers with `server_no_context_takeover; "
        "client_no_context_takeover`). Level 1, window 15 and `websocket_deflate_min_length 64`: the defaults. "
        "The client is the load generator's second client, **yawc 0.5** (a Rust WebSocket library with RFC 7692 "
        "support; tokio-tungstenite has none), on the same current-thread tokio runtime, offering "
        "`permessage-deflate; client_max_window_bits=15` everywhere and compressing at level 1 itself (zlib-rs; "
        "its level 1 is a faster, weaker compressor than zlib's, so the client's messages are larger than the "
        "server's). Messages: 1 KiB of JSON-like text, an order event with ids, names, time stamps and line "
        "items, keys repeating and values varying per message (1,024 distinct bodies per connection in turn, "
        "so nothing repeats within a deflate window); zlib level 1 makes about 2× of one alone and about 3.7× "
        "with the context of the previous ones. Every echo is checked for order, length and content after "
        "inflating, and a tap on each TCP stream reads the frame headers both ways: it counts the bytes of data "
        "frames (headers included) and checks the RSV1 bit of every message the server sent (all compressed "
        "where deflate is on, none where it is off; a wrong one counts as an error)."
    )
    out.append("")
    summary = []

    # throughput
    agg = {}
    for kind, w in (("deflate", 1), ("deflate-pipelined", 16)):
        for t in DEFLATE:
            rs = [r["result"] for r in tput if r["kind"] == kind and r["target"] == t]
            if not rs:
                continue
            ok, agg[(t, w)] = rep_stats(rs)
            srv = [((x.get("cpu") or {}).get("server"), x.get("msgs_per_sec")) for x in ok]
            agg[(t, w)].update({
                "cpu_us": median([c / m * 1e6 for c, m in srv if c is not None and m]),
                "srv": median([(x.get("cpu") or {}).get("server") for x in ok]),
                "gen": median([(x.get("cpu") or {}).get("loadgen") for x in ok]),
                "sent": median([deflate_wire(x, "sent") for x in ok]),
                "recv": median([deflate_wire(x, "recv") for x in ok]),
                "size": (ok[0].get("size") if ok else 1024),
            })
    if agg:
        out.extend(section(
            "### Throughput",
            f"Ping-pong (window 1) and pipelined (window 16), {meta.get('reps')} repetitions interleaved, "
            f"{meta.get('warmup')} s warm-up then {meta.get('duration')} s measured, medians; server on CPU 0, "
            "load generator on CPU 1, as above. *server CPU / msg*: the worker's CPU time (user + system, from "
            "/proc) over the measurement divided by the messages echoed, so it holds whichever side was the "
            "limit. *wire B / msg*: bytes of data frames per message, frame header included (client frames "
            "also carry a 4-byte mask), client → server and server → client; *ratio* is 1,024 B over the "
            "server's bytes per message. *process CPU srv/gen*: cores used by the nginx worker and by the load "
            "generator (at most 0.95 each under `BENCH_RT=1`); whichever is near that was the limit. † and ‡ as in "
            "the tables above.",
        ))
        out.extend(table_head("| location | window | msgs/s | vs off | p50 | p99 | server CPU / msg | wire B / msg c→s | wire B / msg s→c | ratio s→c | errors | process CPU srv/gen | CPU busy srv/gen |"))
        for w in (1, 16):
            off = agg.get(("deflate-off", w), {}).get("rate")
            for t in DEFLATE:
                a = agg.get((t, w))
                if not a:
                    continue
                err = str(a["errors"]) + (f" ({a['failed']} runs failed)" if a["failed"] else "")
                rr = f"{a['size'] / a['recv']:.2f}×" if a["recv"] else "–"
                out.append(
                    f"| {DLABEL[t]} | {w} | {fmt_num(a['rate'])} | {'' if t == 'deflate-off' else ratio(a['rate'], off)} | "
                    f"{fmt_us(a['p50'])} | {fmt_us(a['p99'])} | {fmt_num(a['cpu_us'], 1)} µs | "
                    f"{fmt_num(a['sent'])} | {fmt_num(a['recv'])} | {rr} | {err} | "
                    f"{fmt_num(a['srv'], 2)}/{fmt_num(a['gen'], 2)} | {cpu_cell(a)} |"
                )
        spread = []
        for (t, w), a in agg.items():
            if len(a["rates"]) > 1 and a["rate"]:
                spread.append((f"{DLABEL[t]} w{w}", (max(a["rates"]) - min(a["rates"])) / a["rate"]))
        if spread:
            out.append("")
            out.append(
                "Spread (max − min) / median of msgs/s over the repetitions: "
                + ", ".join(f"{k} {v * 100:.0f}%" for k, v in spread) + "."
            )
        out.append("")
        for w, name in ((1, "ping-pong"), (16, "pipelined")):
            off, on, nct = (agg.get((t, w)) or {} for t in DEFLATE)
            if off.get("rate") and on.get("rate"):
                def limit(a):
                    s, g = a.get("srv") or 0, a.get("gen") or 0
                    return "server-bound" if s >= 0.9 and s >= g else "client-bound" if g >= 0.9 else "neither saturated"
                summary.append(
                    f"- msgs/s, 1 KiB JSON × 64, {name}: off **{fmt_num(off['rate'])}** ({limit(off)}), "
                    f"on **{fmt_num(on['rate'])}** ({ratio(on['rate'], off['rate'])} of off; {limit(on)}), "
                    f"no takeover **{fmt_num(nct.get('rate'))}** ({ratio(nct.get('rate'), off['rate'])}; {limit(nct)}); "
                    f"server CPU per message {fmt_num(off.get('cpu_us'), 1)} / {fmt_num(on.get('cpu_us'), 1)} / "
                    f"{fmt_num(nct.get('cpu_us'), 1)} µs"
                )
        on, nct = agg.get(("deflate-on", 1)) or {}, agg.get(("deflate-nct", 1)) or {}
        if on.get("recv") and nct.get("recv"):
            summary.append(
                f"- bytes on the wire per 1 KiB message, server → client: {fmt_num(on['recv'])} B with context "
                f"takeover (**{on['size'] / on['recv']:.2f}×**), {fmt_num(nct['recv'])} B without "
                f"(**{nct['size'] / nct['recv']:.2f}×**); client → server (yawc): {fmt_num(on['sent'])} B / "
                f"{fmt_num(nct['sent'])} B"
            )

    # CPU cost
    per_msg = {}
    split = {}
    if cg or perf:
        out.append("### CPU cost: instructions per echoed message")
        out.append("")
    if cg:
        out.append(
            "callgrind on the server, as in the CPU cost section: 64 connections × M ping-pong messages, two runs "
            "(M = 20 and 120), the difference of instructions over the difference of messages, so that start-up, "
            "handshakes and the lazy allocation of compression state on the first message cancel out. User space "
            "only. Note that valgrind counts every iteration of a `rep stos` as one instruction, so a memset of "
            "64 KiB counts 65,536 instructions although it takes the CPU about as long as a few thousand."
        )
        out.append("")
        out.extend(table_head("| location | instructions / message | vs off | of which zlib | of which memset/memcpy | heap allocations / message | nginx pool allocations / message |"))
        for t in DEFLATE:
            if len(cg.get(t, {})) < 2:
                continue
            delta = callgrind_delta(cg[t])
            if delta is None:
                out.append(f"| {DLABEL[t]} | run failed | | | | | |")
                continue
            a, b, d, (per_msg[t], heap, pool) = delta
            oa, ob = callgrind_objects(a["file"]), callgrind_objects(b["file"])
            dz = sum(ob.get(k, 0) - oa.get(k, 0) for k in ob if k.startswith("libz") and "mem" not in k) / d
            dm = sum(ob.get(k, 0) - oa.get(k, 0) for k in ob if "memset" in k) / d
            split[t] = (dz, dm)
            out.append(
                f"| {DLABEL[t]} | {per_msg[t]:,.0f} | "
                f"{'' if t == 'deflate-off' else ratio(per_msg[t], per_msg.get('deflate-off'))} | "
                f"{dz:,.0f} | {dm:,.0f} | {heap:.2f} | {pool:.2f} |"
            )
        out.append("")
        if "deflate-off" in per_msg and "deflate-on" in per_msg:
            def parts(t):
                z, m = split.get(t, (0, 0))
                return f"zlib {z:,.0f}, memset/memcpy {m:,.0f}"
            summary.append(
                "- instructions per message (callgrind): off **{:,.0f}**, on **{:,.0f}** ({}; {}), no takeover "
                "**{}** ({}; {})".format(
                    per_msg["deflate-off"], per_msg["deflate-on"],
                    ratio(per_msg["deflate-on"], per_msg["deflate-off"]), parts("deflate-on"),
                    f"{per_msg['deflate-nct']:,.0f}" if "deflate-nct" in per_msg else "–",
                    ratio(per_msg.get("deflate-nct"), per_msg["deflate-off"]), parts("deflate-nct"),
                )
            )
    for r in perf:
        out.append(perf_line(r, DLABEL[r["target"]]))
    if perf:
        out.append("")

    # memory
    if mem:
        out.extend(section(
            "### Memory: worker RSS per idle connection",
            "The memory section's method with a fresh nginx per location and N idle connections, each of "
            "which first had one 1 KiB JSON message echoed (compressed both ways where deflate is on: the "
            "module makes a connection's compression state on its first compressed message). Three rounds "
            "in the same worker: round 1 gives the growth per open connection; with deflate on, glibc's heap "
            "may not hand the freed zlib states back in the same shape, so round 2 can grow once without a "
            "leak; a leak keeps growing in round 3 (*growth from round 2 to 3*).",
        ))
        out.extend(table_head("| location | N | RSS at start | RSS with N open | **per open connection** | vs off | RSS with N open, rounds 2 / 3 | growth from round 2 to 3, per connection | RSS after close, rounds 1 / 2 / 3 |"))
        per = {}
        for r in mem:
            n = r["n"]
            rounds = r.get("rounds", [])
            if not rounds or not n:
                continue
            r1 = rounds[0]
            per[r["target"]] = (r1["rss_open_kib"] - r["rss_before_kib"]) / n
        for r in mem:
            n, t = r["n"], r["target"]
            rounds = r.get("rounds", [])
            if t not in per:
                continue
            r1 = rounds[0]
            note = idle_count(n, r1)
            wire = ((r1.get("ready_line") or {}).get("wire") or {}).get("recv") or {}
            if wire.get("msgs") is not None and wire.get("compressed") != (wire["msgs"] if t != "deflate-off" else 0):
                note += f" (RSV1 on {wire.get('compressed')} of {wire.get('msgs')} echoes)"
            opens = " / ".join(f"{x['rss_open_kib']:,}" for x in rounds[1:]) + " KiB" if len(rounds) > 1 else "–"
            growth = f"{(rounds[-1]['rss_open_kib'] - rounds[-2]['rss_open_kib']) / n:.2f} KiB" if len(rounds) > 2 else "–"
            afters = " / ".join(f"{x['rss_after_kib']:,}" for x in rounds) + " KiB"
            vs = "" if t == "deflate-off" or "deflate-off" not in per else f"+{per[t] - per['deflate-off']:.1f} KiB"
            out.append(
                f"| {DLABEL[t]} | {note} | {r['rss_before_kib']:,} KiB | {r1['rss_open_kib']:,} KiB | "
                f"**{per[t]:.2f} KiB** | {vs} | {opens} | {growth} | {afters} |"
            )
        out.append("")
        if per:
            summary.append(
                "- worker RSS per idle connection (after one compressed echo each, N = {}): off **{}**, on **{}**, "
                "no takeover **{}**".format(
                    mem[0]["n"],
                    *(f"{per[t]:.1f} KiB" if t in per else "–" for t in DEFLATE),
                )
            )
    return out, summary


# ------------------------------------------------------------------ main


def runtime_section(rows):
    """The wall time of each section of the run (run.sh's `section`), for the time budget"""
    secs = [r for r in rows if r.get("kind") == "section"]
    if not secs:
        return []
    total = sum(r["seconds"] for r in secs)
    doc = section(
        "## Run time by section",
        "Wall time of each part of this run (*start*: building, starting nginx, rust-echo and fastwebsockets; *cpu*: "
        "callgrind or perf stat), with the measurements redone because of other processes included.",
    )
    doc.extend(table_head("| section | wall time | share |"))
    for r in secs:
        doc.append(f"| {r['name']} | {r['seconds']:,.0f} s | {r['seconds'] / total * 100:.0f}% |" if total else f"| {r['name']} | – | |")
    doc.append(f"| *all* | {total // 60:.0f} min {total % 60:.0f} s | |")
    doc.append("")
    return doc


def anomalies(events):
    doc = ["## Anomalies", ""]
    if events:
        doc.append("Reported by the run (load generator errors, error-log lines at [warn] or above, worker restarts):")
        doc.append("")
        doc.append("```")
        doc.extend(events[:60])
        if len(events) > 60:
            doc.append(f"... {len(events) - 60} more lines in bench/run/events.txt")
        doc.append("```")
    else:
        doc.append("None: no load generator errors, no error-log lines at [warn] or above, no worker restarts.")
    doc.append("")
    return doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta", action="append", default=[])
    ap.add_argument("--only", choices=["deflate", "capped"], help="the report of a BENCH_ONLY run")
    args = ap.parse_args()
    meta = dict(m.split("=", 1) for m in args.meta)
    rows = load(args.results)
    try:
        events = [l.rstrip("\n") for l in open(args.events) if l.strip()]
    except OSError:
        events = []

    window = meta.get("window", "1")
    skipped = [(r["size"], r["conns"]) for r in rows if r.get("kind") == "skipped"]
    matrix = aggregate(rows, "matrix")
    main_table = throughput_table(matrix, skipped, window)

    rt = int(meta.get("runtime_s", "0"))
    doc = []
    doc.append(f"# Benchmark: ngx_http_websocket_module at {meta.get('rev', '?')}"
               + (" (with uncommitted changes in src/)" if meta.get("dirty", "0") != "0" else "")
               + {None: "", "deflate": ", compressed section only", "capped": ", capped section only"}[args.only])
    doc.append("")
    doc.append(f"Run {meta.get('started', '?')}, {rt // 60} min {rt % 60} s in all, by "
               + (f"`BENCH_ONLY={args.only} bench/run.sh`." if args.only else "`bench/run.sh`."))
    doc.append("")
    doc.append("## Machine")
    doc.append("")
    doc.append(f"- CPUs (nproc): {meta.get('nproc')}; model: {meta.get('cpu')}")
    doc.append(f"- kernel: {meta.get('kernel')}")
    doc.append(f"- nginx: {meta.get('nginx')} (the vendored build from `make`), one worker")
    doc.append(f"- open files limit: {meta.get('nofile')}; load average at the end: {meta.get('loadavg')}")
    doc.append(
        f"- measurements redone because other processes were busy meanwhile: {meta.get('retries', '0')} "
        "(each redone once, after waiting up to 4 s for a quiet machine; the redo is what counts)"
    )
    if meta.get("rt", "0") == "1":
        doc.append(
            "- nginx's worker, the load generator and the Rust echo servers ran SCHED_FIFO, priority 1 (`BENCH_RT=1`), so that "
            "other work on the machine could not delay their wakeups; the kernel's RT throttling "
            "(`sched_rt_runtime_us` 950000) caps each at 95% of a CPU, so server-bound figures are up to 5% below "
            "an idle machine's, for every target alike"
        )
    elif meta.get("nice", "0") != "0":
        doc.append(f"- nginx's worker, the load generator and the Rust echo servers ran at niceness {meta['nice']} (`BENCH_NICE`)")
    doc.append("")
    deflate_text, deflate_summary = deflate_section(rows, meta)
    capped = capped_aggregate(rows)
    capped_text = capped_section(rows, meta, capped)
    if args.only:
        # One section alone: its setup line, its text, the run times.
        if args.only == "capped":
            pinned = "rust-echo and fastwebsockets pinned to CPU 0; the load generator (`bench/loadgen`) pinned to CPU 1"
            body = targets_summary(rows, {}, {}, window, capped) + capped_text
            printed = capped_text
        else:
            pinned = "the load generator (`bench/loadgen`) pinned to CPU 1"
            summary = ["## Summary", "", *deflate_summary, ""] if deflate_summary else []
            body = summary + deflate_text
            printed = deflate_summary
        doc.append(
            "One nginx, `worker_processes 1`, worker pinned to CPU 0 (`worker_cpu_affinity 01`), `access_log off`; "
            f"{pinned}. Every other section of `bench/run.sh` was skipped."
        )
        doc.append("")
        doc.extend(body)
        doc.extend(runtime_section(rows))
        doc.extend(anomalies(events))
        with open(args.out, "w") as f:
            f.write("\n".join(doc))
        print("\n".join(printed))
        return 0
    doc.append("## Setup")
    doc.append("")
    doc.append(
        "One nginx, `worker_processes 1`, worker pinned to CPU 0 (`worker_cpu_affinity 01`), `access_log off`, "
        "`websocket_max_payload_len 2m`. The load generator (`bench/loadgen`, tokio-tungstenite client, "
        "current-thread runtime, masked frames) is pinned to CPU 1. Targets:\n\n"
        "- **echo**: `location /echo { websocket_echo; }`\n"
        "- **pass→echo**: `websocket_pass ws://127.0.0.1:PORT2/echo` to a second `server {}` with "
        "`websocket_echo` in the same nginx (so the one worker does both the relay and the echo)\n"
        "- **tunnel→echo**: nginx's byte tunnel, `proxy_pass http://127.0.0.1:PORT2` with "
        "`proxy_http_version 1.1` and the Upgrade/Connection headers, to the same echo server\n"
        "- **rust-echo**: `bench/loadgen/src/bin/rust-echo.rs`, tokio-tungstenite on a current-thread runtime, "
        "`StreamExt::forward` echo loop, pinned to CPU 0 (nginx idle meanwhile)\n"
        "- **fastwebsockets**: `bench/loadgen/src/bin/fws-echo.rs`, fastwebsockets 0.10 on a current-thread "
        "runtime as its `echo_server` example sets it up (hyper 1 upgrade, `FragmentCollector`, auto pong and "
        "close, one write per frame: `writev` above 1 KiB), pinned to CPU 0 (nginx and rust-echo idle meanwhile)\n"
    )
    doc.append(
        f"Each cell: {meta.get('reps')} repetitions, interleaved (repetition-major), {meta.get('warmup')} s warm-up "
        f"then {meta.get('duration')} s measured ({meta.get('duration_large', meta.get('duration'))} s with 64 KiB "
        f"and 1 MiB messages); the table shows medians. Window {window}: each connection has "
        f"{window} message(s) in flight (1 = ping-pong), so conns × window messages are in flight in all. "
        "msgs/s counts echoed messages; MB/s is echoed payload per second in one direction (10⁶ B); p50/p99 are "
        "round-trip latencies (send to echo received) in the load generator. Ratios compare msgs/s with the "
        "byte tunnel, with rust-echo and with fastwebsockets at the same size and connection count. Every echo is checked for order, "
        "length and content; `errors` counts failed connects, I/O errors, closes, out-of-order or corrupt echoes "
        "and messages not echoed within 10 s after the end. *CPU busy srv/gen*: how busy CPU 0 (the server) and "
        "CPU 1 (the load generator) were during the measurement, softirq included (loopback TCP is processed "
        "there); **†** marks cells where the load generator's CPU was saturated (≥ 95%) while the server's was "
        "not (< 90%): there the figure is the load generator's limit, not the server's. **‡** marks cells where "
        "other processes on the machine used ≥ 0.15 cores meanwhile (noise)."
    )
    doc.append("")
    cpu_text, profiles = cpu_section(rows)
    doc.extend(targets_summary(rows, matrix, aggregate(rows, "pipelined"), window, capped))
    doc.append(f"## Throughput and latency (window {window})")
    doc.append("")
    doc.append(main_table)
    doc.append("")

    pipe = aggregate(rows, "pipelined")
    if pipe:
        doc.append("## Pipelined (window 16: each connection keeps 16 messages in flight)")
        doc.append("")
        doc.append(throughput_table(pipe, [], "16"))
        doc.append("")

    # per-repetition spread, to judge the noise
    spread = []
    for key, a in sorted(matrix.items(), key=lambda kv: (kv[0][1] or 0, kv[0][2] or 0, kv[0][0])):
        if key[1] is None or len(a["rates"]) < 2:
            continue
        lo, hi = min(a["rates"]), max(a["rates"])
        if a["rate"]:
            spread.append((key, (hi - lo) / a["rate"]))
    if spread:
        worst = sorted(spread, key=lambda x: -x[1])[:5]
        doc.append(
            "Noise: the spread (max − min) / median of msgs/s over the repetitions is "
            f"{statistics.median([s for _, s in spread]) * 100:.0f}% at the median cell; largest: "
            + ", ".join(f"{LABEL[k[0]]} {human_size(k[1])}×{k[2]} {s * 100:.0f}%" for k, s in worst)
            + "."
        )
        doc.append("")

    doc.extend(capped_text)

    # sessions
    sess = defaultdict(list)
    for r in rows:
        if r.get("kind") == "sessions" and not r["result"].get("failed"):
            sess[r["target"]].append(r["result"])
    if sess:
        doc.extend(section(
            "## Short sessions through websocket_pass (upstream keepalive pool)",
            "16 concurrent loops of: connect, handshake, one 16 B message, its echo, closing handshake. "
            "`/pass` connects to the upstream for every session; `/passpool` is the same with "
            "`websocket_keepalive 16;`.",
        ))
        doc.extend(table_head("| location | sessions/s | p50 session | p99 session | errors |"))
        med = {}
        for t in ["pass", "passpool"]:
            rs = sess.get(t, [])
            if not rs:
                continue
            med[t] = median([x["msgs_per_sec"] for x in rs])
            doc.append(
                f"| /{t} | {fmt_num(med[t])} | {fmt_us(median([x['p50_us'] for x in rs]))} | "
                f"{fmt_us(median([x['p99_us'] for x in rs]))} | {sum(x['errors'] for x in rs)} |"
            )
        if "pass" in med and "passpool" in med:
            doc.append("")
            doc.append(f"Pool ratio (passpool / pass sessions/s): **{ratio(med['passpool'], med['pass'])}**")
        doc.append("")

    # ceiling
    ceil = [r for r in rows if r.get("kind", "").startswith("ceiling")]
    if ceil:
        doc.extend(section(
            "## The load generator's own ceiling",
            "64 connections. *trivial echo*: `loadgen --serve-trivial`, a minimal unmask-and-send-back server "
            "(no validation, one write per read), pinned to CPU 0, load generator on CPU 1. When a row of the main "
            "table comes close to the trivial-echo figure of the same size and window, the load generator, not the "
            "server, is the limit there (the server-bound section measures the echo servers past that limit).",
        ))
        doc.extend(table_head("| server | size | window | msgs/s | MB/s | p50 | p99 | CPU busy 0/1 |"))
        for r in ceil:
            x = r["result"]
            if x.get("failed"):
                doc.append(f"| {r['target']} | failed | | | | | | |")
                continue
            name = "trivial echo (pinned)" if r["target"] == "trivial" else "rust-echo (unpinned)"
            doc.append(
                f"| {name} | {human_size(x['size'])} | {x['window']} | {fmt_num(x['msgs_per_sec'])} | "
                f"{fmt_num(x['mb_per_sec'], 1)} | {fmt_us(x['p50_us'])} | {fmt_us(x['p99_us'])} | "
                f"{cpu_cell({'busy0': cpu_busy(x, 0), 'busy1': cpu_busy(x, 1), 'other': (x.get('cpu') or {}).get('other')})} |"
            )
        doc.append("")

    # memory
    mem = [r for r in rows if r.get("kind") == "memory"]
    if mem:
        doc.extend(section(
            "## Memory: worker RSS per idle connection",
            "A fresh nginx (one worker) per line; N connections opened, one 16 B message echoed on each, then "
            "held idle; VmRSS of the worker before, with all N open (1 s after the last one was ready) and 1 s "
            "after they were closed. For pass and tunnel the upstream echo server is a second nginx, so the "
            "measured worker holds the client leg, the upstream leg and the relay state. Each such session "
            f"takes two descriptors, so N is capped by the open files limit ({meta.get('nofile')}).",
            "Two rounds in the same worker: round 1 gives the growth per open connection; round 2 opens and "
            "closes the same number again, so *left after close* compares the RSS after round 2 with the RSS "
            "after round 1: near zero means the memory of closed sessions is reused, a figure close to the "
            "per-connection growth means it is lost (a leak), not merely kept by the allocator.",
        ))
        doc.extend(table_head("| session kind | N | RSS at start | RSS with N open | **per open connection** | RSS after close (round 1) | round 2: open / after close | left after close, per connection and round |"))
        for r in mem:
            n = r["n"]
            rounds = r.get("rounds", [])
            if not rounds or not n:
                continue
            r1 = rounds[0]
            per = (r1["rss_open_kib"] - r["rss_before_kib"]) / n
            note = idle_count(n, r1)
            r2txt = left = "–"
            if len(rounds) > 1:
                r2 = rounds[1]
                r2txt = f"{r2['rss_open_kib']:,} / {r2['rss_after_kib']:,} KiB"
                left = f"{(r2['rss_after_kib'] - r1['rss_after_kib']) / n:.2f} KiB"
            doc.append(
                f"| {r['target']} | {note} | {r['rss_before_kib']:,} KiB | {r1['rss_open_kib']:,} KiB | "
                f"**{per:.2f} KiB** | {r1['rss_after_kib']:,} KiB | {r2txt} | {left} |"
            )
        doc.append("")

    copies = [r for r in rows if r.get("kind") == "copies"]
    if copies:
        doc.extend(section(
            "## Copies: user-space bytes copied per byte echoed",
            "Each server runs with bench/copycount/copycount.so preloaded, which counts the bytes memcpy and "
            "memmove copy; one connection echoes the messages one at a time, and the count's growth over that run "
            "is divided by the bytes echoed. The kernel's copies (recv, send) and copies inside the C library "
            "(realloc) are not counted. pass runs in its own nginx with its upstream echo in another, so its "
            "figure is the relay's alone, both ways.",
        ))
        doc.extend(table_head("| server | message | messages | bytes copied | **per byte echoed** |"))
        for r in copies:
            per_byte = r["copied"] / (r["messages"] * r["size"]) if r["messages"] else float("nan")
            doc.append(f"| {r['target']} | {human_size(r['size'])} | {r['messages']} | "
                       f"{r['copied']:,} | **{per_byte:.2f}** |")
        doc.append("")

    # cpu
    perf = [r for r in rows if r.get("kind") == "perf"]
    if cpu_text or perf:
        doc.append("## CPU cost: instructions per echoed 1 KiB message")
        doc.append("")
        if cpu_text:
            doc.append(cpu_text)
            doc.append("")
            for t, prof in profiles.items():
                doc.append(f"<details><summary>{LABEL[t]}: top functions, instructions per message (self cost)</summary>")
                doc.append("")
                doc.append("| Ir / message | function |")
                doc.append("|---:|---|")
                for fn, c in prof:
                    doc.append(f"| {c:,.0f} | `{short_fn(fn)}` |")
                doc.append("")
                doc.append("</details>")
                doc.append("")
        for r in perf:
            doc.append(perf_line(r, LABEL[r["target"]]))
        doc.append("")
    elif meta.get("cpu_method") == "none":
        doc.append("## CPU cost\n\nNot measured (neither perf counters nor valgrind available).\n")

    if deflate_text:
        doc.extend(deflate_text[:2])
        doc.extend(deflate_summary)
        doc.append("")
        doc.extend(deflate_text[2:])

    doc.extend(runtime_section(rows))
    doc.extend(anomalies(events))

    with open(args.out, "w") as f:
        f.write("\n".join(doc))
    print(f"## Throughput and latency (window {window}, medians of {meta.get('reps')})\n")
    print(main_table)
    print()


if __name__ == "__main__":
    sys.exit(main())
