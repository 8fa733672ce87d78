#!/usr/bin/env bash
set -euo pipefail
OUT=$1; W=${W:-read}
HERE=/work/main/bench
CONCLAVE=/work/main/target/release/conclave BENCH=/work/main/target/release/conclave-bench
source "$HERE/cluster.sh"
begin_run tcpu
cd /work/main
conclave_start 3 --partitions 16 --session-timeout-ms 5000
CE=$(conclave_endpoints)
"$BENCH" $W -c 64 -e 1000 --endpoints "$CE" -d 3 --quiet >/dev/null
"$BENCH" $W -c 64 -e 1000 --endpoints "$CE" -d 8 --quiet > $OUT/bench.txt &
b=$!
sleep 2
p=${CONCLAVE_NODE_PIDS[1]}
snap() { for t in /proc/$p/task/*; do echo "$(basename $t) $(cat $t/comm) $(awk '{print $14+$15}' $t/stat) $(grep -E 'voluntary' $t/status | awk '{print $2}' | tr '\n' ' ')"; done; }
tid=$(ls /proc/$p/task | while read t; do [[ $(cat /proc/$p/task/$t/comm) == conclave-shard- ]] && echo $t && break; done); perf record -F 2000 -g -t $tid -o $OUT/perf.data -- sleep 4 2>/dev/null
wait $b
join $OUT/before.txt $OUT/after.txt > $OUT/threads.txt || true
