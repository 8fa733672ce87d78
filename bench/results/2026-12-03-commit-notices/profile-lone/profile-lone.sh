#!/usr/bin/env bash
# The profile of one caller on 3 nodes (1 shard each) behind tuning.md "Held commit notices":
# perf record -a -g for 4 s of a lone churn caller on node 1. Usage (repo root): bash THIS OUT
set -euo pipefail
OUT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)  # bench/
CONCLAVE=${CONCLAVE:-target/release/conclave}
BENCH=${BENCH:-target/release/conclave-bench}
source "$HERE/cluster.sh"
begin_run prof
conclave_start 3 --partitions 16 --shards 1
sleep 10
echo "${CONCLAVE_NODE_PIDS[1]} ${CONCLAVE_NODE_PIDS[2]} ${CONCLAVE_NODE_PIDS[3]}" >"$OUT/pids"
"$BENCH" churn --endpoints "127.0.0.1:$(conclave_client_port 1)" -c 1 -e 1 --name-prefix lat1 \
    -d 8 --quiet --json "$OUT/run.json" >"$OUT/run.txt" &
bench_pid=$!
PIDS+=("$bench_pid")
sleep 2.5
perf record -F 1999 -g -a -o "$OUT/perf.data" -- sleep 4 2>"$OUT/perf-record.log"
perf stat -e context-switches,cpu-migrations -p "$(cat $OUT/pids | tr ' ' ,)" -- sleep 2 2> "$OUT/stat.txt" || true
wait "$bench_pid"
cat "$OUT/run.txt"
