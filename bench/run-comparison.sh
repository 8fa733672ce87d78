#!/usr/bin/env bash
# Conclave vs etcd with one client (conclave-bench), on this machine, loopback only.
#
# Starts a 3-member etcd (Debian package etcd-server, installed if missing) and a 3-node
# Conclave cluster (CONCLAVE_NODES=1: a single node), waits until every etcd member is
# healthy and every Conclave node printed `conclave: ready`, measures the machine's floor
# (fdatasync of 4 KiB on the disk of the data directories, loopback round trip) at the
# start and at the end, runs the same workloads against both (callers spread round-robin
# over every node's client endpoint; Conclave then etcd for each workload, so the two
# compare under the same machine load), then kills a node of each system KILLS times
# (Conclave: the nodes in turn, restarted after each kill; etcd: its current leader) and
# measures failover; OUT/summary.txt then tabulates both systems and issue 13's targets
# (bench/comparison-summary.py). Every load run reports the servers' CPU per operation (user + system
# time of every node or member from /proc/PID/stat over the measured phase, beside ops/s and
# latency). Writes one JSON + SVG + text per run into OUT, with the exact command
# and the load average in each text, and stops everything it started on exit (trap),
# whatever happens.
#
# Usage: bench/run-comparison.sh [OUT]          (from the repository root)
# Environment:
#   DURATION            seconds per run (default 10)
#   WARMUP              seconds of each workload run first against the same system, not
#                       measured (default 0; e.g. so leaderships that follow a workload have
#                       moved; not before the kill runs)
#   CONCLAVE, BENCH     binaries (default: built with `cargo build --release`)
#   CONCLAVE_NODES      3 (default) or 1
#   CONCLAVE_SHARDS     --shards of every node (default: the server's: the cores divided among
#                       the nodes, since they all listen on loopback; at least 1)
#   CONCLAVE_PARTITIONS --partitions (default 16)
#   CONCLAVE_SESSION_TIMEOUT_MS  --session-timeout-ms (default 5000)
#   CONCLAVE_FLAGS      more flags for every node, word-split (e.g. "--spin-before-park-us 50")
#   KILLS               node-kill runs per system (default 3; 0: none)
#   KILL_WAIT_BALANCED  1 (default): before each Conclave kill, wait until every partition is
#                       led by its preferred node (the node restarted after the previous kill
#                       has caught up); 0: kill as soon as the killed node leads its share
#   ONLY                run only these runs (space-separated names or globs, e.g.
#                       "*-churn-64 conclave-kill-*"); floors always run
#   KEEP_LOGS=1         copy the servers' logs into OUT/logs (CONCLAVE_LOG sets their level,
#                       e.g. info,conclave_wire=debug for peer connection events)
set -euo pipefail

OUT=${1:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-0}
NODES=${CONCLAVE_NODES:-3}
PARTITIONS=${CONCLAVE_PARTITIONS:-16}
SESSION_TIMEOUT_MS=${CONCLAVE_SESSION_TIMEOUT_MS:-5000}
KILLS=${KILLS:-3}
ONLY=${ONLY:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
begin_run comparison

if [[ $NODES != 1 && $NODES != 3 ]]; then
    echo "CONCLAVE_NODES is 1 or 3" >&2
    exit 2
fi
if ! command -v etcd >/dev/null; then
    echo "etcd is missing; installing etcd-server:"
    apt-cache policy etcd-server
    apt-get install -y etcd-server
fi
ensure_binaries
echo "results in $OUT; scratch in $WORK"

# --- the two systems --------------------------------------------------------------------
CONCLAVE_ARGS=(--partitions "$PARTITIONS" --session-timeout-ms "$SESSION_TIMEOUT_MS")
if [[ -n "${CONCLAVE_SHARDS:-}" ]]; then CONCLAVE_ARGS+=(--shards "$CONCLAVE_SHARDS"); fi
# shellcheck disable=SC2206 # word splitting of extra flags is the point
if [[ -n "${CONCLAVE_FLAGS:-}" ]]; then CONCLAVE_ARGS+=($CONCLAVE_FLAGS); fi
etcd_start
conclave_start "$NODES" "${CONCLAVE_ARGS[@]}"
CONCLAVE_ENDPOINTS=$(conclave_endpoints)
{
    echo "conclave: $NODES node(s): $CONCLAVE serve ${CONCLAVE_ARGS[*]} (plus per-node ids, ports and data directories)"
    echo "conclave endpoints: $CONCLAVE_ENDPOINTS"
    echo "etcd: $(etcd --version 2>&1 | sed -n 1p), endpoints $ETCD_ENDPOINTS"
    echo "machine: $(nproc) cores; $(machine_load)"
} | tee "$OUT/setup.txt"

selected() { # NAME: whether ONLY lets this run through
    [[ -z $ONLY ]] && return 0
    local pattern
    for pattern in $ONLY; do
        # shellcheck disable=SC2053 # glob match on purpose
        [[ $1 == $pattern ]] && return 0
    done
    return 1
}

# --- the floor of this machine, on the disk of the data directories ----------------------
bench_floor floor-start

# --- the same workloads against both ------------------------------------------------------
server_pids() { # TARGET: the system's server processes, comma-separated
    local IFS=,
    if [[ $1 == conclave ]]; then echo "${CONCLAVE_NODE_PIDS[*]}"; else echo "${ETCD_MEMBER_PIDS[*]}"; fi
}
# Each run reports its system's server CPU over the measured phase, per operation
# (--server-pids: /proc/PID/stat of every node or member).
run() { # NAME TARGET ENDPOINTS WORKLOAD ARGS...
    local name=$1 target=$2 endpoints=$3 workload=$4
    shift 4
    selected "$name" || return 0
    if ((WARMUP > 0)); then # the same run first, unmeasured and not reported
        bench_run "warmup-$name" "$workload" --target "$target" --endpoints "$endpoints" \
            --duration "$WARMUP" "$@"
    fi
    bench_run "$name" "$workload" --target "$target" --endpoints "$endpoints" \
        --duration "$DURATION" --server-pids "$(server_pids "$target")" "$@"
}
both() { # NAME WORKLOAD ARGS...: the run against Conclave, then against etcd
    local name=$1
    shift
    run "conclave-$name" conclave "$CONCLAVE_ENDPOINTS" "$@"
    run "etcd-$name" etcd "$ETCD_ENDPOINTS" "$@"
}
both churn-64 churn --concurrency 64 --elections 1000
both read-64 read --concurrency 64 --elections 1000
both enter-1 churn --concurrency 1 --elections 1000
both watch watch --elections 8 --watchers 4
# etcd learns that a client is gone when its lease expires: the shortest TTL etcd's default
# timing allows (about 1.5 s) rounded up; Conclave ignores the flag.
both failover failover --elections 8 --watchers 4 --lease-ttl 2

# --- node kills: Conclave's nodes in turn (each restarted after), etcd's leader -------------
if [[ $NODES -gt 1 ]]; then
    for ((k = 1; k <= KILLS; k++)); do
        selected "conclave-kill-$k" || continue
        conclave_kill_run "conclave-kill-$k" $(((k - 1) % NODES + 1)) --elections 4 --watchers 2
    done
fi
for ((k = 1; k <= KILLS; k++)); do
    selected "etcd-kill-$k" || continue
    leader=$(etcd_leader_member) || { echo "no etcd leader found" >&2; exit 1; }
    # etcd is one Raft group: 2 probes (up to 1,024 requests in flight each) are enough.
    run "etcd-kill-$k" etcd "$ETCD_ENDPOINTS" failover --elections 1 \
        --kill-pid "${ETCD_MEMBER_PIDS[leader]}" \
        --kill-endpoint "127.0.0.1:$((22279 + 100 * leader))" --partitions 2
    etcd_restart_member "$leader"
    sleep 2
done

bench_floor floor-end
python3 "$HERE/comparison-summary.py" "$OUT" | tee "$OUT/summary.txt"
echo "done: $OUT"
