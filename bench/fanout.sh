#!/usr/bin/env bash
# Channel fan-out, side by side with nchan in one run (issue 18's benchmark).
#
#   bench/fanout.sh          (make bench-fanout; as root the first time)
#
# Debian's /usr/sbin/nginx (1.22) runs twice with the same worker settings:
# once with Debian's libnginx-mod-nchan (extracted from its .deb into
# target/nchan/, nothing installed system-wide) and once with our module from
# `make distro`. One channel; BENCH_FANOUT_SUBS subscribers over WebSocket;
# messages of BENCH_FANOUT_SIZES bytes published over HTTP, at a fixed rate of
# BENCH_FANOUT_DELIVERIES deliveries per second and in a closed loop (at most
# BENCH_FANOUT_WINDOW messages not yet received by every subscriber: the
# highest rate each sustains). The worker is pinned to CPU 0, the load
# generator (bench/loadgen fanout) to CPU 1. Each cell is measured
# BENCH_FANOUT_REPS times, the two servers interleaved; the median goes into
# bench/results/YYYY-MM-DD-<rev>-fanout.md.
#
# Knobs: BENCH_FANOUT_SUBS="1000 10000"  BENCH_FANOUT_SIZES="100 4096"
#        BENCH_FANOUT_DELIVERIES=50000  BENCH_FANOUT_WINDOW=4
#        BENCH_FANOUT_DURATION=4  BENCH_FANOUT_REPS=3  BENCH_PORT=28180
#        BENCH_FANOUT_SERVERS="nchan ours"
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
SUBS=${BENCH_FANOUT_SUBS:-"1000 10000"}
SIZES=${BENCH_FANOUT_SIZES:-"100 4096"}
DELIVERIES=${BENCH_FANOUT_DELIVERIES:-50000}
WINDOW=${BENCH_FANOUT_WINDOW:-4}
DURATION=${BENCH_FANOUT_DURATION:-4}
REPS=${BENCH_FANOUT_REPS:-3}
PORT=${BENCH_PORT:-28180}
SERVERS=${BENCH_FANOUT_SERVERS:-"nchan ours"}
NGINX=/usr/sbin/nginx

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { echo "bench/fanout.sh: $*" >&2; exit 1; }

[ -x "$NGINX" ] || die "$NGINX is missing (Debian's nginx: apt-get install nginx-light)"

# nchan: Debian's package, unpacked where it cannot touch /etc/nginx.
NCHAN=$ROOT/target/nchan/usr/lib/nginx/modules/ngx_nchan_module.so
if [ ! -f "$NCHAN" ]; then
    log "fetching Debian's libnginx-mod-nchan"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq libnginx-mod-nchan) || die "apt-get download libnginx-mod-nchan failed"
    mkdir -p "$ROOT/target/nchan"
    dpkg -x "$tmp"/libnginx-mod-nchan_*.deb "$ROOT/target/nchan"
    rm -rf "$tmp"
fi
OURS=$ROOT/target/distro/ngx_http_websocket_module.so
if [[ " $SERVERS " == *" ours "* ]]; then
    log "building our module for Debian's nginx (make distro)"
    make -s -C "$ROOT" --no-print-directory distro >/dev/null
    [ -f "$OURS" ] || die "make distro did not produce $OURS"
fi
log "building the load generator"
cargo build --release --quiet --manifest-path "$BENCH/loadgen/Cargo.toml" --bin fanout
FANOUT=$BENCH/loadgen/target/release/fanout

ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

RUN=$BENCH/run-fanout
rm -rf "$RUN"
mkdir -p "$RUN" "$BENCH/results"
RESULTS=$RUN/results.jsonl
: >"$RESULTS"

# conf SERVER: writes $RUN/SERVER/nginx.conf (one worker, the same settings
# for both; only the module and the two locations differ).
conf() {
    local dir=$RUN/$1 load sub pub zone=""
    mkdir -p "$dir/logs"
    case $1 in
    nchan)
        load=$NCHAN
        sub="nchan_subscriber websocket; nchan_channel_id bench;"
        pub="nchan_publisher http; nchan_channel_id bench; nchan_message_buffer_length 10;"
        zone="nchan_max_reserved_memory 64m;"
        ;;
    ours)
        load=$OURS
        sub="websocket_subscribe bench bench;"
        pub="websocket_publish bench bench;"
        zone="websocket_channel_zone bench 64m history=10;"
        ;;
    esac
    cat >"$dir/nginx.conf" <<EOF
load_module $load;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $dir/nginx.pid;
error_log $dir/logs/error.log notice;
events { worker_connections 30000; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    $zone
    server {
        listen 127.0.0.1:$PORT;
        location = /sub { $sub }
        location = /pub { $pub }
    }
}
EOF
}

start() {
    local dir=$RUN/$1
    taskset -c 0 "$NGINX" -p "$dir/" -c "$dir/nginx.conf" 2>>"$dir/logs/start.log" ||
        die "$1: nginx did not start ($(tail -2 "$dir/logs/start.log" "$dir/logs/error.log"))"
    for _ in $(seq 50); do
        [ -s "$dir/nginx.pid" ] && pgrep -P "$(cat "$dir/nginx.pid")" >/dev/null && return 0
        sleep 0.1
    done
    die "$1: no worker"
}

stop() {
    local dir=$RUN/$1 pid
    pid=$(cat "$dir/nginx.pid" 2>/dev/null) || return 0
    kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
trap 'for s in $SERVERS; do stop "$s"; done' EXIT

# measure SERVER SUBS SIZE MODE: one fresh nginx, one loadgen run, one line.
measure() {
    local server=$1 subs=$2 size=$3 mode=$4 rate line worker
    if [ "$mode" = fixed ]; then rate=$(awk -v d="$DELIVERIES" -v n="$subs" 'BEGIN { printf "%.3f", d / n }'); else rate=0; fi
    start "$server"
    worker=$(pgrep -P "$(cat "$RUN/$server/nginx.pid")" | head -1)
    if line=$(taskset -c 1 "$FANOUT" --sub-url "ws://127.0.0.1:$PORT/sub" \
        --pub-url "http://127.0.0.1:$PORT/pub" --subscribers "$subs" --size "$size" \
        --rate "$rate" --window "$WINDOW" --duration "$DURATION" --server-pid "$worker" \
        2>>"$RUN/$server/logs/loadgen.log"); then
        echo "{\"server\":\"$server\",\"mode\":\"$mode\",${line#\{}" >>"$RESULTS"
    else
        echo "{\"server\":\"$server\",\"mode\":\"$mode\",\"subscribers\":$subs,\"size\":$size,\"failed\":true}" >>"$RESULTS"
        log "$server $subs x $size $mode failed: $(tail -1 "$RUN/$server/logs/loadgen.log")"
    fi
    stop "$server"
}

for s in $SERVERS; do conf "$s"; done
for rep in $(seq "$REPS"); do
    for subs in $SUBS; do
        for size in $SIZES; do
            for mode in fixed max; do
                for s in $SERVERS; do
                    log "rep $rep: $s, $subs subscribers, $size B, $mode"
                    measure "$s" "$subs" "$size" "$mode"
                done
            done
        done
    done
done

REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
OUT=$BENCH/results/$(date +%F)-$REV-fanout.md
python3 "$BENCH/fanout_report.py" "$RESULTS" "$NGINX" >"$OUT"
cat "$OUT"
log "report: $OUT"
