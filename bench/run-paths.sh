#!/usr/bin/env bash
# Where one caller's Enter spends its time on a 3-node loopback cluster: the same single
# caller (connected to node 1) on one election whose partition is led by node 1 itself or
# by node 2, on each of a node's shards, with 2 shards per node and with 1; the machine's
# floor first and last. Election names are chosen by partition (partition of NAME-0 =
# crc32("NAME-0") % 16 + 1, e.g. `python3 -c 'import zlib; print(zlib.crc32(b"lat1-0") % 16 + 1)'`);
# preferred leaders: partition g on node (g-1) % 3 + 1, shard (g-1) % shards. The cluster
# is given 5 s to rebalance its leaderships before the runs.
#
# Usage: bench/run-paths.sh [OUT]     Environment: DURATION (default 5), CONCLAVE, BENCH.
set -euo pipefail
OUT=${1:-bench-results/paths-$(date -u +%Y%m%dT%H%M%SZ)}
DURATION=${DURATION:-5}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONCLAVE=${CONCLAVE:-target/release/conclave}
BENCH=${BENCH:-target/release/conclave-bench}
# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
begin_run paths

# prefix → partition of PREFIX-0 among 16
declare -A PREFIX=([1]=lat1 [2]=lat13 [4]=lat15 [5]=lat14)
one() { # NAME PARTITION
    bench_run "$1" churn --endpoints "127.0.0.1:$(conclave_client_port 1)" -c 1 -e 1 \
        --name-prefix "${PREFIX[$2]}" -d "$DURATION"
}
bench_floor floor-start
for shards in 2 1; do
    conclave_stop
    conclave_start 3 --partitions 16 --shards "$shards"
    sleep 5
    if [[ $shards == 2 ]]; then
        one shards2-local-same-shard-p1 1     # node 1 leads, shard 0
        one shards2-local-other-shard-p4 4    # node 1 leads, shard 1
        one shards2-remote-p5 5               # node 2 leads, shard 0
        one shards2-remote-p2 2               # node 2 leads, shard 1
    else
        one shards1-local-p1 1
        one shards1-remote-p2 2
    fi
done
conclave_stop
bench_floor floor-end
