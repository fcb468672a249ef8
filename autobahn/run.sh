#!/bin/sh
# Run the Autobahn|Testsuite fuzzing client against one or more WebSocket servers.
# Usage: autobahn/run.sh --wstest PATH --outdir DIR --cases '1.*,2.*' [--exclude '9.*,...']
#                        NAME=ws://127.0.0.1:PORT/path [NAME2=URL2 ...]
# Exits 1 if any case's behavior or behaviorClose is FAILED or WRONG CODE, or if
# cases never ran (server unreachable/crashed); 2 on usage or wstest errors.
# The HTML report stays in DIR (DIR/index.html).
set -eu

usage() { sed -n '3,4s/^# //p' "$0" >&2; exit 2; }
WSTEST= OUTDIR= CASES= EXCLUDE=
while [ $# -gt 0 ]; do
    case $1 in
        --wstest)  WSTEST=$2;  shift 2 ;;
        --outdir)  OUTDIR=$2;  shift 2 ;;
        --cases)   CASES=$2;   shift 2 ;;
        --exclude) EXCLUDE=$2; shift 2 ;;
        --*)       usage ;;
        *=*)       break ;;
        *)         usage ;;
    esac
done
[ -n "$WSTEST" ] && [ -n "$OUTDIR" ] && [ -n "$CASES" ] && [ $# -gt 0 ] || usage
HERE=$(cd "$(dirname "$0")" && pwd)
# wstest runs from inside OUTDIR below, so a relative path must be made absolute.
WSTEST=$(cd "$(dirname "$WSTEST")" && pwd)/$(basename "$WSTEST")
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
# A stale index.json would be read as this run's result if wstest died early.
rm -f "$OUTDIR/index.json"

# Build the spec with python3 so names, URLs and case patterns are JSON-escaped.
python3 - "$OUTDIR" "$CASES" "$EXCLUDE" "$@" > "$OUTDIR/spec.json" <<'PY'
import json, sys
outdir, cases, exclude, servers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
split = lambda s: [c.strip() for c in s.split(",") if c.strip()]
print(json.dumps({
    "outdir": outdir,
    "servers": [{"agent": a, "url": u} for a, u in (s.split("=", 1) for s in servers)],
    "cases": split(cases),
    "exclude-cases": split(exclude),
    "exclude-agent-cases": {},
    # Strict: a TCP drop without a closing handshake fails the case.
    "options": {"failByDrop": True},
}, indent=2))
PY

# wstest writes its reports relative to the spec; run it from OUTDIR so its
# stray files stay there. Its exit status says nothing about the results.
(cd "$OUTDIR" && "$WSTEST" -m fuzzingclient -s spec.json) > "$OUTDIR/wstest.log" 2>&1 || {
    tail -n 20 "$OUTDIR/wstest.log" >&2; echo "run.sh: wstest failed" >&2; exit 2; }
[ -f "$OUTDIR/index.json" ] || {
    tail -n 20 "$OUTDIR/wstest.log" >&2; echo "run.sh: no index.json" >&2; exit 2; }
exec python3 "$HERE/report.py" "$OUTDIR"
