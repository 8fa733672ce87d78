# Loopback Conclave clusters and a 3-member etcd for the bench scripts (source this file).
#
# The caller sets OUT (the results directory), WORK (scratch; `begin_run` makes it), CONCLAVE
# and BENCH (the binaries, or calls `ensure_binaries`) and, for etcd, has `etcd` on PATH; it
# must call `stop_all` on exit (`begin_run` traps `clean_up_run`, which does), so every
# process these functions started is stopped. Everything listens on 127.0.0.1 only.
#
# Ports (outside Linux's ephemeral range, 32768+): Conclave node n (1-based) serves clients
# on 25600+10n, its admin API on 25601+10n, metrics and probes on 25602+10n (builds that have
# `--metrics-listen`), and peers on 25700+10n (+ shard index, so up to 10 shards per node);
# etcd member m serves clients on 22279+100m, peers on 22280+100m.

PIDS=()                 # every process started, for stop_all
CONCLAVE_NODE_PIDS=()   # index n: the running process of Conclave node n
CONCLAVE_NODE_ARGS=()   # the flags every node of the current cluster was started with
CONCLAVE_NODE_COUNT=0
CONCLAVE_STARTS=0       # numbers the log files of successive starts
ETCD_MEMBER_PIDS=()

# CONCLAVE_PORT_BASE (default 25600) moves every Conclave port, e.g. when another run on
# the same machine holds the default ones.
PORT_BASE=${CONCLAVE_PORT_BASE:-25600}
conclave_client_port() { echo $((PORT_BASE + 10 * $1)); }
conclave_admin_port() { echo $((PORT_BASE + 1 + 10 * $1)); }
conclave_peer_port() { echo $((PORT_BASE + 100 + 10 * $1)); }
conclave_metrics_port() { echo $((PORT_BASE + 2 + 10 * $1)); }

# `--metrics-listen` for node $1 when $CONCLAVE has that flag (older builds, e.g. the A side
# of run-ab.sh, do not; every node would otherwise bind the same default port).
conclave_metrics_args() {
    if "$CONCLAVE" serve --help 2>/dev/null | grep -q -- --metrics-listen; then
        echo "--metrics-listen 127.0.0.1:$(conclave_metrics_port "$1")"
    fi
}

# Comma-separated client (or admin) endpoints of the nodes, optionally without node $1.
conclave_endpoints() {
    local skip=${1:-0} out=() n
    for ((n = 1; n <= CONCLAVE_NODE_COUNT; n++)); do
        [[ $n == "$skip" ]] || out+=("127.0.0.1:$(conclave_client_port "$n")")
    done
    (IFS=,; echo "${out[*]}")
}
conclave_admin_endpoints() {
    local skip=${1:-0} out=() n
    for ((n = 1; n <= CONCLAVE_NODE_COUNT; n++)); do
        [[ $n == "$skip" ]] || out+=("127.0.0.1:$(conclave_admin_port "$n")")
    done
    (IFS=,; echo "${out[*]}")
}

# Waits (at most 30 s) until log file $2 of process $1 says `conclave: ready`.
wait_conclave_ready() {
    local pid=$1 log=$2
    for _ in $(seq 300); do
        if grep -q "conclave: ready" "$log" 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "conclave (pid $pid) exited before it was ready; $log:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "conclave (pid $pid) not ready after 30 s; $log:" >&2
    tail -n 20 "$log" >&2
    return 1
}

# Starts node $1 of the current cluster (on its existing data, if any); does not wait.
conclave_node_launch() {
    local n=$1 peers=() m
    for ((m = 1; m <= CONCLAVE_NODE_COUNT; m++)); do
        peers+=("$m=127.0.0.1:$(conclave_peer_port "$m")")
    done
    CONCLAVE_STARTS=$((CONCLAVE_STARTS + 1))
    local log="$WORK/conclave-$n.start$CONCLAVE_STARTS.log"
    "$CONCLAVE" serve --node-id "$n" --peers "$(IFS=,; echo "${peers[*]}")" \
        --listen "127.0.0.1:$(conclave_client_port "$n")" \
        --admin-listen "127.0.0.1:$(conclave_admin_port "$n")" $(conclave_metrics_args "$n") \
        --data-dir "$WORK/conclave-$n" "${CONCLAVE_NODE_ARGS[@]}" >"$log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    CONCLAVE_NODE_PIDS[n]=$pid
    CONCLAVE_LAST_LOG=$log
}

# Starts a fresh cluster of $1 nodes with the flags $2...; waits until every node is ready.
conclave_start() {
    CONCLAVE_NODE_COUNT=$1
    shift
    CONCLAVE_NODE_ARGS=("$@")
    local n logs=()
    for ((n = 1; n <= CONCLAVE_NODE_COUNT; n++)); do
        rm -rf "$WORK/conclave-$n"
        conclave_node_launch "$n"
        logs[n]=$CONCLAVE_LAST_LOG
    done
    for ((n = 1; n <= CONCLAVE_NODE_COUNT; n++)); do
        wait_conclave_ready "${CONCLAVE_NODE_PIDS[n]}" "${logs[n]}" || return 1
    done
}

# Restarts node $1 (after a kill) on its data and waits until it is ready.
conclave_restart_node() {
    local n=$1
    wait "${CONCLAVE_NODE_PIDS[n]}" 2>/dev/null || true
    conclave_node_launch "$n"
    wait_conclave_ready "${CONCLAVE_NODE_PIDS[n]}" "$CONCLAVE_LAST_LOG"
}

# Stops every node of the cluster (SIGTERM, then SIGKILL after 10 s) and forgets it.
conclave_stop() {
    local n pid
    for ((n = 1; n <= CONCLAVE_NODE_COUNT; n++)); do
        kill "${CONCLAVE_NODE_PIDS[n]}" 2>/dev/null || true
    done
    for ((n = 1; n <= CONCLAVE_NODE_COUNT; n++)); do
        pid=${CONCLAVE_NODE_PIDS[n]}
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    CONCLAVE_NODE_PIDS=()
    CONCLAVE_NODE_COUNT=0
}

ETCD_CLUSTER="e1=http://127.0.0.1:22380,e2=http://127.0.0.1:22480,e3=http://127.0.0.1:22580"
ETCD_ENDPOINTS="127.0.0.1:22379,127.0.0.1:22479,127.0.0.1:22579"

# Starts etcd member $1 (1..3) on its data directory; does not wait.
etcd_member_launch() {
    local member=$1
    local client_port=$((22279 + 100 * member)) peer_port=$((22280 + 100 * member))
    etcd --name "e$member" --data-dir "$WORK/etcd-$member" \
        --listen-client-urls "http://127.0.0.1:$client_port" \
        --advertise-client-urls "http://127.0.0.1:$client_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
        --initial-cluster-token conclave-bench >>"$WORK/etcd-$member.log" 2>&1 &
    PIDS+=($!)
    ETCD_MEMBER_PIDS[member]=$!
}

etcd_member_healthy() {
    curl -sf "http://127.0.0.1:$((22279 + 100 * $1))/health" | grep -q '"health":"true"'
}

# Waits (at most 30 s) until member $1 answers healthy.
wait_etcd_member() {
    for _ in $(seq 300); do
        if etcd_member_healthy "$1"; then return 0; fi
        sleep 0.1
    done
    echo "etcd member $1 not healthy after 30 s:" >&2
    tail -n 20 "$WORK/etcd-$1.log" >&2
    return 1
}

etcd_start() {
    local member
    for member in 1 2 3; do etcd_member_launch "$member"; done
    for member in 1 2 3; do wait_etcd_member "$member" || return 1; done
}

# The member (1..3) that leads the etcd cluster, from the maintenance status of member 1..3.
etcd_leader_member() {
    local member status id leader
    for member in 1 2 3; do
        status=$(curl -sf -X POST -d '{}' \
            "http://127.0.0.1:$((22279 + 100 * member))/v3/maintenance/status") || continue
        id=$(sed -n 's/.*"member_id":"\([0-9]*\)".*/\1/p' <<<"$status")
        leader=$(sed -n 's/.*"leader":"\([0-9]*\)".*/\1/p' <<<"$status")
        if [[ -n $id && $id == "$leader" ]]; then
            echo "$member"
            return 0
        fi
    done
    return 1
}

etcd_restart_member() {
    wait "${ETCD_MEMBER_PIDS[$1]}" 2>/dev/null || true
    etcd_member_launch "$1"
    wait_etcd_member "$1"
}

# Stops everything started through these functions, whatever state it is in.
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

# The EXIT trap of the run scripts: stops everything, copies the servers' logs into
# OUT/logs when KEEP_LOGS=1, removes WORK. Install with `trap clean_up_run EXIT`.
clean_up_run() {
    stop_all
    if [[ ${KEEP_LOGS:-} == 1 && -d $OUT ]]; then
        mkdir -p "$OUT/logs" && cp "$WORK"/*.log "$OUT/logs/" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}

# Starts a run script: a scratch directory WORK (named after $1), OUT created, and on exit
# `clean_up_run` (Ctrl-C and TERM exit too).
begin_run() { # NAME
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/conclave-$1.XXXXXX")
    trap clean_up_run EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$OUT"
}

# Sets CONCLAVE and BENCH to release builds (building them) unless both are set already.
ensure_binaries() {
    if [[ -z "${CONCLAVE:-}" || -z "${BENCH:-}" ]]; then
        cargo build --release -p conclave-server -p conclave-bench
        local target_dir=${CARGO_TARGET_DIR:-target}
        CONCLAVE=${CONCLAVE:-$target_dir/release/conclave}
        BENCH=${BENCH:-$target_dir/release/conclave-bench}
    fi
}

# The load of the machine, for the record of each run.
machine_load() {
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# Runs `conclave-bench ARGS... --quiet --json OUT/NAME.json`, recording the load average
# and the exact command at the top of OUT/NAME.txt. A failed run is reported in
# OUT/failures.txt and does not stop the script.
bench_run() { # NAME ARGS...
    local name=$1
    shift
    local command=("$BENCH" "$@" --quiet --json "$OUT/$name.json")
    echo "== $name"
    if ! {
        machine_load
        echo "\$ ${command[*]}"
        "${command[@]}"
    } | tee "$OUT/$name.txt"; then
        echo "!! $name failed; the other runs go on" | tee -a "$OUT/failures.txt" >&2
    fi
}

# The floor of this machine on the disk of WORK, into OUT/NAME.{txt,json}.
bench_floor() { # NAME
    {
        machine_load
        echo "\$ $BENCH floor --dir $WORK"
        "$BENCH" floor --dir "$WORK" --json "$OUT/$1.json"
    } | tee "$OUT/$1.txt"
}

# Kills Conclave node $2 of the running cluster during a failover run named $1 (extra bench
# flags $3...), then restarts the node and waits until it is ready. Needs PARTITIONS and
# SESSION_TIMEOUT_MS (what the cluster runs with). Before the kill the bench waits until
# every partition is led by its preferred node, i.e. every node (a restarted one included)
# has caught up; KILL_WAIT_BALANCED=0 skips that wait (to measure a kill that comes while a
# restarted node is still catching up).
conclave_kill_run() { # NAME NODE ARGS...
    local name=$1 node=$2 share=0 g balanced=()
    shift 2
    if [[ ${KILL_WAIT_BALANCED:-1} == 1 ]]; then balanced=(--wait-balanced "$CONCLAVE_NODE_COUNT"); fi
    # The groups this node leads once rebalanced (preferred leaders: round robin).
    for ((g = 1; g <= PARTITIONS; g++)); do
        if (((g - 1) % CONCLAVE_NODE_COUNT == node - 1)); then share=$((share + 1)); fi
    done
    bench_run "$name" failover --endpoints "$(conclave_endpoints)" \
        --kill-pid "${CONCLAVE_NODE_PIDS[node]}" \
        --kill-endpoint "127.0.0.1:$(conclave_client_port "$node")" \
        --kill-node-id "$node" --admin-endpoints "$(conclave_admin_endpoints "$node")" \
        --min-led-groups "$share" --partitions "$PARTITIONS" \
        --session-timeout-ms "$SESSION_TIMEOUT_MS" "${balanced[@]}" "$@"
    conclave_restart_node "$node"
}
