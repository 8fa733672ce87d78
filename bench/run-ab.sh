#!/usr/bin/env bash
# Two server binaries on the same workloads, alternated (A, B, A, B, ...) on fresh 3-node
# loopback clusters with the default flags, so both see the same machine weather: for a
# change that has no flag to switch it. Writes OUT/<a|b>-<round>-<workload>.{txt,json,svg};
# each text starts with the load average and the exact command.
#
# Usage: bench/run-ab.sh OUT A_BINARY B_BINARY    (from the repository root)
# Environment: ROUNDS (default 2), DURATION (seconds per run, default 10),
#   WORKLOADS (default "read-64 watch"; any of churn-64 read-64 enter-1 watch),
#   BENCH (default target/release/conclave-bench), CONCLAVE_FLAGS (flags for every node of
#   both sides, word-split; e.g. "--shards 2" to compare a build from before the loopback
#   shard default with one after it on the same shard count).
set -euo pipefail

OUT=$1
A=$2
B=$3
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
WORKLOADS=${WORKLOADS:-read-64 watch}
BENCH=${BENCH:-target/release/conclave-bench}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
begin_run ab
echo "A: $A"$'\n'"B: $B" | tee "$OUT/binaries.txt"

workload() { # TAG WORKLOAD (each run reports the nodes' CPU per operation)
    local endpoints pids
    endpoints=$(conclave_endpoints)
    pids=$(IFS=,; echo "${CONCLAVE_NODE_PIDS[*]}")
    case $2 in
        churn-64) bench_run "$1-churn-64" churn --endpoints "$endpoints" -c 64 -e 1000 -d "$DURATION" --server-pids "$pids" ;;
        read-64) bench_run "$1-read-64" read --endpoints "$endpoints" -c 64 -e 1000 -d "$DURATION" --server-pids "$pids" ;;
        enter-1) bench_run "$1-enter-1" churn --endpoints "$endpoints" -c 1 -e 1000 -d "$DURATION" --server-pids "$pids" ;;
        watch) bench_run "$1-watch" watch --endpoints "$endpoints" -e 8 -w 4 -d "$DURATION" --server-pids "$pids" ;;
        *) echo "unknown workload $2" >&2; exit 2 ;;
    esac
}
for ((round = 1; round <= ROUNDS; round++)); do
    for side in a b; do
        if [[ $side == a ]]; then CONCLAVE=$A; else CONCLAVE=$B; fi
        # shellcheck disable=SC2086 # CONCLAVE_FLAGS is word-split on purpose
        conclave_start 3 --partitions 16 --session-timeout-ms 5000 ${CONCLAVE_FLAGS:-}
        for w in $WORKLOADS; do workload "$side-$round" "$w"; done
        conclave_stop
    done
done
echo "done: $OUT"
