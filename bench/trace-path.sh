#!/usr/bin/env bash
# The path of one caller's commands across processes, hop by hop: a 3-node loopback cluster
# (1 shard per node), one caller on node 1 entering and withdrawing on one election whose
# partition node 1 leads (`lat1-0`), and PERF_SECONDS of system-wide tracepoints in the
# middle of the run: every system call of the nodes and the bench (raw_syscalls), io_uring
# submissions and completions, and the scheduler's switches and wake-ups. Prints a
# timeline of WINDOW_US microseconds starting a tenth into the trace: which process runs on
# which CPU, its socket sends and receives, log writes (WRITE_FIXED) and their completions,
# and who wakes and preempts whom (a switch away from a runnable task, "(R)", is a
# preemption). glommio's own io_uring_enter calls around each sleep are left out unless
# ALL=1. Tracing slows every hop; read the order and the gaps, not the absolute times.
# Needs perf and python3.
#
# Usage: bench/trace-path.sh [OUT]   Environment: CONCLAVE, BENCH, PERF_SECONDS (default 0.3),
#   WINDOW_US (default 3000), ALL.
set -euo pipefail
OUT=${1:-bench-results/trace-path-$(date -u +%Y%m%dT%H%M%SZ)}
PERF_SECONDS=${PERF_SECONDS:-0.3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONCLAVE=${CONCLAVE:-target/release/conclave}
BENCH=${BENCH:-target/release/conclave-bench}
# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
begin_run trace-path

conclave_start 3 --partitions 16 --shards 1
sleep 10 # leaderships rebalanced to their preferred nodes
"$BENCH" churn --endpoints "127.0.0.1:$(conclave_client_port 1)" -c 1 -e 1 --name-prefix lat1 \
    -d 6 --quiet --json "$OUT/run.json" >"$OUT/run.txt" &
bench_pid=$!
PIDS+=("$bench_pid")
echo "${CONCLAVE_NODE_PIDS[1]} ${CONCLAVE_NODE_PIDS[2]} ${CONCLAVE_NODE_PIDS[3]} $bench_pid" >"$OUT/pids"
sleep 3
perf record -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit \
    -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete \
    -e sched:sched_switch -e sched:sched_wakeup -a -o "$OUT/trace.data" -- sleep "$PERF_SECONDS" \
    2>"$OUT/perf-record.log"
wait "$bench_pid"
cat "$OUT/run.txt"
perf script -i "$OUT/trace.data" -F comm,pid,tid,cpu,time,event,trace 2>/dev/null >"$OUT/trace.txt"
rm -f "$OUT/trace.data"
WINDOW_US=${WINDOW_US:-3000} ALL=${ALL:-} python3 - "$OUT" <<'EOF' | tee "$OUT/timeline.txt"
import os, re, sys
out = sys.argv[1]
window = float(os.environ["WINDOW_US"]) / 1e6
everything = bool(os.environ["ALL"])
pids = open(f"{out}/pids").read().split()
names = dict(zip(pids, ["node1", "node2", "node3", "bench"]))
# x86_64 system call numbers of the calls worth showing.
calls = {0: "read", 1: "write", 19: "readv", 20: "writev", 44: "sendto", 45: "recvfrom",
         46: "sendmsg", 47: "recvmsg", 202: "futex", 232: "epoll_wait", 324: "membarrier",
         426: "io_uring_enter"}
quiet = {"io_uring_enter", "membarrier"}
line_re = re.compile(r"\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")
rows, entered, first = [], {}, None
for line in open(f"{out}/trace.txt"):
    m = line_re.match(line)
    if not m:
        continue
    comm, pid, tid, cpu, t, event, rest = m.groups()
    t = float(t)
    first = t if first is None else first
    who = names.get(pid)
    if event == "sched:sched_switch":
        s = re.search(r"prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+)", rest)
        rows.append((t, cpu, f"switch {s.group(1)} ({s.group(2)}) -> {s.group(3).strip()} {s.group(4)}"))
    elif event == "sched:sched_wakeup":
        s = re.search(r"comm=(.*) pid=(\d+)", rest)
        rows.append((t, cpu, f"{who or comm.strip()} {tid} wakes {s.group(1).strip()} {s.group(2)}"))
    elif who is None:
        continue
    elif event == "raw_syscalls:sys_enter":
        entered[tid] = t
    elif event == "raw_syscalls:sys_exit":
        number, result = re.search(r"NR (\d+) = (-?\d+)", rest).groups()
        name = calls.get(int(number))
        began = entered.pop(tid, t)
        if name and (everything or name not in quiet):
            rows.append((began, cpu, f"{who} {tid} {name} = {result} ({(t - began) * 1e6:.0f} us)"))
    elif event == "io_uring:io_uring_submit_req":
        op = re.search(r"opcode (\S+),", rest).group(1)
        if everything or op in ("WRITE_FIXED", "FSYNC", "SEND", "RECV"):
            rows.append((t, cpu, f"{who} {tid} submit {op}"))
    elif event == "io_uring:io_uring_complete":
        s = re.search(r"user_data (\S+), result (-?\d+),", rest)
        if int(s.group(2)) > 0 and (everything or int(s.group(2)) >= 512):
            rows.append((t, cpu, f"{who} {tid} completed {s.group(1)}: {s.group(2)} bytes"))
last = max(row[0] for row in rows)
start = first + (last - first) / 10
print("processes: " + ", ".join(f"{n} = {p}" for p, n in names.items()))
print(f"timeline of {window * 1e6:.0f} us (times in us from its start; [cpu])")
for t, cpu, what in sorted(rows):
    if start <= t <= start + window:
        print(f"{(t - start) * 1e6:8.0f} [{cpu}] {what}")
EOF
rm -f "$OUT/trace.txt" # tens of MB; the timeline above is what is kept
