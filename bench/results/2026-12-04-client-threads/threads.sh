#!/usr/bin/env bash
# Alternates the bench's client runtime (2 threads vs 1) against one Conclave cluster and one etcd.
set -euo pipefail
OUT=$1; ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}
HERE=/work/main/bench
CONCLAVE=/work/main/target/release/conclave BENCH=/work/main/target/release/conclave-bench
source "$HERE/cluster.sh"
begin_run threads
cd /work/main
PARTITIONS=16 SESSION_TIMEOUT_MS=5000
etcd_start
conclave_start 3 --partitions 16 --session-timeout-ms 5000
CE=$(conclave_endpoints)
cp() { local IFS=,; echo "${CONCLAVE_NODE_PIDS[*]}"; }
ep() { local IFS=,; echo "${ETCD_MEMBER_PIDS[*]}"; }
for w in ${WORKLOADS:-enter-1}; do
  case $w in enter-1) wargs=(churn -c 1 -e 1000);; churn-64) wargs=(churn -c 64 -e 1000);; read-64) wargs=(read -c 64 -e 1000);; esac
  bench_run warm-c-$w "${wargs[@]}" --endpoints "$CE" -d 5
  bench_run warm-e-$w "${wargs[@]}" --target etcd --endpoints "$ETCD_ENDPOINTS" -d 5
  for ((r=1;r<=ROUNDS;r++)); do
    for t in 2 1; do
      bench_run c-$w-t$t-r$r "${wargs[@]}" --endpoints "$CE" -d $DURATION --client-threads $t --server-pids "$(cp)"
      bench_run e-$w-t$t-r$r "${wargs[@]}" --target etcd --endpoints "$ETCD_ENDPOINTS" -d $DURATION --client-threads $t --server-pids "$(ep)"
    done
  done
done
