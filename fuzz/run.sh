#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails if any of them crashed.
#
#   fuzz/run.sh [SECONDS [TARGET...]]
#
# SECONDS per target: the argument, else $FUZZ_SECONDS, else 300. TARGETs:
# all of them unless named. Other knobs (environment):
#   FUZZ_SANITIZER  cargo-fuzz sanitizer (default none: protocol/'s only
#                   unsafe code is its thin zlib wrapper, and ASan cuts executions ~3.5x, 2.1k against
#                   7.7k/s for frame_decoder here; the targets' allocator
#                   catches over-limit allocations without it)
#   FUZZ_MAX_LEN    libFuzzer -max_len (default 4096)
#   FUZZ_MERGE=1    afterwards, add the inputs that reached new edges to the
#                   committed corpus (fuzz/corpus/<target>/); the hand-made
#                   seeds there come from fuzz/seeds.py
#
# Needs only the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz use its
# nightly flags. cargo-fuzz is installed from crates.io when missing. Builds go
# to fuzz/target/; the working corpus grows in fuzz/target/corpus/<target>/
# (the committed corpus is only read); crashes are kept in
# fuzz/artifacts/<target>/ and logs in fuzz/target/logs/.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SECONDS_PER_TARGET="${1:-${FUZZ_SECONDS:-300}}"
shift || true
ALL_TARGETS=(frame_decoder frame_roundtrip utf8 server_handshake client_response deflate redis_resp)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
SANITIZER="${FUZZ_SANITIZER:-none}"
MAX_LEN="${FUZZ_MAX_LEN:-4096}"

case "$SECONDS_PER_TARGET" in
    ''|*[!0-9]*) echo "run.sh: SECONDS must be a whole number, got '$SECONDS_PER_TARGET'" >&2; exit 2 ;;
esac

export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1
unset CARGO_TARGET_DIR
# libfuzzer-sys compiles libFuzzer (C++) with the `cc` crate: `c++` (g++) or,
# failing that, clang++ (which the module's build already needs).
if [ -z "${CXX:-}" ] && ! command -v c++ >/dev/null 2>&1 && command -v clang++ >/dev/null 2>&1; then
    export CXX=clang++
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

TARGET_DIR="$FUZZ_DIR/target"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="$TARGET_DIR/$TRIPLE/release"
LOG_DIR="$TARGET_DIR/logs"
mkdir -p "$LOG_DIR"

echo "== building fuzz targets (sanitizer: $SANITIZER)"
build_start=$(date +%s)
cargo fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER" --release \
    --debug-assertions --target-dir "$TARGET_DIR" --target "$TRIPLE"
echo "   built in $(( $(date +%s) - build_start )) s"

failed=()
summary=()
for target in "${TARGETS[@]}"; do
    bin="$BIN_DIR/$target"
    if [ ! -x "$bin" ]; then
        echo "run.sh: no fuzz target '$target' (have: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
    work="$TARGET_DIR/corpus/$target"
    seeds="$FUZZ_DIR/corpus/$target"
    artifacts="$FUZZ_DIR/artifacts/$target"
    log="$LOG_DIR/$target.log"
    mkdir -p "$work" "$seeds" "$artifacts"
    dict=()
    if [ -f "$FUZZ_DIR/dicts/$target.dict" ]; then
        dict=("-dict=$FUZZ_DIR/dicts/$target.dict")
    fi
    marker="$LOG_DIR/.$target.start"
    touch "$marker"

    echo "== $target: ${SECONDS_PER_TARGET} s (log: $log)"
    status=0
    "$bin" -max_total_time="$SECONDS_PER_TARGET" -max_len="$MAX_LEN" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" \
        "${dict[@]}" "$work" "$seeds" >"$log" 2>&1 || status=$?

    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1) || true
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1) || true
    cov=$( (grep -Eo 'cov: [0-9]+' "$log" || true) | tail -1 | cut -d' ' -f2)
    new_artifacts=$(find "$artifacts" -type f -newer "$marker")
    result=ok
    if [ "$status" -ne 0 ] || [ -n "$new_artifacts" ]; then
        result="CRASHED (exit $status)"
        failed+=("$target")
        grep -E -A12 "panicked at|over-limit|ERROR: libFuzzer" "$log" | head -40 || true
        for a in $new_artifacts; do echo "   artifact: $a"; done
        echo "   reproduce: $bin <artifact>"
    fi
    summary+=("$(printf '%-18s %14s execs %10s exec/s  cov %-6s %s' \
        "$target" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$result")")

    if [ "${FUZZ_MERGE:-0}" = 1 ] && [ "$status" -eq 0 ]; then
        # Edges only (no hit counters): keeps the committed corpus small.
        "$bin" -merge=1 -use_counters=0 -max_len="$MAX_LEN" "$seeds" "$work" >>"$log" 2>&1
    fi
done

echo
echo "== fuzzing summary (${SECONDS_PER_TARGET} s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]} (artifacts under $FUZZ_DIR/artifacts/)"
    exit 1
fi
