#!/usr/bin/env bash
# Soak test (make soak; not in make test): SOAK_CONNECTIONS (10,000) WebSocket
# sessions held for SOAK_MINUTES (10), half on websocket_echo and half through
# websocket_pass to a websocket_echo in a second nginx, each sending a message
# every SOAK_INTERVAL (5) s, plus SOAK_CHURN (10) short sessions a second
# (clean closes, TCP drops, drops in the middle of a frame, closes with a
# message in flight). The client is bench/loadgen's `soak` binary.
#
# Every SOAK_SAMPLE (10) s it records both workers' VmRSS and open
# descriptors and the client's counters (from its latest progress line, up to
# one sample old; "failures" there does not count pongs still on their way)
# in $SOAK_DIR/curve.tsv: the first row is the baseline before the client
# starts, the last one is taken once the descriptors are back. It fails when
#   - a worker's RSS grows more than SOAK_RSS_GROWTH (5) % over its value at
#     the end of the first minute, while the sessions run;
#   - a worker's descriptors are not back to their count before the run
#     within 30 s of the client's end;
#   - the client saw a message lost, reordered or altered, a session refused
#     or dropped, a close handshake fail, a pong missing;
#   - an error.log has [alert], [crit] or [emerg], a worker died, or
#     websocket_status still counts active sessions at the end.
#
# Knobs: SOAK_MINUTES SOAK_CONNECTIONS SOAK_INTERVAL SOAK_CHURN SOAK_SAMPLE
# SOAK_RSS_GROWTH, SOAK_PORT (29080; uses it and the next one),
# SOAK_DIR (target/soak).
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
MINUTES=${SOAK_MINUTES:-10}
CONNS=${SOAK_CONNECTIONS:-10000}
INTERVAL=${SOAK_INTERVAL:-5}
CHURN=${SOAK_CHURN:-10}
SAMPLE=${SOAK_SAMPLE:-10}
GROWTH=${SOAK_RSS_GROWTH:-5}
PORT=${SOAK_PORT:-29080}
DIR=${SOAK_DIR:-$ROOT/target/soak}
P_FRONT=$PORT
P_BACK=$((PORT + 1))
DURATION=$(python3 -c "print(int(float('$MINUTES') * 60))")

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# ------------------------------------------------------------------ build
log "building nginx + module (make build) and the soak client"
make -s -C "$ROOT" --no-print-directory build >/dev/null
PATHS=$(make -s -C "$ROOT" --no-print-directory paths)
NGINX=$(sed -n 's/^nginx=//p' <<<"$PATHS")
MODULE_SRC=$(sed -n 's/^module=//p' <<<"$PATHS")
cargo build --release --quiet --manifest-path "$BENCH/loadgen/Cargo.toml" --bin soak
SOAK=$BENCH/loadgen/target/release/soak

exec 9>"${TMPDIR:-/tmp}/ngx-websocket-soak.lock"
flock -n 9 || { echo "soak.sh: another soak run is in progress" >&2; exit 1; }

rm -rf "$DIR"
mkdir -p "$DIR"
# A private copy: a rebuild during the run must not touch the mapped module.
cp "$MODULE_SRC" "$DIR/ngx_http_websocket_module.so"

# ------------------------------------------------------------------ limits
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
# front worker: a descriptor per echo session, two per pass session; the
# back worker one per pass session; the client one per session; plus churn.
NEED=$((CONNS * 3 / 2 + 1000))
if [ "$NOFILE" -lt "$NEED" ]; then
    echo "soak.sh: the open files limit is $NOFILE; $CONNS sessions need $NEED (raise ulimit -Hn or lower SOAK_CONNECTIONS)" >&2
    exit 1
fi
for p in "$P_FRONT" "$P_BACK"; do
    if ss -Hltn "sport = :$p" | grep -q .; then
        echo "soak.sh: port $p is in use; set SOAK_PORT" >&2
        exit 1
    fi
done
log "open files limit $NOFILE; $CONNS sessions for $MINUTES min, a message every $INTERVAL s each, $CHURN short sessions/s"

# ------------------------------------------------------------------ nginx
conf() { # NAME BODY
    mkdir -p "$DIR/$1"
    cat >"$DIR/$1/nginx.conf" <<EOF
load_module $DIR/ngx_http_websocket_module.so;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $DIR/$1/nginx.pid;
error_log $DIR/$1/error.log notice;
events { worker_connections $((NOFILE - 100)); }
http {
    access_log off;
    client_body_temp_path $DIR/$1/client_body;
    proxy_temp_path $DIR/$1/proxy;
    fastcgi_temp_path $DIR/$1/fastcgi;
    uwsgi_temp_path $DIR/$1/uwsgi;
    scgi_temp_path $DIR/$1/scgi;
    websocket_timeout 120s;
$2
}
EOF
}
conf back "
    server {
        listen 127.0.0.1:$P_BACK backlog=4096;
        location /echo { websocket_echo; }
        location = /status { websocket_status; }
    }"
conf front "
    server {
        listen 127.0.0.1:$P_FRONT backlog=4096;
        location /echo { websocket_echo; }
        location /pass { websocket_pass ws://127.0.0.1:$P_BACK/echo; }
        location = /status { websocket_status; }
    }"

CLIENT_PID=
cleanup() {
    [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null || true
    for n in front back; do
        [ -f "$DIR/$n/nginx.pid" ] && kill -QUIT "$(cat "$DIR/$n/nginx.pid")" 2>/dev/null || true
    done
}
trap cleanup EXIT

for n in back front; do
    "$NGINX" -p "$DIR/$n/" -e "$DIR/$n/error.log" -c "$DIR/$n/nginx.conf"
done
worker_of() { pgrep -P "$(cat "$DIR/$1/nginx.pid")" | head -1; }
for i in $(seq 50); do
    [ -n "$(worker_of front 2>/dev/null)" ] && [ -n "$(worker_of back 2>/dev/null)" ] && break
    sleep 0.1
done
W_FRONT=$(worker_of front)
W_BACK=$(worker_of back)
[ -n "$W_FRONT" ] && [ -n "$W_BACK" ] || { echo "soak.sh: nginx did not start" >&2; cat "$DIR"/*/error.log >&2; exit 1; }

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
active() { # PORT -> sessions_active summed over kinds
    curl -s --max-time 5 "http://127.0.0.1:$1/status" |
        awk '/^nginx_websocket_sessions_active/ {s += $2} END {print s + 0}'
}

# One session each way first, so that the baseline is a worker that has run
# the module's code once (lazily created state is not a leak).
"$SOAK" --echo-url "ws://127.0.0.1:$P_FRONT/echo" --pass-url "ws://127.0.0.1:$P_FRONT/pass" \
    --connections 2 --interval 0.2 --duration 1 --churn 0 --status 100 >"$DIR/warmup.json" 2>&1 ||
    { echo "soak.sh: warm-up failed:" >&2; cat "$DIR/warmup.json" >&2; exit 1; }
sleep 2
BASE_FDS_FRONT=$(fds "$W_FRONT")
BASE_FDS_BACK=$(fds "$W_BACK")
log "workers: front $W_FRONT (${BASE_FDS_FRONT} fds, $(rss "$W_FRONT") KiB), back $W_BACK (${BASE_FDS_BACK} fds, $(rss "$W_BACK") KiB)"

# ------------------------------------------------------------------ run
CURVE=$DIR/curve.tsv
printf 't_s\tfront_rss_kib\tfront_fds\tback_rss_kib\tback_fds\tclient_open\tclient_sent\tclient_received\tchurn_ok\tfailures\n' >"$CURVE"
sample() { # T
    local last
    last=$(tail -1 "$DIR/client.progress" 2>/dev/null || true)
    j() { [[ $last =~ \"$1\":([0-9]+) ]] && echo "${BASH_REMATCH[1]}" || echo -; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$(rss "$W_FRONT")" "$(fds "$W_FRONT")" \
        "$(rss "$W_BACK")" "$(fds "$W_BACK")" "$(j long_open)" "$(j sent)" "$(j received)" \
        "$(j churn_ok)" "$(j failures)" >>"$CURVE"
}

T0=$(date +%s)
sample 0    # the baseline, before the client starts
"$SOAK" --echo-url "ws://127.0.0.1:$P_FRONT/echo" --pass-url "ws://127.0.0.1:$P_FRONT/pass" \
    --connections "$CONNS" --interval "$INTERVAL" --duration "$DURATION" --churn "$CHURN" \
    --status "$SAMPLE" >"$DIR/client.json" 2>"$DIR/client.progress" &
CLIENT_PID=$!
next=$((T0 + SAMPLE))
while kill -0 "$CLIENT_PID" 2>/dev/null; do
    now=$(date +%s)
    if [ "$now" -ge "$next" ]; then
        sample $((now - T0))
        next=$((next + SAMPLE))
        # the client's progress line for this sample comes a moment later
        if [ $(((now - T0) % 60)) -lt "$SAMPLE" ]; then
            log "$(tail -1 "$CURVE" | awk -F'\t' '{printf "t=%ss front %s KiB %s fds, back %s KiB %s fds, %s sessions open", $1, $2, $3, $4, $5, $6}')"
        fi
    fi
    sleep 1
done
CLIENT_RC=0
wait "$CLIENT_PID" || CLIENT_RC=$?
CLIENT_PID=
T_END=$(($(date +%s) - T0))
sample "$T_END"
log "client finished after $T_END s (exit $CLIENT_RC)"

# Descriptors back to the baseline within 30 s.
fds_ok=0
for i in $(seq 30); do
    if [ "$(fds "$W_FRONT")" -le "$BASE_FDS_FRONT" ] && [ "$(fds "$W_BACK")" -le "$BASE_FDS_BACK" ]; then
        fds_ok=1
        break
    fi
    sleep 1
done
sample "$(($(date +%s) - T0))"
ACTIVE_FRONT=$(active "$P_FRONT")
ACTIVE_BACK=$(active "$P_BACK")

# ------------------------------------------------------------------ verdict
failures=()
RESULT=$(grep '"state":"done"' "$DIR/client.json" || true)
if [ -z "$RESULT" ]; then
    failures+=("the client printed no result (exit $CLIENT_RC)")
elif [ "$CLIENT_RC" -ne 0 ] || [[ $RESULT != *'"failures":0,'* ]]; then
    failures+=("client: $RESULT")
fi
READY=$(grep '"state":"ready"' "$DIR/client.json" || true)
[[ $READY == *"\"open\":$CONNS,"* ]] || failures+=("not every session opened: $READY")

# RSS: every sample from the end of the first minute until the client's
# last sample before it closed its sessions, against the first of them.
read -r RSS_CHECK <<<"$(awk -F'\t' -v end="$((DURATION + 0))" -v g="$GROWTH" '
    NR > 1 && $1 >= 60 && $1 <= end {
        if (!f) { f0 = $2; b0 = $4; f = 1 }
        if ($2 > fmax) fmax = $2
        if ($4 > bmax) bmax = $4
        n++
    }
    END {
        if (!n) { print "none"; exit }
        fg = (fmax - f0) * 100 / f0; bg = (bmax - b0) * 100 / b0
        printf "%s %d %d %.2f %s %d %d %.2f %d\n", (fg > g || bg > g) ? "grew" : "ok", f0, fmax, fg, "back", b0, bmax, bg, n
    }' "$CURVE")"
read -r rss_verdict F0 FMAX FG _ B0 BMAX BG NSAMPLES <<<"$RSS_CHECK"
if [ "$rss_verdict" = none ]; then
    failures+=("no RSS sample after the first minute (SOAK_MINUTES too short?)")
elif [ "$rss_verdict" = grew ]; then
    failures+=("RSS grew more than $GROWTH % after the first minute: front $F0 -> $FMAX KiB ($FG %), back $B0 -> $BMAX KiB ($BG %)")
fi
END_FDS_FRONT=$(fds "$W_FRONT")
END_FDS_BACK=$(fds "$W_BACK")
[ "$fds_ok" = 1 ] || failures+=("descriptors not back to the baseline 30 s after the end: front $END_FDS_FRONT (was $BASE_FDS_FRONT), back $END_FDS_BACK (was $BASE_FDS_BACK)")
[ "$ACTIVE_FRONT" = 0 ] && [ "$ACTIVE_BACK" = 0 ] ||
    failures+=("websocket_status still counts active sessions: front $ACTIVE_FRONT, back $ACTIVE_BACK")
for n in front back; do
    w=$(worker_of $n || true)
    want=$W_FRONT
    [ $n = back ] && want=$W_BACK
    [ "$w" = "$want" ] || failures+=("$n: the worker changed ($want -> ${w:-none})")
    bad=$(grep -E '\[(alert|crit|emerg)\]|exited on signal|core dumped' "$DIR/$n/error.log" | head -5 || true)
    [ -z "$bad" ] || failures+=("$n error.log: $bad")
done
ERRORS_FRONT=$(grep -c '\[error\]' "$DIR/front/error.log" || true)
WARNS_FRONT=$(grep -c '\[warn\]' "$DIR/front/error.log" || true)

SUMMARY=$DIR/summary.txt
{
    echo "soak: $CONNS sessions ($((CONNS / 2)) echo, $((CONNS - CONNS / 2)) pass -> echo), $MINUTES min, a message every $INTERVAL s each, $CHURN short sessions/s"
    echo "rev $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?), $(date -u +%FT%TZ)"
    echo "client: ${RESULT:-none}"
    echo "RSS (KiB) at 1 min -> max until the end of the sessions ($NSAMPLES samples): front $F0 -> $FMAX ($FG %), back $B0 -> $BMAX ($BG %)"
    echo "descriptors: front $BASE_FDS_FRONT before, $END_FDS_FRONT after; back $BASE_FDS_BACK before, $END_FDS_BACK after"
    echo "websocket_status sessions_active at the end: front $ACTIVE_FRONT, back $ACTIVE_BACK"
    echo "front error.log: $ERRORS_FRONT [error], $WARNS_FRONT [warn] lines"
    echo "curve: $CURVE"
    if [ ${#failures[@]} -eq 0 ]; then
        echo "PASS"
    else
        printf 'FAIL: %s\n' "${failures[@]}"
    fi
} | tee "$SUMMARY"

for n in front back; do kill -QUIT "$(cat "$DIR/$n/nginx.pid")" 2>/dev/null || true; done
trap - EXIT
[ ${#failures[@]} -eq 0 ]
