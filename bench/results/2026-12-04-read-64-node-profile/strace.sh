#!/usr/bin/env bash
set -euo pipefail
OUT=$1; W=${W:-read}
HERE=/work/main/bench
CONCLAVE=/work/main/target/release/conclave BENCH=/work/main/target/release/conclave-bench
source "$HERE/cluster.sh"
begin_run strace
cd /work/main
conclave_start 3 --partitions 16 --session-timeout-ms 5000
CE=$(conclave_endpoints)
"$BENCH" $W -c 64 -e 1000 --endpoints "$CE" -d 5 --quiet >/dev/null
"$BENCH" $W -c 64 -e 1000 --endpoints "$CE" -d 12 --quiet > $OUT/bench.txt &
b=$!
sleep 3
for n in 1 2 3; do timeout 4 strace -c -f -p ${CONCLAVE_NODE_PIDS[$n]} -o $OUT/strace-$n.txt & done
wait $b
sleep 1
