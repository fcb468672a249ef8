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
# Sections (BENCH_FANOUT_SECTIONS):
#   shm    channels in shared memory (our zone without redis=, nchan's memory store)
#   redis  the same through one redis-server (Debian's, on the first free port
#          from BENCH_REDIS_PORT, pinned to CPU 0 with nginx, emptied before
#          each measurement): our zone with redis=, nchan with nchan_redis_pass
#   cross  two nginx servers (one worker each, both on CPU 0) sharing that
#          redis-server: subscribers on B, publishes on A; the latency is
#          publish on A to receive on B
# Without shm the report goes to YYYY-MM-DD-<rev>-fanout-redis.md.
#
# BENCH_FANOUT_RT=1: nginx, redis-server and the load generator run
# SCHED_FIFO (chrt -f 10), so that other work on the machine (builds) cannot
# delay their wakeups; without it, latencies on a busy machine move by
# several times from run to run.
#
# Knobs: BENCH_FANOUT_SUBS="1000 10000"  BENCH_FANOUT_SIZES="100 4096"
#        BENCH_FANOUT_DELIVERIES=50000  BENCH_FANOUT_WINDOW=4
#        BENCH_FANOUT_DURATION=4  BENCH_FANOUT_REPS=3  BENCH_PORT=28180
#        BENCH_FANOUT_SERVERS="nchan ours"  BENCH_FANOUT_SECTIONS="shm redis cross"
#        BENCH_REDIS_PORT=28379  BENCH_FANOUT_RT=0
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
SECTIONS=${BENCH_FANOUT_SECTIONS:-"shm redis cross"}
REDIS_PORT=${BENCH_REDIS_PORT:-28379}
RT=()
if [ "${BENCH_FANOUT_RT:-0}" = 1 ]; then RT=(chrt -f 10); fi
NGINX=/usr/sbin/nginx

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { echo "bench/fanout.sh: $*" >&2; exit 1; }

[ -x "$NGINX" ] || die "$NGINX is missing (Debian's nginx: apt-get install nginx-light)"
for section in $SECTIONS; do
    case $section in shm | redis | cross) ;; *) die "unknown section $section (shm, redis, cross)" ;; esac
done
uses_redis() { [[ " $SECTIONS " == *" redis "* || " $SECTIONS " == *" cross "* ]]; }
if uses_redis; then
    command -v redis-server >/dev/null || die "redis-server is missing (apt-get install redis-server)"
fi

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

# conf NAME SERVER SECTION PORT: writes $RUN/NAME/nginx.conf (one worker, the
# same settings for both servers; only the module, the store and the two
# locations differ).
conf() {
    local dir=$RUN/$1 load sub pub zone="" redis=""
    mkdir -p "$dir/logs"
    case $2 in
    nchan)
        load=$NCHAN
        if [ "$3" != shm ]; then
            zone="upstream bench_redis { nchan_redis_server redis://127.0.0.1:$REDIS_PORT; }"
            redis="nchan_redis_pass bench_redis;"
        fi
        sub="nchan_subscriber websocket; nchan_channel_id bench; $redis"
        pub="nchan_publisher http; nchan_channel_id bench; nchan_message_buffer_length 10; $redis"
        zone="nchan_max_reserved_memory 64m; $zone"
        ;;
    ours)
        load=$OURS
        [ "$3" = shm ] || redis=" redis=redis://127.0.0.1:$REDIS_PORT"
        sub="websocket_subscribe bench bench;"
        pub="websocket_publish bench bench;"
        zone="websocket_channel_zone bench 64m history=10$redis;"
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
    keepalive_requests 1000000;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    $zone
    server {
        listen 127.0.0.1:$4;
        location = /sub { $sub }
        location = /pub { $pub }
    }
}
EOF
}

start() {
    local dir=$RUN/$1
    "${RT[@]}" taskset -c 0 "$NGINX" -p "$dir/" -c "$dir/nginx.conf" 2>>"$dir/logs/start.log" ||
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

# One redis-server for the redis and cross sections, stopped by its PID.
REDIS_PID=
start_redis() {
    local dir=$RUN/redis
    while ss -Hltn "sport = :$REDIS_PORT" | grep -q .; do REDIS_PORT=$((REDIS_PORT + 1)); done
    mkdir -p "$dir"
    "${RT[@]}" taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$dir" --logfile "$dir/redis.log" --daemonize no &
    REDIS_PID=$!
    for _ in $(seq 50); do
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    die "redis-server did not start ($(tail -2 "$dir/redis.log"))"
}
stop_redis() {
    [ -n "$REDIS_PID" ] || return 0
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
}

INSTANCES=
cleanup() {
    for i in $INSTANCES; do stop "$i"; done
    stop_redis
}
trap cleanup EXIT

# port NAME: where instance NAME listens (cross: B, the subscribers' server,
# on BENCH_PORT, A on the next port).
port() { case $1 in *-a) echo $((PORT + 1)) ;; *) echo "$PORT" ;; esac; }

# measure SECTION SERVER SUBS SIZE MODE: fresh nginx (two for cross) and an
# empty Redis, one loadgen run, one line.
measure() {
    local section=$1 server=$2 subs=$3 size=$4 mode=$5 rate line worker sub pub out
    if [ "$mode" = fixed ]; then rate=$(awk -v d="$DELIVERIES" -v n="$subs" 'BEGIN { printf "%.3f", d / n }'); else rate=0; fi
    case $section in
    shm) sub=$server pub=$server ;;
    redis) sub=$server-redis pub=$server-redis ;;
    cross) sub=$server-b pub=$server-a ;;
    esac
    [ "$section" = shm ] || redis-cli -p "$REDIS_PORT" flushall >/dev/null
    start "$sub"
    [ "$pub" = "$sub" ] || start "$pub"
    # Both modules connect to Redis as the worker starts.
    [ "$section" = shm ] || sleep 0.3
    worker=$(pgrep -P "$(cat "$RUN/$sub/nginx.pid")" | head -1)
    out=$RUN/$sub/logs/loadgen.log
    if line=$("${RT[@]}" taskset -c 1 "$FANOUT" --sub-url "ws://127.0.0.1:$(port "$sub")/sub" \
        --pub-url "http://127.0.0.1:$(port "$pub")/pub" --subscribers "$subs" --size "$size" \
        --rate "$rate" --window "$WINDOW" --duration "$DURATION" --server-pid "$worker" \
        2>>"$out"); then
        echo "{\"section\":\"$section\",\"server\":\"$server\",\"mode\":\"$mode\",${line#\{}" >>"$RESULTS"
    else
        echo "{\"section\":\"$section\",\"server\":\"$server\",\"mode\":\"$mode\",\"subscribers\":$subs,\"size\":$size,\"failed\":true}" >>"$RESULTS"
        log "$section: $server $subs x $size $mode failed: $(tail -1 "$out")"
    fi
    [ "$pub" = "$sub" ] || stop "$pub"
    stop "$sub"
}

for section in $SECTIONS; do
    for s in $SERVERS; do
        case $section in
        shm) INSTANCES+=" $s"; conf "$s" "$s" shm "$PORT" ;;
        redis) INSTANCES+=" $s-redis"; conf "$s-redis" "$s" redis "$PORT" ;;
        cross)
            INSTANCES+=" $s-a $s-b"
            conf "$s-a" "$s" cross "$(port "$s-a")"
            conf "$s-b" "$s" cross "$(port "$s-b")"
            ;;
        esac
    done
done
if uses_redis; then start_redis; fi
started=$(date +%s)
for section in $SECTIONS; do
    t0=$(date +%s)
    for rep in $(seq "$REPS"); do
        for subs in $SUBS; do
            for size in $SIZES; do
                for mode in fixed max; do
                    for s in $SERVERS; do
                        log "$section, rep $rep: $s, $subs subscribers, $size B, $mode"
                        measure "$section" "$s" "$subs" "$size" "$mode"
                    done
                done
            done
        done
    done
    echo "{\"section\":\"$section\",\"wall_s\":$(($(date +%s) - t0))}" >>"$RESULTS"
done
stop_redis
log "measured in $(($(date +%s) - started)) s"

REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
SUFFIX=fanout
[[ " $SECTIONS " == *" shm "* ]] || SUFFIX=fanout-redis
OUT=$BENCH/results/$(date +%F)-$REV-$SUFFIX.md
BENCH_FANOUT_RT=${BENCH_FANOUT_RT:-0} python3 "$BENCH/fanout_report.py" "$RESULTS" "$NGINX" "$(redis-server --version 2>/dev/null | cut -d' ' -f1-3)" >"$OUT"
cat "$OUT"
log "report: $OUT"
