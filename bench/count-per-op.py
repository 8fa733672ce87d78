#!/usr/bin/env python3
"""Per-operation growth of every counter between two scrapes of a 3-node cluster.

Reads OUT/metrics-{before,after}-{1,2,3}.txt (Prometheus text) and OUT/run.json (the
bench's operation counts), sums each counter over the nodes and over its shard, peer and
node labels (other labels, such as a message type, are kept), and prints the growth per
operation of the counters that grew, and each node's own CPU per operation (its
`process_cpu_seconds_total`). Written by bench/count-per-op.sh.
"""

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

SUMMED_LABELS = {"shard", "peer", "node", "node_id", "to", "from"}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+([0-9.eE+-]+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def counters(path):
    """Counter samples of one scrape, keyed by name and kept labels, summed over the rest."""
    totals = defaultdict(float)
    for line in Path(path).read_text().splitlines():
        match = SAMPLE.match(line)
        if not match or not match.group(1).endswith("_total"):
            continue
        labels = [(k, v) for k, v in LABEL.findall(match.group(3) or "") if k not in SUMMED_LABELS]
        key = match.group(1) + ("{" + ",".join(f"{k}={v}" for k, v in sorted(labels)) + "}" if labels else "")
        totals[key] += float(match.group(4))
    return totals


PROCESS_CPU = "process_cpu_seconds_total"


def main():
    out = Path(sys.argv[1])
    before, after = defaultdict(float), defaultdict(float)
    node_cpu = {}
    for node in (1, 2, 3):
        node_before = counters(out / f"metrics-before-{node}.txt")
        node_after = counters(out / f"metrics-after-{node}.txt")
        if PROCESS_CPU in node_before and PROCESS_CPU in node_after:
            node_cpu[node] = node_after.pop(PROCESS_CPU) - node_before.pop(PROCESS_CPU)
        for key, value in node_before.items():
            before[key] += value
        for key, value in node_after.items():
            after[key] += value
    run = json.loads((out / "run.json").read_text())
    ops = sum(op["count"] for op in run["ops"].values())
    if ops == 0:
        sys.exit("the run completed no operation")
    print(f"operations: {ops} in {run['elapsed_sec']:.1f} s; server CPU {run.get('server_cpu_us_per_op', 0):.1f} us/op")
    if node_cpu:  # between the scrapes, so a little wider than the bench's measured phase
        print("CPU per op by node: " + ", ".join(f"{n}: {seconds * 1e6 / ops:.1f} us" for n, seconds in node_cpu.items()))
    print(f"{'counter (all nodes)':<90} {'growth':>12} {'per op':>10}")
    for key in sorted(after):
        grown = after[key] - before.get(key, 0.0)
        if grown > 0:
            print(f"{key:<90} {grown:>12.0f} {grown / ops:>10.4f}")


if __name__ == "__main__":
    main()
