#!/usr/bin/env python3
"""Summarises the memcheck logs of a `make test-valgrind` run, or the ASan
reports of a `make test-asan` run.

    valgrind/report.py DIR            (the TEST_NGINX_VALGRIND_DIR of the run)
    valgrind/report.py --asan DIR

With ASan, only processes that found something leave a <test>-<pid>.asan:
each AddressSanitizer error and each leak LeakSanitizer reports (after
valgrind/lsan.supp) is an error.

Every nginx process the tests started (master, workers, nginx -t) left a
<test>-<pid>.log there (valgrind -v, --gen-suppressions=all). Prints the
processes checked, the errors nginx.supp did not suppress (grouped by kind
and stack, with the tests they came from; "[module]" when a frame of the
stack is in ngx_http_websocket_module.so), definitely and possibly lost
bytes, and how often each suppression matched. Exits 1 when a process had
an error (invalid read/write/free, uninitialised value, a definite leak...,
as counted by its ERROR SUMMARY) or never finished its report (killed
before valgrind could write it), else 0.
"""

import collections
import glob
import os
import re
import sys

ERROR = re.compile(
    r"^(Invalid |Mismatched free|Conditional jump|Use of uninitialised|Syscall param|"
    r"Source and destination overlap|Argument .*fishy|Jump to the invalid|Process terminating|"
    r".* are definitely lost in loss record)"
)
POSSIBLE = re.compile(r"^([\d,]+) bytes in ([\d,]+) blocks are possibly lost")
DEFINITE = re.compile(r"^([\d,]+) (?:\([\d,]+ direct, [\d,]+ indirect\) )?bytes in ([\d,]+) blocks are definitely lost")
FRAME = re.compile(r"^\s+(?:at|by) 0x[0-9A-F]+: (.*?) \((.*)\)$")
ALLOC = re.compile(
    r"^(malloc|calloc|realloc|free|memalign|posix_memalign|aligned_alloc|operator new|"
    r"operator delete|__rust_|__rdl_|alloc::|std::alloc|ngx_alloc|ngx_calloc|ngx_memalign|"
    r"ngx_p[cn]?alloc|ngx_palloc_|ngx_pfree|mem(cpy|move|set|cmp)|__mem|strlen|strn?cmp|strn?cpy)"
)
USED = re.compile(r"used_suppression:\s+(\d+)\s+(\S+)")


def num(s):
    return int(s.replace(",", ""))


def parse(path):
    """-> (pid, lines of that pid without the prefix, suppression blocks, raw text)"""
    text = open(path, errors="replace").read()
    m = re.search(r"^==(\d+)==", text, re.M)
    if not m:
        return None, [], text
    pid = m.group(1)
    lines = []
    supp_block = None
    for raw in text.split("\n"):
        if raw.startswith(f"=={pid}=="):
            lines.append(raw[len(pid) + 4:].removeprefix(" "))
        elif raw == "{":
            supp_block = []
        elif raw == "}" and supp_block is not None:
            # attach the suppression to the last report
            lines.append(("SUPP", "\n".join(supp_block)))
            supp_block = None
        elif supp_block is not None:
            supp_block.append(raw.strip())
    return pid, lines, text


ASAN_HEAD = re.compile(r"ERROR: AddressSanitizer: (.*)|^((?:Direct|Indirect) leak of .*) allocated from:"
                       r"|ERROR: (?!LeakSanitizer: detected memory leaks)(\w+Sanitizer: .*)")
ASAN_FRAME = re.compile(r"^\s+#\d+ 0x[0-9a-f]+ in (\S+)\s*(.*)")


def asan_reports(path):
    """-> [(what, [(fn, where)])] of an ASan log"""
    out = []
    lines = open(path, errors="replace").read().split("\n")
    for i, line in enumerate(lines):
        m = ASAN_HEAD.search(line)
        if not m:
            continue
        what = next(g for g in m.groups() if g)
        what = re.sub(r" on address 0x[0-9a-f]+.*", "", what)
        frames = []
        for nxt in lines[i + 1:]:
            if not nxt.strip():
                break
            fm = ASAN_FRAME.match(nxt)
            if fm:
                frames.append((fm.group(1), fm.group(2)))
        out.append((what, frames))
    return out


def main():
    args = sys.argv[1:]
    asan = bool(args) and args[0] == "--asan"
    if asan:
        args = args[1:]
    if len(args) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    files = [] if asan else sorted(glob.glob(os.path.join(args[0], "*.log")))
    asan_files = sorted(glob.glob(os.path.join(args[0], "*.asan"))) if asan else []
    errors = collections.OrderedDict()
    incomplete, unexplained = [], []
    supp = collections.Counter()
    definite, possible = [0, 0], [0, 0]
    tests = collections.Counter()
    failing_processes = 0
    for path in files:
        name = os.path.basename(path)
        test = re.sub(r"-\d+\.log$", "", name)
        tests[test] += 1
        pid, lines, text = parse(path)
        for m in USED.finditer(text):
            supp[m.group(2)] += int(m.group(1))
        summary = re.search(r"ERROR SUMMARY: (\d+) errors", text)
        if not summary:
            incomplete.append(name)
        elif int(summary.group(1)) > 0:
            failing_processes += 1
        found = 0
        for i, line in enumerate(lines):
            if isinstance(line, tuple):
                continue
            m = POSSIBLE.match(line)
            if m:
                possible[0] += num(m.group(1))
                possible[1] += num(m.group(2))
                continue
            if not ERROR.match(line):
                continue
            m = DEFINITE.match(line)
            if m:
                definite[0] += num(m.group(1))
                definite[1] += num(m.group(2))
            frames, suppression = [], ""
            for nxt in lines[i + 1:]:
                if isinstance(nxt, tuple):
                    suppression = nxt[1]
                    break
                if not nxt.strip():
                    break
                fm = FRAME.match(nxt)
                if fm:
                    frames.append((fm.group(1), fm.group(2)))
                elif nxt.strip():
                    frames.append((nxt.strip(), ""))
            fns = [f for f, where in frames if where]
            top = tuple(f for f in fns if not ALLOC.match(f))[:4] or tuple(fns[:4])
            what = re.sub(r"^[\d,]+ (\([^)]*\) )?bytes in [\d,]+ blocks", "N bytes", line)
            what = re.sub(r" in loss record \d+ of \d+", "", what)
            what = re.sub(r"of size \d+", "of size N", what)
            key = (what, top)
            rec = errors.setdefault(key, {
                "what": what, "frames": frames, "count": 0, "tests": collections.Counter(),
                "module": any("ngx_http_websocket_module" in where or "ngx_http_websocket_module" in f
                              for f, where in frames),
                "supp": suppression,
            })
            rec["count"] += 1
            rec["tests"][test] += 1
            found += 1
        if summary and int(summary.group(1)) > 0 and not found:
            unexplained.append(name)

    for path in asan_files:
        name = os.path.basename(path)
        test = re.sub(r"-\d+\.asan$", "", name)
        reports = asan_reports(path)
        if reports:
            failing_processes += 1
        for what, frames in reports:
            fns = [f for f, _ in frames]
            top = tuple(f for f in fns if not ALLOC.match(f) and not f.startswith("__interceptor"))[:4]
            m = re.match(r"(Direct|Indirect) leak of ([\d,]+) byte", what)
            if m and m.group(1) == "Direct":
                definite[0] += num(m.group(2))
                definite[1] += 1
            key = (re.sub(r"[\d,]+ byte\(s\) in [\d,]+ object\(s\)", "N bytes", what), top)
            rec = errors.setdefault(key, {
                "what": key[0], "frames": frames, "count": 0, "tests": collections.Counter(),
                "module": any("ngx_http_websocket_module" in f + w for f, w in frames),
                "supp": "",
            })
            rec["count"] += 1
            rec["tests"][test] += 1

    n_err = sum(r["count"] for r in errors.values())
    if asan:
        print(f"AddressSanitizer/LeakSanitizer: {len(asan_files)} nginx processes left a report")
    else:
        print(f"valgrind memcheck: {len(files)} nginx processes (masters, workers, nginx -t) "
              f"from {len(tests)} test files")
    print(f"  processes with errors: {failing_processes}")
    print(f"  errors: {n_err} ({len(errors)} distinct, "
          f"{sum(1 for r in errors.values() if r['module'])} with a frame in the module)")
    print(f"  {'direct leaks' if asan else 'definitely lost'}: {definite[0]} bytes in {definite[1]} blocks")
    if not asan:
        print(f"  possibly lost (not counted as errors): {possible[0]} bytes in {possible[1]} blocks")
    if incomplete:
        print(f"  incomplete reports (no ERROR SUMMARY): {len(incomplete)}: {', '.join(incomplete[:20])}")
    if unexplained:
        print(f"  ERROR SUMMARY > 0 without a parsed report: {', '.join(unexplained[:20])}")
    if supp:
        print("  suppressions used (valgrind/nginx.supp and valgrind's default.supp), matches:")
        for name, n in supp.most_common():
            print(f"    {n:7d}  {name}")
    for rec in errors.values():
        print()
        where = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in rec["tests"].most_common())
        print(f"{rec['what']}{' [module]' if rec['module'] else ''} -- {rec['count']} times: {where}")
        for fn, obj in rec["frames"][:20]:
            print(f"    {fn}  ({obj})" if obj else f"  {fn}")
        if rec["supp"]:
            print("  suppression:\n    {\n" + "\n".join("      " + l for l in rec["supp"].splitlines()) + "\n    }")
    return 1 if failing_processes or incomplete or errors else 0


if __name__ == "__main__":
    sys.exit(main())
