#!/usr/bin/env bash
# Node kills that come soon after another node's restart, on a loaded 3-node loopback
# cluster: ROUNDS times, LOAD seconds of churn (64 callers, 1,000 elections), then nodes 1, 2
# and 3 killed in turn, each restarted on its data, the next kill 2 s after the previous
# node is ready again (no wait for it to catch up). Each kill is a `failover --kill-pid` run
# (`conclave_kill_run` in cluster.sh with KILL_WAIT_BALANCED=0). The servers' logs (with the
# shard loop's stall warnings) are kept in OUT/logs. This is the case where kills used to
# take 5-9 s (tuning.md, "Failover after a restart").
#
# Usage: bench/run-restart-kills.sh [OUT]       (from the repository root)
# Environment: ROUNDS (default 3), LOAD (seconds of churn before each round, default 45),
#   CONCLAVE and BENCH (default: release builds).
set -euo pipefail

OUT=${1:-bench-results/restart-kills-$(date -u +%Y%m%dT%H%M%SZ)}
ROUNDS=${ROUNDS:-3}
LOAD=${LOAD:-45}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
KEEP_LOGS=1
begin_run restart-kills

ensure_binaries
echo "results in $OUT; scratch in $WORK"
PARTITIONS=16
SESSION_TIMEOUT_MS=5000
conclave_start 3 --partitions "$PARTITIONS" --session-timeout-ms "$SESSION_TIMEOUT_MS"
for ((round = 1; round <= ROUNDS; round++)); do
    bench_run "churn-$round" churn --target conclave --endpoints "$(conclave_endpoints)" \
        --duration "$LOAD" --concurrency 64 --elections 1000
    for node in 1 2 3; do
        KILL_WAIT_BALANCED=0 conclave_kill_run "kill-$round-$node" "$node" --elections 4 --watchers 2
    done
done
conclave_stop
{
    echo "kill            leader_recovery p50 / max (ms)"
    for f in "$OUT"/kill-*.txt; do
        awk -v name="$(basename "$f" .txt)" '$1 == "leader_recovery" {printf "%-15s %.0f / %.0f\n", name, $3 / 1000, $7 / 1000}' "$f"
    done
} | tee "$OUT/summary.txt"
echo "done: $OUT"
