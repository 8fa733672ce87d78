#!/usr/bin/env bash
# Conclave vs etcd with one client (conclave-bench), on this machine, loopback only.
#
# Starts a 3-member etcd (Debian package etcd-server, installed if missing) and a Conclave
# node (single node until multi-node clusters land), measures the machine's floor
# (fdatasync of 4 KiB on the disk of the data directories, loopback round trip), runs the
# same workloads against both, writes one JSON + SVG per run into OUT, and stops everything
# it started on exit (trap), whatever happens.
#
# Usage: bench/run-comparison.sh [OUT]          (from the repository root)
# Environment: DURATION (seconds per run, default 10), CONCLAVE and BENCH (binaries;
# default: built with `cargo build --release`), CONCLAVE_SHARDS (default: cores).
set -euo pipefail

OUT=${1:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
DURATION=${DURATION:-10}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/conclave-comparison.XXXXXX")
PIDS=()

stop_all() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap stop_all EXIT INT TERM

if ! command -v etcd >/dev/null; then
    echo "etcd is missing; installing etcd-server:"
    apt-cache policy etcd-server
    apt-get install -y etcd-server
fi
if [[ -z "${CONCLAVE:-}" || -z "${BENCH:-}" ]]; then
    cargo build --release -p conclave-server --bin conclave
    cargo build --release -p conclave-bench
    TARGET_DIR=${CARGO_TARGET_DIR:-target}
    CONCLAVE=${CONCLAVE:-$TARGET_DIR/release/conclave}
    BENCH=${BENCH:-$TARGET_DIR/release/conclave-bench}
fi
mkdir -p "$OUT"
echo "results in $OUT; scratch in $WORK"

# --- etcd: three members on loopback ------------------------------------------------------
ETCD_CLUSTER="e1=http://127.0.0.1:22380,e2=http://127.0.0.1:22480,e3=http://127.0.0.1:22580"
ETCD_ENDPOINTS="127.0.0.1:22379,127.0.0.1:22479,127.0.0.1:22579"
for member in 1 2 3; do
    client_port=$((22279 + 100 * member))
    peer_port=$((22280 + 100 * member))
    etcd --name "e$member" --data-dir "$WORK/etcd-$member" \
        --listen-client-urls "http://127.0.0.1:$client_port" \
        --advertise-client-urls "http://127.0.0.1:$client_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
        --initial-cluster-token conclave-bench >"$WORK/etcd-$member.log" 2>&1 &
    PIDS+=($!)
done

# --- Conclave: one node -------------------------------------------------------------------
SHARD_ARGS=()
if [[ -n "${CONCLAVE_SHARDS:-}" ]]; then SHARD_ARGS=(--shards "$CONCLAVE_SHARDS"); fi
"$CONCLAVE" serve --data-dir "$WORK/conclave" --listen 127.0.0.1:25678 \
    --admin-listen 127.0.0.1:25679 --peers 1=127.0.0.1:25680 "${SHARD_ARGS[@]}" \
    >"$WORK/conclave.log" 2>&1 &
PIDS+=($!)
CONCLAVE_ENDPOINTS="127.0.0.1:25678"

wait_for() { # DESCRIPTION COMMAND...: retries for 30 s
    local what=$1
    shift
    for _ in $(seq 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "$what did not become ready; logs in $WORK:" >&2
    tail -n 20 "$WORK"/*.log >&2
    exit 1
}
for port in 22379 22479 22579; do
    wait_for "etcd on $port" bash -c "curl -sf http://127.0.0.1:$port/health | grep -q '\"health\":\"true\"'"
done
wait_for "conclave" grep -q "ready" "$WORK/conclave.log"

# --- the floor of this machine, on the disk of the data directories ----------------------
"$BENCH" floor --dir "$WORK" --json "$OUT/floor.json" | tee "$OUT/floor.txt"

# --- the same workloads against both ------------------------------------------------------
run() { # NAME TARGET ENDPOINTS WORKLOAD ARGS...
    local name=$1 target=$2 endpoints=$3 workload=$4
    shift 4
    echo "== $name: conclave-bench $workload --target $target $*"
    "$BENCH" "$workload" --target "$target" --endpoints "$endpoints" --duration "$DURATION" \
        --quiet --json "$OUT/$name.json" "$@" | tee "$OUT/$name.txt"
}
for target in conclave etcd; do
    if [[ $target == conclave ]]; then endpoints=$CONCLAVE_ENDPOINTS; else endpoints=$ETCD_ENDPOINTS; fi
    run "$target-churn-64" "$target" "$endpoints" churn --concurrency 64 --elections 1000
    run "$target-read-64" "$target" "$endpoints" read --concurrency 64 --elections 1000
    run "$target-enter-1" "$target" "$endpoints" churn --concurrency 1 --elections 1000
    run "$target-watch" "$target" "$endpoints" watch --elections 8 --watchers 4
    # etcd learns that a client is gone when its lease expires: the shortest TTL etcd's
    # default timing allows (about 1.5 s) rounded up; Conclave ignores the flag.
    run "$target-failover" "$target" "$endpoints" failover --elections 8 --watchers 4 --lease-ttl 2
done
echo "done: $OUT"
