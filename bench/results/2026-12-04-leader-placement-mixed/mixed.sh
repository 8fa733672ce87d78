#!/usr/bin/env bash
# Nodes that disagree on --leader-placement (a rolling change): node 2 packed, 1 and 3 spread.
set -euo pipefail
OUT=$1
HERE=/work/main/bench
CONCLAVE=/work/main/target/release/conclave BENCH=/work/main/target/release/conclave-bench
source "$HERE/cluster.sh"
begin_run mixed
cd /work/main
conclave_start 3 --partitions 16
led() { for n in 1 2 3; do curl -sf "http://127.0.0.1:$(conclave_metrics_port $n)/metrics" | grep '^conclave_server_is_leader' | grep -c ' 1$' || true; done | paste -sd/; }
changes() { for n in 1 2 3; do curl -sf "http://127.0.0.1:$(conclave_metrics_port $n)/metrics" | awk '/^conclave_server_leader_changes_seen_total/ {print $2}'; done | paste -sd/; }
sleep 6; echo "spread, settled: led by node $(led); leader changes seen $(changes)"
kill -TERM "${CONCLAVE_NODE_PIDS[2]}"; wait "${CONCLAVE_NODE_PIDS[2]}" 2>/dev/null || true
CONCLAVE_NODE_ARGS+=(--leader-placement pack)
conclave_restart_node 2
for t in 5 10 15 20 25 30; do sleep 5; echo "t=${t}s after node 2 restarted packed: led by node $(led); leader changes seen $(changes)"; done
