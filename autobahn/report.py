#!/usr/bin/env python3
"""Summarize an Autobahn|Testsuite fuzzingclient report: report.py OUTDIR.

Prints, per agent, counts by behavior and behaviorClose, then every FAILED /
WRONG CODE case with its description. Exits 1 if there is any such case or if
cases are missing from the report.
"""
import json, os, re, sys

# Anything not in GOOD fails, e.g. "FAILED BY CLIENT" (the testee never
# closed the TCP connection after the closing handshake).
GOOD = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED")
ORDER = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "WRONG CODE")


def case_key(cid):
    return [int(p) if p.isdigit() else p for p in cid.split(".")]


def describe(outdir, result):
    # index.json has no description; it is in the per-case JSON report.
    try:
        with open(os.path.join(outdir, result["reportfile"])) as f:
            text = re.sub(r"<[^>]+>", " ", json.load(f).get("description", ""))
    except (OSError, ValueError, KeyError):
        return ""
    text = " ".join(text.split())  # descriptions are HTML with <br> line breaks
    return text if len(text) <= 160 else text[:157] + "..."


def main(outdir):
    with open(os.path.join(outdir, "index.json")) as f:
        index = json.load(f)
    # wstest skips the rest of a server's cases when it cannot connect, and
    # skipped cases are simply absent from index.json: count them as failures.
    agents, expected = sorted(index), None
    try:
        with open(os.path.join(outdir, "spec.json")) as f:
            agents = sorted(set(agents) | {s["agent"] for s in json.load(f)["servers"]})
        with open(os.path.join(outdir, "wstest.log")) as f:
            m = re.search(r"will run (\d+) test cases", f.read())
            expected = int(m.group(1)) if m else None
    except (OSError, ValueError, KeyError):
        pass
    bad_total = 0
    for agent in agents:
        cases = index.get(agent, {})
        print("== %s: %d cases" % (agent, len(cases)))
        if not cases or (expected is not None and len(cases) < expected):
            print("  MISSING  %s of %s cases never ran (server unreachable or crashed? see wstest.log)"
                  % ((expected or 0) - len(cases) if expected else "all", expected or "?"))
            bad_total += 1
        for field in ("behavior", "behaviorClose"):
            counts = {}
            for r in cases.values():
                counts[r[field]] = counts.get(r[field], 0) + 1
            names = list(ORDER) + sorted(set(counts) - set(ORDER))
            print("  %-14s %s" % (field + ":", ", ".join("%s %d" % (n, counts.get(n, 0)) for n in names)))
        bad = [c for c in sorted(cases, key=case_key)
               if cases[c]["behavior"] not in GOOD or cases[c]["behaviorClose"] not in GOOD]
        for c in bad:
            r = cases[c]
            print("  %-8s %s/%s close=%s: %s" % (c, r["behavior"], r["behaviorClose"],
                                                 r.get("remoteCloseCode"), describe(outdir, r)))
        bad_total += len(bad)
    print("report: %s" % os.path.join(outdir, "index.html"))
    print("RESULT: %s (%d FAILED/WRONG CODE/MISSING)" % ("FAIL" if bad_total else "PASS", bad_total))
    return 1 if bad_total else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: report.py OUTDIR")
    sys.exit(main(sys.argv[1]))
