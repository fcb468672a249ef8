#!/usr/bin/env bash
# Benchmarks ngx_http_websocket_module against nginx's own byte tunnel and two
# standalone single-threaded Rust echo servers (tokio-tungstenite: rust-echo;
# fastwebsockets: fws-echo), on this machine, in one run.
#
#   bench/deps.sh && bench/run.sh
#
# One nginx, worker_processes 1, its worker pinned to CPU 0; the load
# generator pinned to CPU 1; the Rust echo servers pinned to CPU 0 (each is
# measured while nginx and the other idle, and the other way round). Every combination
# is measured REPS times, interleaved (repetition-major order), and the
# median is reported. Prints one markdown table and writes the full report
# to bench/results/YYYY-MM-DD-<git rev>.md. The capped section measures echo,
# rust-echo and fws-echo again with the server held to BENCH_CAP of one CPU by
# a cgroup, so that the load generator has CPU to spare (server-bound).
#
# Knobs (environment):
#   BENCH_DURATION=2  BENCH_WARMUP=1  BENCH_REPS=3     seconds, seconds, count
#   BENCH_DURATION_LARGE=1    seconds measured in the 64 KiB and 1 MiB cells
#   BENCH_SIZES="16 1024 65536 1048576"  BENCH_CONNS="1 64 1000"
#   BENCH_WINDOW=1            messages in flight per connection in the matrix
#   BENCH_MAX_INFLIGHT=268435456  skip a cell when size x conns x window is larger
#   BENCH_IDLE=10000          idle connections for the memory measurement
#   BENCH_PORT=28080          first of 9 consecutive ports used on 127.0.0.1
#   BENCH_NICE=-10            run nginx's worker, the load generator and the Rust servers
#                             at this niceness (a shared machine; off by default)
#   BENCH_RT=1                run them SCHED_FIFO (chrt -f 1) instead: on a machine
#                             where other work runs, ping-pong latency needs the
#                             wakeups to preempt it (RT throttling leaves others 5%)
#   BENCH_QUICK=1             one short repetition of a reduced matrix (smoke test)
#   BENCH_SKIP="memory cpu copies ceiling sessions pipelined capped deflate"  parts to leave out
#   BENCH_ONLY=deflate        only the compressed (permessage-deflate) section: about
#                             2.5 minutes; its report goes to .../YYYY-MM-DD-<rev>-deflate.md
#   BENCH_ONLY=capped         only the capped section: about 3 minutes, into .../<rev>-capped.md
#   BENCH_CAP=0.4             capped section: the server's share of one CPU (cgroup cpu
#                             controller, v1 or v2), BENCH_CAP_PERIOD_US=10000 its period
#   BENCH_CAP_MODE=auto       rt: the server stays SCHED_FIFO, capped by cpu.rt_runtime_us
#                             (cgroup v1 with RT group scheduling); cfs: the server runs
#                             SCHED_OTHER, capped by cpu.cfs_quota_us / cpu.max (a CFS
#                             quota does not throttle SCHED_FIFO tasks); auto: rt with
#                             BENCH_RT=1 where possible, else cfs
#   BENCH_CAP_TARGETS="echo rust-echo fws-echo"  servers measured capped (pass, tunnel possible)
#   BENCH_CAP_SIZES="16 1024 65536 1048576"  message sizes of the capped section, each at
#                             window 1 and 16 (64 KiB and 1 MiB measured BENCH_DURATION_LARGE)
#   BENCH_CAP_MAX_INFLIGHT=67108864  capped section: fewer than 64 connections where
#                             size x 64 x window is larger (1 MiB x window 16: 4)
#   BENCH_CAP_WARMUP=0.5      seconds of warm-up in the capped section
#   BENCH_DEFLATE_IDLE=2000   idle connections for its memory measurement
#   BENCH_RETRIES=15          measurements redone (after waiting for a quiet
#                             machine) when other processes used >= 0.15 cores
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
T_START=$(date +%s)
T_START_NS=$(date +%s%N)

DURATION=${BENCH_DURATION:-2}
DURATION_LARGE=${BENCH_DURATION_LARGE:-1}
WARMUP=${BENCH_WARMUP:-1}
REPS=${BENCH_REPS:-3}
SIZES=${BENCH_SIZES:-"16 1024 65536 1048576"}
CONNS=${BENCH_CONNS:-"1 64 1000"}
WINDOW=${BENCH_WINDOW:-1}
MAX_INFLIGHT=${BENCH_MAX_INFLIGHT:-268435456}
IDLE=${BENCH_IDLE:-10000}
PORT=${BENCH_PORT:-28080}
SKIP=${BENCH_SKIP:-}
ONLY=${BENCH_ONLY:-}
case $ONLY in
"") ;;
deflate) SKIP="$SKIP matrix sanity sessions ceiling memory cpu copies capped" ;;
capped) SKIP="$SKIP matrix sanity sessions ceiling memory cpu copies deflate" ;;
*) echo "BENCH_ONLY: 'deflate' or 'capped'" >&2; exit 1 ;;
esac
DEFLATE_IDLE=${BENCH_DEFLATE_IDLE:-2000}
RETRIES=${BENCH_RETRIES:-15}
NICE=${BENCH_NICE:-0}
RT=${BENCH_RT:-0}
PRIO=(nice -n "$NICE")
[ "$RT" = 1 ] && PRIO=(chrt -f 1)
CAP=${BENCH_CAP:-0.4}
CAP_PERIOD=${BENCH_CAP_PERIOD_US:-10000}
CAP_MODE=${BENCH_CAP_MODE:-auto}
CAP_TARGETS=${BENCH_CAP_TARGETS:-"echo rust-echo fws-echo"}
CAP_SIZES=${BENCH_CAP_SIZES:-"16 1024 65536 1048576"}
CAP_MAX_INFLIGHT=${BENCH_CAP_MAX_INFLIGHT:-67108864}
CAP_WARMUP=${BENCH_CAP_WARMUP:-0.5}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    DURATION=1; DURATION_LARGE=1; WARMUP=0.3; REPS=1; SIZES="16 65536"; CONNS="1 64"; IDLE=${BENCH_IDLE:-1000}
    DEFLATE_IDLE=${BENCH_DEFLATE_IDLE:-500}; CAP_WARMUP=${BENCH_CAP_WARMUP:-0.3}; CAP_SIZES=${BENCH_CAP_SIZES:-"16 65536"}
fi
TARGETS="echo pass tunnel rust-echo fws-echo"

P_MAIN=$PORT          # nginx: /echo /pass /passpool /tunnel
P_BACK=$((PORT + 1))  # nginx: the websocket_echo upstream of /pass and /tunnel
P_RUST=$((PORT + 2))  # rust-echo
P_TRIV=$((PORT + 3))  # trivial echo (load generator ceiling)
P_MEM=$((PORT + 4))   # memory: measured nginx
P_MEMB=$((PORT + 5))  # memory: backend nginx
P_CG=$((PORT + 6))    # callgrind nginx
P_CGB=$((PORT + 7))   # callgrind nginx, backend server
P_FWS=$((PORT + 8))   # fws-echo

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
skipped() { [[ " $SKIP " == *" $1 "* ]]; }

# ------------------------------------------------------------------ build
log "building nginx + module (make build) and the load generator"
# Measure the tree as it is: build it (a no-op when nothing changed).
make -s -C "$ROOT" --no-print-directory build >"$BENCH/.build.log" 2>&1 ||
    { cat "$BENCH/.build.log" >&2; echo "make build failed" >&2; exit 1; }
PATHS=$(make -s -C "$ROOT" --no-print-directory paths)
NGINX=$(sed -n 's/^nginx=//p' <<<"$PATHS")
MODULE_SRC=$(sed -n 's/^module=//p' <<<"$PATHS")
if [ ! -x "$NGINX" ] || [ ! -f "$MODULE_SRC" ]; then echo "no nginx/module from make -s paths" >&2; exit 1; fi
cargo build --release --quiet --manifest-path "$BENCH/loadgen/Cargo.toml"
LOADGEN=$BENCH/loadgen/target/release/loadgen
RUST_ECHO=$BENCH/loadgen/target/release/rust-echo
FWS_ECHO=$BENCH/loadgen/target/release/fws-echo

# One run at a time: a second one would share the ports and the run directory.
exec 9>"${TMPDIR:-/tmp}/ngx-websocket-bench.lock"
flock -n 9 || { echo "bench/run.sh: another run is in progress (lock ${TMPDIR:-/tmp}/ngx-websocket-bench.lock)" >&2; exit 1; }

RUN=$BENCH/run
rm -rf "$RUN"
mkdir -p "$RUN" "$BENCH/results"
# A private copy: a rebuild during the run must not change what is measured.
cp "$MODULE_SRC" "$RUN/ngx_http_websocket_module.so"
MODULE=$RUN/ngx_http_websocket_module.so
RESULTS=$RUN/results.jsonl
EVENTS=$RUN/events.txt
: >"$RESULTS"
: >"$EVENTS"

# section NAME: the wall time of the section that ends here goes into the
# results (the report's run-time table), and NAME begins ("" ends the last).
SECTION=start SECTION_NS=$T_START_NS
section() {
    local now
    [ "$1" = "$SECTION" ] && return 0
    now=$(date +%s%N)
    [ -n "$SECTION" ] && printf '{"kind":"section","name":"%s","seconds":%s}\n' \
        "$SECTION" "$(((now - SECTION_NS) / 1000000))e-3" >>"$RESULTS"
    SECTION=$1 SECTION_NS=$now
}

# ------------------------------------------------------------------ limits
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
log "open files limit: $NOFILE"

for p in $(seq "$PORT" $((PORT + 8))); do
    if ss -Hltn "sport = :$p" | grep -q .; then
        echo "port $p on 127.0.0.1 is in use; set BENCH_PORT to a free range of 9 ports" >&2
        exit 1
    fi
done

# ------------------------------------------------------------------ cgroup
# The capped section's cgroup: CAP_DIR while it exists, CAP_HOME the cgroup
# (same hierarchy) that its processes go back to, CAP_HOW rt or cfs.
CAP_DIR="" CAP_HOME="" CAP_HOW="" CAP_CGV="" CAP_WHY=""
# cap_setup: makes the cgroup; else returns 1 with the reason in CAP_WHY.
cap_setup() {
    local mnt rel quota
    quota=$(awk -v c="$CAP" -v p="$CAP_PERIOD" 'BEGIN { printf "%d", c * p }')
    if [ "$quota" -lt 1000 ] || [ "$quota" -gt "$CAP_PERIOD" ]; then
        CAP_WHY="BENCH_CAP x BENCH_CAP_PERIOD_US = $quota us, not between 1000 us (the kernel's minimum) and the period"
        return 1
    fi
    # cgroup v1 with a cpu hierarchy, else v2 with the cpu controller
    mnt=$(awk '$3 == "cgroup" { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] == "cpu") print $2 }' /proc/mounts | head -1)
    if [ -n "$mnt" ]; then
        CAP_CGV=v1
        rel=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ { print $3 }' /proc/self/cgroup | head -1)
        CAP_HOME=$mnt${rel%/}
        CAP_DIR=$CAP_HOME/ngx-websocket-bench.$$
    else
        mnt=$(awk '$3 == "cgroup2" { print $2 }' /proc/mounts | head -1)
        if [ -z "$mnt" ] || ! grep -qw cpu "$mnt/cgroup.subtree_control" 2>/dev/null; then
            CAP_WHY="no cgroup v1 cpu hierarchy, and no cgroup v2 with the cpu controller enabled at its root${mnt:+ ($mnt/cgroup.subtree_control)}"
            return 1
        fi
        CAP_CGV=v2
        # Below the root: a non-root cgroup with processes can have no
        # controllers for its children.
        rel=$(awk -F: '$1 == 0 { print $3 }' /proc/self/cgroup | head -1)
        CAP_HOME=$mnt${rel%/}
        CAP_DIR=$mnt/ngx-websocket-bench.$$
    fi
    rmdir "$(dirname "$CAP_DIR")"/ngx-websocket-bench.* 2>/dev/null || true # empty ones of killed runs
    if ! mkdir "$CAP_DIR" 2>/dev/null; then
        CAP_WHY="cannot make a cgroup in $(dirname "$CAP_DIR") (not writable?)"
        CAP_DIR=""
        return 1
    fi
    CAP_HOW=cfs
    [ "$CAP_MODE" = rt ] && [ "$RT" != 1 ] && log "capped: BENCH_CAP_MODE=rt needs BENCH_RT=1 (the server SCHED_FIFO); using a CFS quota"
    if [ "$CAP_MODE" != cfs ] && [ "$RT" = 1 ]; then
        if [ "$CAP_CGV" = v1 ] && [ -f "$CAP_DIR/cpu.rt_runtime_us" ] &&
            echo "$CAP_PERIOD" 2>/dev/null >"$CAP_DIR/cpu.rt_period_us" &&
            echo "$quota" 2>/dev/null >"$CAP_DIR/cpu.rt_runtime_us"; then
            CAP_HOW=rt
        else
            log "capped: no RT runtime for a cgroup here (cgroup $CAP_CGV, cpu.rt_runtime_us); the server runs SCHED_OTHER under a CFS quota instead"
        fi
    fi
    if [ "$CAP_HOW" = cfs ]; then
        if ! { if [ "$CAP_CGV" = v1 ]; then
            echo -1 >"$CAP_DIR/cpu.cfs_quota_us" &&
                echo "$CAP_PERIOD" >"$CAP_DIR/cpu.cfs_period_us" &&
                echo "$quota" >"$CAP_DIR/cpu.cfs_quota_us"
        else
            echo "$quota $CAP_PERIOD" >"$CAP_DIR/cpu.max"
        fi; } 2>/dev/null; then
            CAP_WHY="cannot set the CFS quota in $CAP_DIR"
            cap_teardown
            return 1
        fi
    fi
    printf '{"kind":"capped-setup","cgroup":"%s","how":"%s","quota_us":%s,"period_us":%s,"cap":%s,"rt":%s}\n' \
        "$CAP_CGV" "$CAP_HOW" "$quota" "$CAP_PERIOD" "$CAP" "$RT" >>"$RESULTS"
    return 0
}
# cap_join PID: the process into the capped cgroup, SCHED_OTHER for a CFS
# quota (which does not throttle SCHED_FIFO; nor can a SCHED_FIFO task join
# a v1 cgroup without RT runtime or a v2 cgroup with the cpu controller).
cap_join() {
    if [ "$CAP_HOW" = cfs ] && [ "$RT" = 1 ]; then chrt -o -p 0 "$1"; fi
    echo "$1" >"$CAP_DIR/cgroup.procs"
}
# cap_teardown: every process back home (SCHED_FIFO again under BENCH_RT=1),
# the cgroup removed. Also from the EXIT trap.
cap_teardown() {
    if [ -z "$CAP_DIR" ] || [ ! -d "$CAP_DIR" ]; then CAP_DIR=""; return 0; fi
    local p i procs=()
    mapfile -t procs <"$CAP_DIR/cgroup.procs" || true
    for p in "${procs[@]}"; do
        echo "$p" >"$CAP_HOME/cgroup.procs" 2>/dev/null || true
        if [ "$CAP_HOW" = cfs ] && [ "$RT" = 1 ]; then chrt -f -p 1 "$p" 2>/dev/null || true; fi
    done
    for i in $(seq 20); do
        rmdir "$CAP_DIR" 2>/dev/null && break
        [ "$i" = 20 ] && echo "bench/run.sh: could not remove the cgroup $CAP_DIR" >&2
        sleep 0.1
    done
    CAP_DIR=""
}

# ------------------------------------------------------------------ processes
PIDS=()
cleanup() {
    local p
    cap_teardown
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$RUN"/*/nginx.pid; do
        if [ -f "$f" ]; then kill -QUIT "$(cat "$f")" 2>/dev/null || true; fi
    done
}
trap cleanup EXIT

# nginx_conf DIR WORKER_CONNECTIONS AFFINITY BODY
nginx_conf() {
    local dir=$1 wc=$2 aff=$3 body=$4
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
load_module $MODULE;
worker_processes 1;
worker_priority $NICE;
${aff:+worker_cpu_affinity $aff;}
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections $wc; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
$body
}
EOF
}

nginx_start() { # DIR
    "$NGINX" -p "$1/" -e "$1/error.log" -c "$1/nginx.conf"
    local i
    for i in $(seq 50); do
        [ -s "$1/nginx.pid" ] && pgrep -P "$(cat "$1/nginx.pid")" >/dev/null && return 0
        sleep 0.1
    done
    echo "nginx in $1 did not start" >&2
    cat "$1/error.log" >&2
    exit 1
}

nginx_stop() { # DIR
    [ -f "$1/nginx.pid" ] || return 0
    local pid
    pid=$(cat "$1/nginx.pid")
    kill -QUIT "$pid" 2>/dev/null || true
    local i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && { log "nginx $pid did not quit in 10 s; killing it"; kill -KILL "$pid"; }
    rm -f "$1/nginx.pid"
}

worker_of() { pgrep -P "$(cat "$1/nginx.pid")" | head -1; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

wait_listen() { # PORT SECONDS
    local i
    for i in $(seq $(($2 * 10))); do
        ss -Hltn "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1 after $2 s" >&2
    return 1
}

# Error log lines worth reporting, since the last call (per log file).
declare -A LOG_OFFSET
check_log() { # DIR TAG
    local f=$1/error.log off new
    off=${LOG_OFFSET[$f]:-0}
    new=$(tail -c +$((off + 1)) "$f" | grep -E '\[(warn|alert|crit|emerg|error)\]|exited on signal|core dumped' | grep -v 'exceed open file resource limit' || true)
    LOG_OFFSET[$f]=$(stat -c %s "$f")
    if [ -n "$new" ]; then
        printf '%s\n' "$new" | head -5 | sed "s/^/$2: /" >>"$EVENTS"
        local n
        n=$(printf '%s\n' "$new" | wc -l)
        [ "$n" -gt 5 ] && echo "$2: ... $n lines in all" >>"$EVENTS"
    fi
    return 0
}

# ------------------------------------------------------------------ main nginx
MAIN=$RUN/main
WS_LIMITS="websocket_max_payload_len 2m;"
# The compressed section: websocket_echo with permessage-deflate refused,
# accepted (context takeover, the default), and accepted without takeover.
DEFLATE_TARGETS="deflate-off deflate-on deflate-nct"
DEFLATE_LOCATIONS="
        location /deflate-off { websocket_echo; websocket_deflate off; }
        location /deflate-on { websocket_echo; websocket_deflate on; }
        location /deflate-nct { websocket_echo; websocket_deflate on; websocket_deflate_context_takeover off; }"
# loadgen arguments for them: the yawc client offering permessage-deflate,
# 1 KiB JSON-like text, and the RSV1 of every echo checked.
deflate_args() { # TARGET
    local e=yes
    [ "$1" = deflate-off ] && e=no
    echo "--deflate on --payload json --expect-compressed $e"
}
# proxied_locations PORT: /echo, and /pass and /tunnel (websocket_pass and
# nginx's byte tunnel) to the websocket_echo server on PORT
proxied_locations() {
    cat <<EOF
        location /echo { websocket_echo; }
        location /pass { websocket_pass ws://127.0.0.1:$1/echo; }
        location /tunnel {
            proxy_pass http://127.0.0.1:$1;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }
EOF
}
nginx_conf "$MAIN" 4096 01 "
    server {
        listen 127.0.0.1:$P_MAIN backlog=4096;
        location /echo { websocket_echo; $WS_LIMITS }
        location /pass { websocket_pass ws://127.0.0.1:$P_BACK/echo; $WS_LIMITS }
        location /passpool { websocket_pass ws://127.0.0.1:$P_BACK/echo; websocket_keepalive 16; $WS_LIMITS }
$DEFLATE_LOCATIONS
        location /tunnel {
            proxy_pass http://127.0.0.1:$P_BACK;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
    server {
        listen 127.0.0.1:$P_BACK backlog=4096;
        location / { websocket_echo; $WS_LIMITS }
    }"
nginx_start "$MAIN"
WORKER=$(worker_of "$MAIN")
[ "$RT" = 1 ] && chrt -f -p 1 "$WORKER"
log "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), worker $WORKER on CPU $(taskset -cp "$WORKER" | sed 's/.*: //')"

"${PRIO[@]}" taskset -c 0 "$RUST_ECHO" "127.0.0.1:$P_RUST" 2>>"$RUN/rust-echo.log" &
PIDS+=($!)
RUST_PID=$!
TRIV_PID=$RUST_PID
wait_listen "$P_RUST" 10
"${PRIO[@]}" taskset -c 0 "$FWS_ECHO" "127.0.0.1:$P_FWS" 2>>"$RUN/fws-echo.log" &
PIDS+=($!)
FWS_PID=$!
wait_listen "$P_FWS" 10

url_of() {
    case $1 in
    rust-echo) echo "ws://127.0.0.1:$P_RUST/echo" ;;
    fws-echo) echo "ws://127.0.0.1:$P_FWS/echo" ;;
    trivial) echo "ws://127.0.0.1:$P_TRIV/echo" ;;
    *) echo "ws://127.0.0.1:$P_MAIN/$1" ;;
    esac
}

# Waits (at most 4 s) until the machine is quiet: under 0.1 core busy
# over half a second, while our own processes idle between measurements.
wait_quiet() {
    local a b i
    for i in $(seq 8); do
        a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat)
        sleep 0.5
        b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat)
        [ $((b - a)) -le 5 ] && return 0
    done
    return 1
}

# A measurement during which other processes used >= 0.15 cores is redone
# once, after waiting for quiet, as long as the retry budget lasts.
noisy() { [[ $1 =~ \"other\":([0-9.]+) ]] && python3 -c "import sys; sys.exit(0 if ${BASH_REMATCH[1]} >= 0.15 else 1)"; }

# measure KIND TARGET REP CPUSPEC loadgen-args...   (appends a JSON line)
measure() {
    local kind=$1 target=$2 rep=$3 cpus=$4 t0
    shift 4
    t0=$(date +%s%N)
    measure_once "$kind" "$target" "$rep" "$cpus" "$@"
    if [ "$RETRIES" -gt 0 ] && noisy "$LAST_OUT"; then
        RETRIES=$((RETRIES - 1))
        echo "$kind $target rep $rep ($*): other processes were busy, measured again" >>"$RUN/retries.txt"
        log "  (other processes were busy: waiting for quiet and measuring again; $RETRIES retries left)"
        wait_quiet || true
        measure_once "$kind" "$target" "$rep" "$cpus" "$@"
    fi
    printf '{"kind":"%s","target":"%s","rep":%s,"wall_ms":%s,"result":%s}\n' "$kind" "$target" "$rep" \
        $((($(date +%s%N) - t0) / 1000000)) "$LAST_OUT" >>"$RESULTS"
}

measure_once() {
    local kind=$1 target=$2 rep=$3 cpus=$4 out
    shift 4
    local pin=("${PRIO[@]}" taskset -c "$cpus") spid=$WORKER
    [ "$target" = rust-echo ] && spid=$RUST_PID
    [ "$target" = fws-echo ] && spid=$FWS_PID
    [ "$target" = trivial ] && spid=$TRIV_PID
    if out=$(timeout 300 "${pin[@]}" "$LOADGEN" --url "$(url_of "$target")" --server-pid "$spid" "$@" \
        2>>"$RUN/loadgen.log" | tail -1) &&
        [ -n "$out" ]; then
        :
    else
        out='{"failed":true}'
        echo "$kind $target rep $rep ($*): load generator failed or timed out" >>"$EVENTS"
    fi
    LAST_OUT=$out
    if [[ $out == *'"errors":'* ]] && [[ $out != *'"errors":0,'* ]]; then
        echo "$kind $target rep $rep ($*): ${out/#*\"error_detail\"/errors}" >>"$EVENTS"
    fi
    local w
    w=$(worker_of "$MAIN" || true)
    if [ "$w" != "$WORKER" ]; then
        echo "$kind $target rep $rep ($*): nginx worker $WORKER is gone (now: ${w:-none})" >>"$EVENTS"
        WORKER=$w
        [ "$RT" = 1 ] && [ -n "$w" ] && chrt -f -p 1 "$w"
    fi
    kill -0 "$RUST_PID" 2>/dev/null || echo "$kind $target rep $rep: rust-echo died" >>"$EVENTS"
    kill -0 "$FWS_PID" 2>/dev/null || echo "$kind $target rep $rep: fws-echo died" >>"$EVENTS"
    check_log "$MAIN" "$kind $target rep $rep ($*)"
    printf '%s\n' "$out" | sed 's/,"silent.*//; s/,"url":"[^"]*"//; s/,"duration".*"count"/,"count"/; s/^{"mode":"[a-z]*",/  /' >&2
}

# ------------------------------------------------------------------ plan
cells=()
for size in $SIZES; do
    for c in $CONNS; do
        if [ $((size * c * WINDOW)) -gt "$MAX_INFLIGHT" ]; then
            echo "{\"kind\":\"skipped\",\"size\":$size,\"conns\":$c}" >>"$RESULTS"
            continue
        fi
        cells+=("$size:$c")
    done
done
PIPE_CELLS=()
skipped pipelined || PIPE_CELLS=("16:64" "1024:64")
skipped matrix && cells=() && PIPE_CELLS=()
# cell_duration SIZE: the 64 KiB and 1 MiB cells are measured DURATION_LARGE
cell_duration() { if [ "$1" -ge 65536 ]; then echo "$DURATION_LARGE"; else echo "$DURATION"; fi; }
n_targets=$(wc -w <<<"$TARGETS")
n_runs=$(((${#cells[@]} + ${#PIPE_CELLS[@]}) * n_targets * REPS))
est=0
for cell in "${cells[@]}" "${PIPE_CELLS[@]}"; do
    est=$(awk -v e="$est" -v d="$(cell_duration "${cell%:*}")" -v w="$WARMUP" -v n=$((n_targets * REPS)) \
        'BEGIN { print e + n * (d + w + 0.2) }')
done
est=$(awk -v e="$est" 'BEGIN { printf "%.1f", e / 60 }')
skipped matrix || log "matrix: ${#cells[@]} cells x $n_targets targets x $REPS reps (+ pipelined: ${#PIPE_CELLS[@]} cells) = $n_runs runs, about $est min"

# quick sanity pass: every target answers
if ! skipped sanity; then
    section sanity
    for t in $TARGETS passpool; do
        measure sanity "$t" 0 1 --connections 1 --size 16 --duration 0.2 --warmup 0
    done
fi

# ------------------------------------------------------------------ matrix
skipped matrix || section matrix
for rep in $(seq "$REPS"); do
    skipped matrix && break
    log "repetition $rep of $REPS"
    for cell in "${cells[@]}"; do
        size=${cell%:*} c=${cell#*:}
        for t in $TARGETS; do
            log "$t size=$size conns=$c window=$WINDOW"
            measure matrix "$t" "$rep" 1 --connections "$c" --size "$size" --window "$WINDOW" \
                --duration "$(cell_duration "$size")" --warmup "$WARMUP"
        done
    done
    for cell in "${PIPE_CELLS[@]}"; do
        size=${cell%:*} c=${cell#*:}
        for t in $TARGETS; do
            log "$t size=$size conns=$c window=16 (pipelined)"
            measure pipelined "$t" "$rep" 1 --connections "$c" --size "$size" --window 16 \
                --duration "$DURATION" --warmup "$WARMUP"
        done
    done
done

# ------------------------------------------------------------------ capped
# Server-bound: echo, rust-echo and fws-echo again at CAP_SIZES x 64, window
# 1 and 16, each server process in a cgroup that holds it to CAP of one CPU
# (the worker and the Rust servers take turns, so one cgroup serves them all).
# Uncapped, one core is not enough for the load generator to saturate these
# servers. Fewer connections where 64 would put more than CAP_MAX_INFLIGHT
# bytes in flight.
if ! skipped capped; then
    section capped
    if cap_setup; then
        policy=SCHED_OTHER
        [ "$RT" = 1 ] && [ "$CAP_HOW" = rt ] && policy=SCHED_FIFO
        log "capped: the server in $CAP_DIR, $CAP of one CPU (period $CAP_PERIOD us, $CAP_HOW), $policy"
        for rep in $(seq "$REPS"); do
            for w in 1 16; do
                for size in $CAP_SIZES; do
                    c=64
                    [ $((size * c * w)) -gt "$CAP_MAX_INFLIGHT" ] && c=$((CAP_MAX_INFLIGHT / (size * w)))
                    [ "$c" -ge 1 ] || c=1
                    for t in $CAP_TARGETS; do
                        case $t in
                        rust-echo) cap_join "$RUST_PID" ;;
                        fws-echo) cap_join "$FWS_PID" ;;
                        *) cap_join "$WORKER" ;;
                        esac
                        log "capped: $t size=$size conns=$c window=$w, rep $rep"
                        measure capped "$t" "$rep" 1 --connections "$c" --size "$size" --window "$w" \
                            --duration "$(cell_duration "$size")" --warmup "$CAP_WARMUP"
                    done
                done
            done
        done
        cap_teardown
    else
        log "capped section skipped: $CAP_WHY"
        printf '{"kind":"capped-skipped","reason":"%s"}\n' "$CAP_WHY" >>"$RESULTS"
    fi
fi

# ------------------------------------------------------------------ sessions
if ! skipped sessions; then
    section sessions
    for rep in $(seq "$REPS"); do
        for t in pass passpool; do
            log "short sessions through /$t, rep $rep"
            measure sessions "$t" "$rep" 1 --mode sessions --connections 16 --size 16 \
                --duration "$DURATION" --warmup "$WARMUP"
        done
    done
fi

# ------------------------------------------------------------------ ceiling
if ! skipped ceiling; then
    section ceiling
    "${PRIO[@]}" taskset -c 0 "$LOADGEN" --serve-trivial "127.0.0.1:$P_TRIV" 2>>"$RUN/trivial.log" &
    PIDS+=($!)
    TRIV_PID=$!
    wait_listen "$P_TRIV" 10
    for spec in "16 1" "1024 1" "65536 1" "16 16" "1024 16"; do
        read -r size w <<<"$spec"
        log "ceiling: loadgen on CPU 1 vs trivial echo on CPU 0, size=$size window=$w"
        measure ceiling trivial 1 1 --connections 64 --size "$size" --window "$w" \
            --duration "$(cell_duration "$size")" --warmup "$WARMUP"
    done
fi

# ------------------------------------------------------------------ compressed
# permessage-deflate: 1 KiB JSON-like text x 64 connections, ping-pong and
# pipelined, deflate refused / on / on without context takeover, interleaved.
if ! skipped deflate; then
    section deflate
    for rep in $(seq "$REPS"); do
        for w in 1 16; do
            kind=deflate
            [ "$w" = 16 ] && kind=deflate-pipelined
            for t in $DEFLATE_TARGETS; do
                log "compressed: $t 1 KiB JSON x 64 window=$w, rep $rep"
                # shellcheck disable=SC2046
                measure "$kind" "$t" "$rep" 1 $(deflate_args "$t") --connections 64 --size 1024 \
                    --window "$w" --duration "$DURATION" --warmup "$WARMUP"
            done
        done
    done
fi

nginx_stop "$MAIN"
check_log "$MAIN" "main nginx shutdown"

# ------------------------------------------------------------------ memory
MEM=$RUN/mem MEMB=$RUN/memb
# idle_rss RESULT_KIND LOCATION N [loadgen args...]: a fresh nginx from
# $MEM/nginx.conf, N idle connections to /LOCATION, the worker's RSS;
# IDLE_ROUNDS (2) rounds in the same worker.
idle_rss() {
    local rkind=$1 kind=$2 n=$3
    shift 3
    local w base rounds round out lg ready i open fds after ready_line done_line
    nginx_start "$MEM"
    w=$(worker_of "$MEM")
    sleep 0.5
    base=$(rss_kib "$w")
    # Two rounds in the same worker: the first measures the growth per
    # connection, the second shows whether closed sessions leave memory
    # behind (a leak grows the RSS again by the same amount).
    rounds=""
    for round in $(seq "${IDLE_ROUNDS:-2}"); do
        log "memory: $n idle $kind connections, round $round (worker $w, RSS $(rss_kib "$w") KiB)"
        out=$RUN/idle.$kind.$round.out
        taskset -c 1 "$LOADGEN" --mode idle --url "ws://127.0.0.1:$P_MEM/$kind" --connections "$n" \
            --size 16 --duration 2 --connect-concurrency 128 "$@" >"$out" 2>>"$RUN/loadgen.log" &
        lg=$!
        ready=0
        for i in $(seq 1200); do
            grep -q '"state":"ready"' "$out" 2>/dev/null && { ready=1; break; }
            kill -0 "$lg" 2>/dev/null || break
            sleep 0.1
        done
        sleep 1
        open=$(rss_kib "$w")
        fds=$(find "/proc/$w/fd" -mindepth 1 -maxdepth 1 | wc -l)
        wait "$lg" || true
        sleep 1
        after=$(rss_kib "$w" || echo 0)
        ready_line=$(grep '"state":"ready"' "$out" || echo '{}')
        done_line=$(grep '"state":"done"' "$out" || echo '{}')
        rounds+="${rounds:+,}{\"round\":$round,\"ready\":$ready,\"rss_open_kib\":$open,\"rss_after_kib\":$after,\"worker_fds\":$fds,\"ready_line\":$ready_line,\"done_line\":$done_line}"
        log "memory: $kind round $round: RSS $open KiB with $n open ($(((open - base) * 1024 / n)) B each over the start), $after KiB after closing"
    done
    printf '{"kind":"%s","target":"%s","n":%s,"rss_before_kib":%s,"rounds":[%s]}\n' \
        "$rkind" "$kind" "$n" "$base" "$rounds" >>"$RESULTS"
    nginx_stop "$MEM"
    check_log "$MEM" "memory $kind"
    mv "$MEM/error.log" "$RUN/mem-$kind-error.log"
    LOG_OFFSET[$MEM/error.log]=0
}
if ! skipped memory; then
    section memory
    # Each pass/tunnel session holds two descriptors in the measured worker;
    # the upstream echo runs in a second nginx so it is not counted.
    idle_proxy=$(((NOFILE - 200) / 2))
    [ "$idle_proxy" -gt "$IDLE" ] && idle_proxy=$IDLE
    idle_echo=$IDLE
    [ "$idle_echo" -gt $((NOFILE - 200)) ] && idle_echo=$((NOFILE - 200))
    nginx_conf "$MEMB" $((IDLE * 16 / 15 + 512)) 10 "
    server {
        listen 127.0.0.1:$P_MEMB backlog=4096;
        location / { websocket_echo; }
    }"
    nginx_start "$MEMB"
    for kind in echo echo-log pass tunnel; do
        n=$idle_echo
        case $kind in pass | tunnel) n=$idle_proxy ;; esac
        # nginx starts closing reusable connections when fewer than 1/16 of
        # worker_connections are free: leave more than that. (It may exceed
        # the open files limit; nginx only warns.)
        wc=$((2 * n * 16 / 15 + 512))
        nginx_conf "$MEM" "$wc" 01 "
    server {
        listen 127.0.0.1:$P_MEM backlog=4096;
$(proxied_locations "$P_MEMB")
        # nginx's default: the session's line is written when it ends
        location /echo-log { websocket_echo; access_log $MEM/access.log; }
    }"
        idle_rss memory "$kind" "$n"
    done
    nginx_stop "$MEMB"
    check_log "$MEMB" "memory backend"
fi
# Compressed: every idle connection has had one 1 KiB JSON message echoed,
# compressed both ways where deflate is on (the module makes its compression
# state on the first compressed message).
if ! skipped deflate; then
    section deflate-memory
    n=$DEFLATE_IDLE
    [ "$n" -gt $((NOFILE - 200)) ] && n=$((NOFILE - 200))
    nginx_conf "$MEM" $((n * 16 / 15 + 512)) 01 "
    server {
        listen 127.0.0.1:$P_MEM backlog=4096;
$DEFLATE_LOCATIONS
    }"
    # Three rounds: with context takeover the worker keeps ~130 KiB of zlib
    # state per connection, and glibc's heap does not give all of it back
    # in the same shape, so round 2 can grow once without a leak; a leak
    # keeps growing in round 3.
    for t in $DEFLATE_TARGETS; do
        # shellcheck disable=SC2046
        IDLE_ROUNDS=3 idle_rss deflate-memory "$t" "$n" $(deflate_args "$t") --size 1024
    done
fi

# ------------------------------------------------------------------ CPU cost
CPU_METHOD=none
if ! skipped cpu || ! skipped deflate; then
    if perf stat -e instructions true 2>&1 | grep -q 'not supported\|not counted\|Permission\|Error'; then
        command -v valgrind >/dev/null && CPU_METHOD=callgrind
    else
        CPU_METHOD=perf
    fi
    log "CPU cost method: $CPU_METHOD"
fi
CG=$RUN/cg
CG_SMALL=${BENCH_CG_SMALL:-20}
CG_LARGE=${BENCH_CG_LARGE:-120}
cg_conf() {
    nginx_conf "$CG" 1024 "" "
    server {
        listen 127.0.0.1:$P_CG;
$(proxied_locations "$P_CGB")
$DEFLATE_LOCATIONS
    }
    server {
        listen 127.0.0.1:$P_CGB;
        location / { websocket_echo; }
    }"
}
# cg_run KIND TARGET MESSAGES_PER_CONNECTION [loadgen args...]: one
# callgrind'ed server process, 64 connections x M messages of 1 KiB, ping-pong.
cg_run() {
    local kind=$1 target=$2 m=$3 out=$CG/$2.$3.callgrind url vg bin
    shift 3
    if [ "$target" = rust-echo ] || [ "$target" = fws-echo ]; then
        bin=$RUST_ECHO
        [ "$target" = fws-echo ] && bin=$FWS_ECHO
        taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out" \
            "$bin" "127.0.0.1:$P_CG" 2>>"$CG/valgrind.log" &
        vg=$!
        url="ws://127.0.0.1:$P_CG/echo"
    else
        taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out" \
            "$NGINX" -p "$CG/" -e "$CG/error.log" -c "$CG/nginx.conf" \
            -g 'daemon off; master_process off;' 2>>"$CG/valgrind.log" &
        vg=$!
        url="ws://127.0.0.1:$P_CG/$target"
    fi
    wait_listen "$P_CG" 120
    [ "$target" = pass ] || [ "$target" = tunnel ] && wait_listen "$P_CGB" 60
    local res
    res=$(taskset -c 1 "$LOADGEN" --url "$url" --connections 64 --size 1024 --messages "$m" \
        --warmup 0 --duration 600 "$@" 2>>"$RUN/loadgen.log" | tail -1)
    case $target in rust-echo | fws-echo) kill -TERM "$vg" ;; *) kill -QUIT "$vg" ;; esac
    wait "$vg" 2>/dev/null || true
    [ -n "$res" ] || res='{}'
    printf '{"kind":"%s","target":"%s","m":%s,"file":"%s","result":%s}\n' \
        "$kind" "$target" "$m" "$out" "$res" >>"$RESULTS"
    check_log "$CG" "callgrind $target $m"
}
CPU_TARGETS=""
skipped cpu || CPU_TARGETS="echo pass tunnel rust-echo fws-echo"
skipped deflate || CPU_TARGETS="$CPU_TARGETS $DEFLATE_TARGETS"
# cpu_kind METHOD TARGET: the result kind; cpu_args TARGET: loadgen arguments
cpu_kind() { case $2 in deflate-*) echo "deflate-$1" ;; *) echo "$1" ;; esac; }
cpu_args() { case $1 in deflate-*) deflate_args "$1" ;; esac; }
if [ "$CPU_METHOD" = callgrind ]; then
    cg_conf
    for t in $CPU_TARGETS; do
        section "$(cpu_kind cpu "$t")"
        for m in "$CG_SMALL" "$CG_LARGE"; do
            log "callgrind: $t, 64 connections x $m messages of 1 KiB"
            # shellcheck disable=SC2046
            cg_run "$(cpu_kind callgrind "$t")" "$t" "$m" $(cpu_args "$t")
        done
    done
elif [ "$CPU_METHOD" = perf ]; then
    nginx_start "$MAIN"
    WORKER=$(worker_of "$MAIN")
    for t in $CPU_TARGETS; do
        section "$(cpu_kind cpu "$t")"
        pid=$WORKER
        [ "$t" = rust-echo ] && pid=$RUST_PID
        [ "$t" = fws-echo ] && pid=$FWS_PID
        log "perf stat: $t, 64 connections x 1 KiB"
        perf stat -x, -e instructions -p "$pid" -o "$RUN/perf.$t.csv" &
        pp=$!
        # shellcheck disable=SC2046
        res=$(taskset -c 1 "$LOADGEN" --url "$(url_of "$t")" --connections 64 --size 1024 \
            --warmup 0 --duration "$DURATION" $(cpu_args "$t") \
            2>>"$RUN/loadgen.log" | tail -1)
        kill -INT "$pp"
        wait "$pp" || true
        ins=$(awk -F, '/instructions/ {print $1}' "$RUN/perf.$t.csv")
        [ -n "$res" ] || res='{}'
        printf '{"kind":"%s","target":"%s","instructions":"%s","result":%s}\n' \
            "$(cpu_kind perf "$t")" "$t" "$ins" "$res" >>"$RESULTS"
    done
    nginx_stop "$MAIN"
fi

# ------------------------------------------------------------------ copies
# Bytes copied in user space per byte echoed: the server runs with
# bench/copycount (an LD_PRELOAD shim counting what memcpy and memmove
# copy), one connection echoes COPIES_MESSAGES messages of COPIES_SIZE,
# and the counter's growth over that run is divided by the bytes echoed.
# pass runs in its own nginx, its upstream echo in another (not counted).
COPIES_SIZE=${BENCH_COPIES_SIZE:-1048576}
COPIES_MESSAGES=${BENCH_COPIES_MESSAGES:-20}
CC_DIR=$RUN/copies
copies_read() { od -An -tu8 "$CC_DIR/count.$1" | tr -d ' '; }
# copies_run TARGET: one measurement, appended to the results
copies_run() {
    local t=$1 pid url before after res
    case $t in
    rust-echo | fws-echo)
        local bin=$RUST_ECHO
        [ "$t" = fws-echo ] && bin=$FWS_ECHO
        COPYCOUNT_FILE=$CC_DIR/count.$t LD_PRELOAD=$CC_DIR/copycount.so taskset -c 0 \
            "$bin" "127.0.0.1:$P_CG" 2>>"$CC_DIR/$t.log" &
        pid=$!
        url="ws://127.0.0.1:$P_CG/echo"
        ;;
    *)
        COPYCOUNT_FILE=$CC_DIR/count.$t LD_PRELOAD=$CC_DIR/copycount.so taskset -c 0 \
            "$NGINX" -p "$CC_DIR/" -e "$CC_DIR/error.log" -c "$CC_DIR/nginx.conf" \
            -g 'daemon off; master_process off;' 2>>"$CC_DIR/nginx.stderr" &
        pid=$!
        url="ws://127.0.0.1:$P_CG/$t"
        ;;
    esac
    wait_listen "$P_CG" 30
    before=$(copies_read "$t")
    res=$(taskset -c 1 "$LOADGEN" --url "$url" --connections 1 --size "$COPIES_SIZE" \
        --messages "$COPIES_MESSAGES" --warmup 0 --duration 600 2>>"$RUN/loadgen.log" | tail -1)
    after=$(copies_read "$t")
    case $t in rust-echo | fws-echo) kill -TERM "$pid" ;; *) kill -QUIT "$pid" ;; esac
    wait "$pid" 2>/dev/null || true
    [ -n "$res" ] || res='{}'
    printf '{"kind":"copies","target":"%s","size":%s,"messages":%s,"copied":%s,"result":%s}\n' \
        "$t" "$COPIES_SIZE" "$COPIES_MESSAGES" "$((after - before))" "$res" >>"$RESULTS"
    log "copies: $t: $(((after - before) / COPIES_MESSAGES)) bytes copied per $COPIES_SIZE-byte message echoed"
}
if ! skipped copies; then
    section copies
    mkdir -p "$CC_DIR"
    cc -O2 -shared -fPIC -o "$CC_DIR/copycount.so" "$BENCH/copycount/copycount.c"
    nginx_conf "$CC_DIR" 1024 "" "
    server {
        listen 127.0.0.1:$P_CG;
        location /echo { websocket_echo; $WS_LIMITS }
        location /pass { websocket_pass ws://127.0.0.1:$P_CGB/echo; $WS_LIMITS }
    }"
    nginx_conf "$CC_DIR/backend" 1024 "" "
    server {
        listen 127.0.0.1:$P_CGB;
        location / { websocket_echo; $WS_LIMITS }
    }"
    nginx_start "$CC_DIR/backend"
    for t in echo pass rust-echo fws-echo; do
        copies_run "$t"
    done
    nginx_stop "$CC_DIR/backend"
    check_log "$CC_DIR" copies
fi

# ------------------------------------------------------------------ report
section ""
T_END=$(date +%s)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo norev)
DIRTY=$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock build.rs 2>/dev/null | wc -l)
OUT=$BENCH/results/$(date +%Y-%m-%d)-$REV${ONLY:+-$ONLY}.md
python3 "$BENCH/report.py" \
    --results "$RESULTS" --events "$EVENTS" --out "$OUT" ${ONLY:+--only "$ONLY"} \
    --meta nproc="$(nproc)" \
    --meta cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
    --meta kernel="$(uname -r)" \
    --meta nginx="$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')" \
    --meta rev="$REV" --meta dirty="$DIRTY" \
    --meta duration="$DURATION" --meta warmup="$WARMUP" --meta reps="$REPS" --meta window="$WINDOW" \
    --meta duration_large="$DURATION_LARGE" --meta cap_warmup="$CAP_WARMUP" \
    --meta nofile="$NOFILE" --meta cpu_method="$CPU_METHOD" \
    --meta started="$(date -d @"$T_START" '+%Y-%m-%d %H:%M:%S %Z')" \
    --meta runtime_s=$((T_END - T_START)) \
    --meta loadavg="$(cut -d' ' -f1-3 /proc/loadavg)" \
    --meta retries="$(wc -l 2>/dev/null <"$RUN/retries.txt" || echo 0)" --meta nice="$NICE" --meta rt="$RT" \
    --meta sched_rt_runtime_us="$(cat /proc/sys/kernel/sched_rt_runtime_us 2>/dev/null || echo '?')" \
    --meta deflate_idle="$DEFLATE_IDLE"
log "total runtime $((T_END - T_START)) s; report: $OUT"
