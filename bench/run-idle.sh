#!/usr/bin/env bash
# Idle cost of many partitions (issue 14), no clients anywhere:
#   1. one node, --partitions $PARTITIONS: time to ready, to quiet, CPU over $WINDOW s, RSS;
#      then a graceful restart on the same data: recovery time to ready, CPU, RSS;
#   2. the same node with --quiesce false (every partition heartbeats and is ticked);
#   4. three nodes, --partitions $PARTITIONS: CPU of each node over $WINDOW s; then kill -9
#      of node 1 with every partition quiet: per partition it led, the time until another
#      node reports leading it (`conclave-bench failover --probes 0`: nothing writes, so the
#      partitions stay quiet; leader reports from the survivors' Node API); then node 1
#      restarted on its data: time until it is ready again, and its CPU once quiet;
#   5. a baseline node with 16 partitions, for the RSS per idle partition;
#   3. (last) one node, --partitions $BIG.
# CPU is utime + stime of the process from /proc/PID/stat over the window, as % of one
# core. Every server logs at `warn,conclave::activity=info`; "stalls" counts `shard loop
# stalled` warnings, in all and in the measurement window (steady state). Every process
# started here is stopped on exit.
#
# Usage: bench/run-idle.sh [OUT]       (from the repository root)
# Environment: CONCLAVE (default target/release/conclave), BENCH (default
#   target/release/conclave-bench, for step 4's kill), PARTITIONS (10000), BIG (100000),
#   WINDOW (30), SETTLE (seconds between quiet and the window, for rebalancing transfers
#   to end; default 20), SHARDS (default: the server's:
#   the cores divided among the loopback nodes), STEPS (default "1 2 4 5 3"; step 3
#   needs 5 for its RSS per partition), EXTRA_ARGS (flags added to every node, e.g.
#   "--snapshot-every 1" to have every group snapshot as soon as it is led, or
#   "--quiesce false" for step 4 with every group heartbeating).
set -euo pipefail

OUT=${1:-bench-results/idle-$(date -u +%Y%m%dT%H%M%SZ)}
CONCLAVE=${CONCLAVE:-target/release/conclave}
BENCH=${BENCH:-target/release/conclave-bench}
PARTITIONS=${PARTITIONS:-10000}
BIG=${BIG:-100000}
WINDOW=${WINDOW:-30}
SETTLE=${SETTLE:-20}
STEPS=" ${STEPS:-1 2 4 5 3} "
step() { [[ "$STEPS" == *" $1 "* ]]; }
SHARD_ARGS=()
if [[ -n "${SHARDS:-}" ]]; then SHARD_ARGS=(--shards "$SHARDS"); fi
read -r -a EXTRA <<<"${EXTRA_ARGS:-}"
SHARD_ARGS+=("${EXTRA[@]}")
HZ=$(getconf CLK_TCK)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/conclave-idle.XXXXXX)
declare -A PID=()

stop_all() {
    for id in "${!PID[@]}"; do
        kill -9 "${PID[$id]}" 2>/dev/null || true
        wait "${PID[$id]}" 2>/dev/null || true
        unset "PID[$id]"
    done
}
cleanup() {
    stop_all
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

log() { echo "$*" | tee -a "$OUT/summary.txt"; }

[[ -x "$CONCLAVE" ]] || { echo "build it first: cargo build --release -p conclave-server" >&2; exit 1; }
log "# bench/run-idle.sh $(date -u +%FT%TZ) on $(hostname): $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
log "# CONCLAVE=$CONCLAVE PARTITIONS=$PARTITIONS BIG=$BIG WINDOW=$WINDOW node flags: ${SHARD_ARGS[*]:-}"

# Whether the nodes quiesce idle groups (not with EXTRA_ARGS="--quiesce false").
quiescing() { [[ " ${SHARD_ARGS[*]} " != *" --quiesce false "* ]]; }

# start NAME NODE_ID PEERS BASE_PORT PARTITIONS [extra flags]: a node logging to $OUT/NAME.log
start() {
    local name=$1 id=$2 peers=$3 base=$4 partitions=$5
    shift 5
    mkdir -p "$WORK/$name"
    CONCLAVE_LOG=warn,conclave::activity=info "$CONCLAVE" serve --node-id "$id" --peers "$peers" \
        --listen "127.0.0.1:$((base + 8))" --admin-listen "127.0.0.1:$((base + 9))" \
        --metrics-listen 127.0.0.1:0 --data-dir "$WORK/$name/data" --partitions "$partitions" "${SHARD_ARGS[@]}" "$@" \
        >>"$OUT/$name.log" 2>&1 &
    PID[$name]=$!
}

# wait_for NAME PATTERN TIMEOUT_S: until the node's log has a line matching PATTERN.
wait_for() {
    local name=$1 pattern=$2 limit=$3 waited=0
    until grep -q "$pattern" "$OUT/$name.log"; do
        kill -0 "${PID[$name]}" 2>/dev/null || { echo "$name exited:" >&2; tail -20 "$OUT/$name.log" >&2; exit 1; }
        sleep 0.2
        waited=$((waited + 1))
        ((waited < limit * 5)) || { echo "$name: no '$pattern' within ${limit}s" >&2; exit 1; }
    done
}

# awake NAME: the sum of `awake` over the latest activity line of each shard.
awake() {
    sed 's/\x1b\[[0-9;]*m//g' "$OUT/$1.log" | grep 'group activity' |
        sed -E 's/.* shard=([0-9]+) .* awake=([0-9]+) .*/\1 \2/' |
        awk '{last[$1] = $2} END {s = 0; n = 0; for (k in last) {s += last[k]; n++} if (n == 0) print -1; else print s}'
}

# wait_quiet NAME TIMEOUT_S: until every shard of the node reports no awake group.
wait_quiet() {
    local name=$1 limit=$2 start=$SECONDS
    until [[ "$(awake "$name")" == 0 ]]; do
        ((SECONDS - start < limit)) || { log "  $name: still $(awake "$name") awake groups after ${limit}s"; return 1; }
        sleep 0.5
    done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
stalls() { grep -c 'shard loop stalled' "$OUT/$1.log" || true; }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# measure NAME...: CPU % of one core of each node over WINDOW seconds, RSS, stall warnings.
measure() {
    local -A before=() stalls_before=()
    for name in "$@"; do
        before[$name]=$(cpu_ticks "${PID[$name]}")
        stalls_before[$name]=$(stalls "$name")
    done
    sleep "$WINDOW"
    for name in "$@"; do
        local used=$(($(cpu_ticks "${PID[$name]}") - before[$name]))
        local pct
        pct=$(awk -v t="$used" -v hz="$HZ" -v w="$WINDOW" 'BEGIN {printf "%.2f", 100 * t / hz / w}')
        log "  $name: cpu ${pct}% of a core over ${WINDOW}s; rss $(($(rss_kib "${PID[$name]}") / 1024)) MiB; stall warnings in the window $(($(stalls "$name") - stalls_before[$name])), in all $(stalls "$name"); awake groups $(awake "$name"); snapshot files $(find "$WORK/$name/data" -name '*.snap' 2>/dev/null | wc -l)"
    done
}

single() { # NAME PARTITIONS [flags]
    local name=$1 partitions=$2
    shift 2
    local t0
    t0=$(date +%s%N)
    start "$name" 1 "1=127.0.0.1:27100" 27100 "$partitions" "$@"
    wait_for "$name" "ready: every partition" 900
    log "  $name: ready (every partition led) after $(ms_since "$t0") ms"
    if [[ " $* " == *" --quiesce false "* ]]; then return; fi
    if wait_quiet "$name" 120; then log "  $name: quiet after $(ms_since "$t0") ms"; fi
    sleep "$SETTLE"
}

if step 1; then
log "## 1. one node, $PARTITIONS partitions"
single one "$PARTITIONS"
measure one
rss_first=$(rss_kib "${PID[one]}")
log "## 1b. graceful restart of that node on its data (recovery)"
kill -TERM "${PID[one]}"
wait "${PID[one]}" || true
unset "PID[one]"
rss_many=$rss_first
mv "$OUT/one.log" "$OUT/one-first-start.log"
t0=$(date +%s%N)
start one 1 "1=127.0.0.1:27100" 27100 "$PARTITIONS"
wait_for one "ready: every partition" 900
log "  one: recovered and ready after $(ms_since "$t0") ms (stall warnings so far: $(stalls one))"
if wait_quiet one 120; then log "  one: quiet after $(ms_since "$t0") ms"; fi
sleep "$SETTLE"
measure one
stop_all
fi

if step 2; then
log "## 2. one node, $PARTITIONS partitions, --quiesce false"
single busy "$PARTITIONS" --quiesce false
measure busy
stop_all
fi

if step 4; then
log "## 4. three nodes, $PARTITIONS partitions"
P3="1=127.0.0.1:27200,2=127.0.0.1:27300,3=127.0.0.1:27400"
t0=$(date +%s%N)
for id in 1 2 3; do start "node$id" "$id" "$P3" $((27100 + id * 100)) "$PARTITIONS"; done
for id in 1 2 3; do wait_for "node$id" "ready: every partition" 900; done
log "  every node ready after $(ms_since "$t0") ms"
if quiescing; then
    for id in 1 2 3; do wait_quiet "node$id" 180 || true; done
    log "  every node quiet after $(ms_since "$t0") ms"
fi
sleep "$SETTLE"
measure node1 node2 node3
if quiescing; then log "## 4b. kill -9 of node1, every partition quiet"; else log "## 4b. kill -9 of node1 (--quiesce false: every partition heartbeating)"; fi
[[ -x "$BENCH" ]] || { echo "build it first: cargo build --release -p conclave-bench" >&2; exit 1; }
kill_cmd=("$BENCH" failover --endpoints 127.0.0.1:27208,127.0.0.1:27308,127.0.0.1:27408
    --kill-pid "${PID[node1]}" --kill-endpoint 127.0.0.1:27208 --kill-node-id 1
    --admin-endpoints 127.0.0.1:27309,127.0.0.1:27409 --partitions "$PARTITIONS" --probes 0
    --elections 1 --watchers 1 --session-timeout-ms 5000 --quiet --json "$OUT/kill.json")
echo "\$ ${kill_cmd[*]}" >"$OUT/kill.txt"
"${kill_cmd[@]}" >>"$OUT/kill.txt" 2>&1 || { log "  the kill run failed:"; tail -5 "$OUT/kill.txt" | tee -a "$OUT/summary.txt"; }
kill -9 "${PID[node1]}" 2>/dev/null || true # (if the run failed before its kill)
wait "${PID[node1]}" 2>/dev/null || true
unset "PID[node1]"
awk '$1 == "leader_recovery" {printf "  partitions node1 led, led again by another node after: median %.0f ms, p99 %.0f ms, max %.0f ms (%d groups, %d not led again within the bound)\n", $3 / 1000, $5 / 1000, $7 / 1000, $8, $9}' \
    "$OUT/kill.txt" | tee -a "$OUT/summary.txt"
log "## 4c. node1 restarted on its data (recovery with $PARTITIONS groups, peers running)"
mv "$OUT/node1.log" "$OUT/node1-first-start.log"
t0=$(date +%s%N)
start node1 1 "$P3" 27200 "$PARTITIONS"
wait_for node1 "ready: every partition" 900
log "  node1: recovered and ready after $(ms_since "$t0") ms (stall warnings so far: $(stalls node1))"
if quiescing; then
    for id in 1 2 3; do wait_quiet "node$id" 180 || true; done
    log "  every node quiet $(ms_since "$t0") ms after the restart"
fi
sleep "$SETTLE"
measure node1 node2 node3
stop_all
fi

if step 5; then
log "## 5. baseline: one node, 16 partitions"
single base 16
measure base
rss_base=$(rss_kib "${PID[base]}")
stop_all
if [[ -n "${rss_many:-}" ]]; then
    log "  RSS per idle partition (one node, $PARTITIONS vs 16): $(((rss_many - rss_base) * 1024 / (PARTITIONS - 16))) bytes"
fi
fi

if step 3; then
    log "## 3. one node, $BIG partitions (last: it takes longest)"
    single big "$BIG"
    measure big
    rss_big=$(rss_kib "${PID[big]}")
    stop_all
    if [[ -n "${rss_base:-}" ]]; then
        log "  RSS per idle partition (one node, $BIG vs 16): $(((rss_big - rss_base) * 1024 / (BIG - 16))) bytes"
    fi
fi
log "done: $OUT"
