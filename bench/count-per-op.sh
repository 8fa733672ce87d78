#!/usr/bin/env bash
# What one operation of a workload costs in counts that do not depend on the machine: runs
# one conclave-bench workload on a fresh 3-node loopback cluster, scrapes every node's
# /metrics before and after it, and divides each counter's growth (summed over the nodes,
# over shards and peers) by the operations the bench completed: Raft messages by type,
# peer batches, loop rounds, log writes, edge calls and timers. The run's own ops/s and
# server CPU per op are in OUT/run.txt beside them.
#
# Usage: bench/count-per-op.sh OUT WORKLOAD ARGS...   e.g. ... OUT read -c 64 -e 1000
# Environment: DURATION (default 10), WARMUP (seconds of the same workload run first and
#   not counted, default 0), CALLER_NODES (the nodes whose client endpoints the callers
#   use, e.g. "1"; default all three), CONCLAVE_FLAGS (word-split flags for every node),
#   CONCLAVE and BENCH (binaries).
set -euo pipefail

OUT=$1
shift
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONCLAVE=${CONCLAVE:-target/release/conclave}
BENCH=${BENCH:-target/release/conclave-bench}
# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
begin_run count

scrape() { # TAG: every node's metrics into OUT/metrics-TAG-N.txt
    local n
    for ((n = 1; n <= 3; n++)); do
        curl -sf "http://127.0.0.1:$(conclave_metrics_port "$n")/metrics" >"$OUT/metrics-$1-$n.txt"
    done
}

# shellcheck disable=SC2206 # word splitting of extra flags is the point
conclave_start 3 --partitions 16 ${CONCLAVE_FLAGS:-}
pids=$(IFS=,; echo "${CONCLAVE_NODE_PIDS[*]}")
endpoints=$(conclave_endpoints)
if [[ -n ${CALLER_NODES:-} ]]; then # only these nodes' client endpoints
    endpoints=$(for n in $CALLER_NODES; do echo "127.0.0.1:$(conclave_client_port "$n")"; done | paste -sd,)
fi
if ((WARMUP > 0)); then # the same workload first, unmeasured (e.g. for leaderships to move)
    bench_run warmup "$@" --endpoints "$endpoints" -d "$WARMUP"
fi
scrape before
bench_run run "$@" --endpoints "$endpoints" -d "$DURATION" --server-pids "$pids"
scrape after
python3 "$HERE/count-per-op.py" "$OUT" | tee "$OUT/per-op.txt"
