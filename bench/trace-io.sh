#!/usr/bin/env bash
# What one caller's command costs each node in io_uring operations, and how a command's
# durable writes line up across the three nodes: a 3-node loopback cluster (1 shard per
# node), one caller on node 1 entering and withdrawing on one election whose partition node
# 1 leads (partition 1: `lat1-0`), and PERF_SECONDS of io_uring tracepoints
# (io_uring_submit_req / io_uring_complete / io_uring_enter) recorded system-wide in the
# middle of the run. Prints per node: operations per second by opcode and per command, then
# a 4 ms timeline of the log writes (WRITE_FIXED) and fdatasyncs (FSYNC) of all three nodes.
# Needs perf and python3.
#
# Usage: bench/trace-io.sh [OUT]     Environment: CONCLAVE, BENCH, PERF_SECONDS (default 0.5).
set -euo pipefail
OUT=${1:-bench-results/trace-io-$(date -u +%Y%m%dT%H%M%SZ)}
PERF_SECONDS=${PERF_SECONDS:-0.5}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONCLAVE=${CONCLAVE:-target/release/conclave}
BENCH=${BENCH:-target/release/conclave-bench}
# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
begin_run trace

conclave_start 3 --partitions 16 --shards 1
sleep 10 # leaderships rebalanced to their preferred nodes
echo "${CONCLAVE_NODE_PIDS[1]} ${CONCLAVE_NODE_PIDS[2]} ${CONCLAVE_NODE_PIDS[3]}" >"$OUT/pids"
"$BENCH" churn --endpoints "127.0.0.1:$(conclave_client_port 1)" -c 1 -e 1 --name-prefix lat1 \
    -d 6 --quiet --json "$OUT/run.json" >"$OUT/run.txt" &
bench_pid=$!
PIDS+=("$bench_pid")
sleep 3
perf record -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete \
    -e syscalls:sys_enter_io_uring_enter -a -o "$OUT/trace.data" -- sleep "$PERF_SECONDS" \
    2>"$OUT/perf-record.log"
wait "$bench_pid"
cat "$OUT/run.txt"
perf script -i "$OUT/trace.data" -F pid,tid,time,event,trace 2>/dev/null >"$OUT/trace.txt"
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import collections, json, re, sys
out = sys.argv[1]
pids = open(f"{out}/pids").read().split()
report = json.load(open(f"{out}/run.json"))
commands = sum(op["ops_per_sec"] for op in report["ops"].values())
events, counts = [], collections.Counter()
for line in open(f"{out}/trace.txt"):
    m = re.match(r"\s*(\d+)/(\d+)\s+([\d.]+):\s+\S+:(\S+):(.*)", line)
    if not m or m.group(1) not in pids:
        continue
    pid, _, t, event, rest = m.groups()
    node = pids.index(pid) + 1
    opcode = re.search(r"opcode (\S+),", rest)
    req = re.search(r"req (0x[0-9a-f]+)", rest)
    events.append((float(t), node, event, opcode.group(1) if opcode else "", req.group(1) if req else ""))
    counts[(node, "io_uring_enter" if event == "sys_enter_io_uring_enter" else None)] += 1
    if opcode:
        counts[(node, opcode.group(1))] += 1
events.sort()
span = events[-1][0] - events[0][0]
print(f"commands (Enter + Withdraw): {commands:.0f}/s over the run; trace of {span:.3f} s")
for node in (1, 2, 3):
    row = {k[1]: v for k, v in counts.items() if k[0] == node and k[1]}
    print(f"node {node}: " + ", ".join(
        f"{op} {n / span:.0f}/s ({n / span / commands:.1f} per command)" for op, n in sorted(row.items())))
opened, timeline = {}, []
for t, node, event, opcode, req in events:
    if event == "io_uring_submit_req" and opcode in ("FSYNC", "WRITE_FIXED"):
        opened[(node, req)] = (t, opcode)
        timeline.append((t, node, f"submit {opcode}"))
    elif event == "io_uring_complete" and (node, req) in opened:
        started, opcode = opened.pop((node, req))
        timeline.append((t, node, f"done {opcode} ({(t - started) * 1e6:.0f} us)"))
start = events[0][0] + span / 5
print("timeline (log writes and fdatasyncs of the three nodes, 4 ms):")
for t, node, what in timeline:
    if start <= t <= start + 0.004:
        print(f"{(t - start) * 1e6:8.0f} us  node {node}  {what}")
EOF
