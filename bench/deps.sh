#!/usr/bin/env bash
# Installs what bench/run.sh needs, when missing. Idempotent; run as root.
#
#   valgrind     callgrind: instructions per message where perf has no counters
#   linux-perf   perf stat, used instead of callgrind when the CPU counters work
#   util-linux   taskset            procps   pgrep, ps
#   iproute2     ss                 python3  the report
#   redis-server the fan-out benchmark's Redis sections (bench/fanout.sh)
set -euo pipefail

packages=(valgrind linux-perf util-linux procps iproute2 python3 redis-server)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench/deps.sh: missing packages: ${missing[*]} (run as root)" >&2
        exit 1
    fi
    echo "bench/deps.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "bench/deps.sh: cargo is required" >&2; exit 1; }
echo "bench/deps.sh: ok"
