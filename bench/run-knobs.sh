#!/usr/bin/env bash
# One Conclave knob at a time on a 3-node loopback cluster, each variant measured right
# after the baseline (the server's defaults) in the same invocation, with the machine's
# floor at the start and at the end. Short runs (DURATION seconds each) so the sweep fits
# in about half an hour on the 2-core machine. Writes OUT/<knob>-<value>-<workload>.{txt,json,svg};
# each text starts with the load average and the exact command.
#
# Usage: bench/run-knobs.sh [OUT]           (from the repository root)
# Environment: DURATION (default 5), CONCLAVE and BENCH (default: release builds),
#   KNOBS (default "shards partitions spin timing segment sync"; any subset, in that order),
#   KEEP_LOGS=1 (copy the servers' logs into OUT/logs; CONCLAVE_LOG sets their level).
set -euo pipefail

OUT=${1:-bench-results/knobs-$(date -u +%Y%m%dT%H%M%SZ)}
DURATION=${DURATION:-5}
KNOBS=${KNOBS:-shards partitions spin timing segment sync}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
begin_run knobs

ensure_binaries
echo "results in $OUT; scratch in $WORK"
PARTITIONS=16
SESSION_TIMEOUT_MS=5000

fresh_tag() { # BASE: BASE, or BASE-2, BASE-3... if a run of that name exists already
    local tag=$1 n=1
    while compgen -G "$OUT/$tag-*.json" >/dev/null; do n=$((n + 1)); tag=$1-$n; done
    echo "$tag"
}
knob() { # KNOB: whether KNOBS selects it
    [[ " $KNOBS " == *" $1 "* ]]
}
# A fresh 3-node cluster with the defaults changed by FLAGS...
cluster() {
    conclave_stop
    conclave_start 3 --partitions "$PARTITIONS" --session-timeout-ms "$SESSION_TIMEOUT_MS" "$@"
    echo "cluster: ${CONCLAVE_NODE_ARGS[*]}" | tee -a "$OUT/clusters.txt"
}
churn64() { bench_run "$1-churn-64" churn --endpoints "$(conclave_endpoints)" -c 64 -e 1000 -d "$DURATION"; }
read64() { bench_run "$1-read-64" read --endpoints "$(conclave_endpoints)" -c 64 -e 1000 -d "$DURATION"; }
enter1() { bench_run "$1-enter-1" churn --endpoints "$(conclave_endpoints)" -c 1 -e 1000 -d "$DURATION"; }

bench_floor floor-start

if knob shards; then
    # Shards per node: 2 (one per core, the default before loopback nodes shared the cores)
    # against 1 (the default since on this 2-core machine), twice each, alternated.
    for shards in 2 1 2 1; do
        tag=$(fresh_tag "shards-$shards")
        cluster --shards "$shards"
        churn64 "$tag"; read64 "$tag"; enter1 "$tag"
    done
fi
if knob partitions; then
    for PARTITIONS in 16 4 64; do
        cluster
        churn64 "partitions-$PARTITIONS"; enter1 "partitions-$PARTITIONS"
    done
    PARTITIONS=16
fi
if knob spin; then
    for spin in 0 50 0 50; do
        tag=$(fresh_tag "spin-$spin")
        cluster --spin-before-park-us "$spin"
        enter1 "$tag"; churn64 "$tag"
    done
fi
if knob timing; then
    # Election timing and session timeout against a node kill: two kills per setting
    # (nodes 1 and 2, each restarted after), 4 candidacy elections of 2 watchers each.
    for setting in "10 15 5000" "5 10 5000" "20 15 5000" "10 15 2000" "5 10 1000"; do
        read -r tick ticks SESSION_TIMEOUT_MS <<<"$setting"
        cluster --tick-ms "$tick" --election-ticks "$ticks"
        for node in 1 2; do
            conclave_kill_run "timing-tick$tick-x$ticks-session$SESSION_TIMEOUT_MS-kill$node" "$node" \
                --elections 4 --watchers 2
        done
    done
    SESSION_TIMEOUT_MS=5000
fi
if knob segment; then
    for bytes in 67108864 1048576; do
        cluster --segment-bytes "$bytes"
        churn64 "segment-$bytes"
    done
fi
if knob sync; then
    # How a log flush becomes durable: write + fdatasync (default) against O_DSYNC writes,
    # twice each, alternated.
    for mode in fdatasync dsync fdatasync dsync; do
        tag=$(fresh_tag "sync-$mode")
        cluster --log-sync "$mode"
        enter1 "$tag"; churn64 "$tag"
    done
fi
conclave_stop
bench_floor floor-end
echo "done: $OUT"
