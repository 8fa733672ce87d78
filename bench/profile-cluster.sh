#!/usr/bin/env bash
# Where the time of a workload goes on a 3-node loopback cluster: runs one conclave-bench
# workload against a fresh cluster and, during PERF_SECONDS of its steady state, records
# - the CPU time of each node process and of the bench (from /proc/PID/stat), as a share
#   of the machine's cores;
# - the disk's flush requests (fdatasync reaching the device; /proc/diskstats field 16)
#   per second, against the workload's operations per second;
# - a system-wide `perf record -a -g`, summarized by process/thread and by symbol.
# Writes OUT/run.{txt,json,svg}, OUT/usage.txt, OUT/perf-*.txt (and OUT/perf.data).
#
# Usage: bench/profile-cluster.sh OUT WORKLOAD ARGS...     e.g. ... OUT churn -c 64 -e 1000
# Environment: DURATION (default 12), PERF_SECONDS (default 5, starting 3 s into the run),
#   CONCLAVE_FLAGS (word-split flags for every node), CONCLAVE and BENCH (binaries),
#   DISK (default: the device holding TMPDIR, e.g. vda).
set -euo pipefail

OUT=$1
shift
DURATION=${DURATION:-12}
PERF_SECONDS=${PERF_SECONDS:-5}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONCLAVE=${CONCLAVE:-target/release/conclave}
BENCH=${BENCH:-target/release/conclave-bench}
# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
begin_run profile
DISK=${DISK:-$(lsblk -no pkname "$(df --output=source "$WORK" | tail -1)" 2>/dev/null || true)}
DISK=${DISK:-$(basename "$(df --output=source "$WORK" | tail -1)")}

cpu_ticks() { # PID: utime + stime of every thread, in clock ticks
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
flushes() { awk -v d="$DISK" '$3 == d { print $19 }' /proc/diskstats; }

PARTITIONS=16
# shellcheck disable=SC2206 # word splitting of extra flags is the point
conclave_start 3 --partitions "$PARTITIONS" ${CONCLAVE_FLAGS:-}
machine_load | tee "$OUT/usage.txt"
command=("$BENCH" "$@" --endpoints "$(conclave_endpoints)" -d "$DURATION" --quiet
    --json "$OUT/run.json")
echo "\$ ${command[*]}" | tee -a "$OUT/usage.txt"
"${command[@]}" >"$OUT/run.txt" 2>&1 &
bench_pid=$!
PIDS+=("$bench_pid")
sleep 3
pids=("${CONCLAVE_NODE_PIDS[1]}" "${CONCLAVE_NODE_PIDS[2]}" "${CONCLAVE_NODE_PIDS[3]}" "$bench_pid")
names=(node1 node2 node3 bench)
before=()
for pid in "${pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
flush_before=$(flushes)
total_before=$(awk '/^cpu /{ print $2+$3+$4+$5+$6+$7+$8 }' /proc/stat)
idle_before=$(awk '/^cpu /{ print $5+$6 }' /proc/stat)
start_ns=$(date +%s%N)
perf record -a -g -F 499 -o "$OUT/perf.data" -- sleep "$PERF_SECONDS" 2>"$OUT/perf-record.log"
end_ns=$(date +%s%N)
flush_after=$(flushes)
total_after=$(awk '/^cpu /{ print $2+$3+$4+$5+$6+$7+$8 }' /proc/stat)
idle_after=$(awk '/^cpu /{ print $5+$6 }' /proc/stat)
hz=$(getconf CLK_TCK)
seconds=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { print (b - a) / 1e9 }')
{
    echo "window: ${seconds} s of the steady state (perf running, ~2% overhead at 499 Hz)"
    for i in "${!pids[@]}"; do
        after=$(cpu_ticks "${pids[i]}")
        awk -v n="${names[i]}" -v b="${before[i]}" -v a="$after" -v hz="$hz" -v s="$seconds" \
            'BEGIN { printf "%-6s CPU %.2f cores\n", n, (a - b) / hz / s }'
    done
    awk -v tb="$total_before" -v ta="$total_after" -v ib="$idle_before" -v ia="$idle_after" \
        'BEGIN { printf "machine busy: %.0f%% of all cores (idle+iowait %.0f%%)\n", 100 * (1 - (ia - ib) / (ta - tb)), 100 * (ia - ib) / (ta - tb) }'
    awk -v b="$flush_before" -v a="$flush_after" -v s="$seconds" -v d="$DISK" \
        'BEGIN { printf "disk %s flush requests: %.0f/s\n", d, (a - b) / s }'
} | tee -a "$OUT/usage.txt"
wait "$bench_pid" || true
cat "$OUT/run.txt"
perf report -i "$OUT/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
    grep -v '^$' | head -40 >"$OUT/perf-comm.txt"
perf report -i "$OUT/perf.data" --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null |
    grep -v '^$' | head -150 >"$OUT/perf-sym.txt"
echo "perf summaries in $OUT/perf-comm.txt and $OUT/perf-sym.txt"
