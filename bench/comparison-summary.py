#!/usr/bin/env python3
"""The table of one `bench/run-comparison.sh` run: for each workload run against both
systems, each one's rate, latency and server CPU per operation, Conclave's ratios to etcd,
and issue 13's targets with whether this run met them (one caller's Enter p50 is compared
with the mean of the floors measured at the start and at the end of the run).

Usage: bench/comparison-summary.py OUT     (prints the table; run-comparison.sh writes it
to OUT/summary.txt)
"""

import json
import os
import sys

# workload: (the operation whose latency is compared, its name in etcd's run)
WORKLOADS = {
    "churn-64": "enter",
    "read-64": "get_term",
    "enter-1": "enter",
    "watch": "notify",
    "failover": "failover",
}

# (workload, what, bound): Conclave's value over etcd's must be at most `bound`.
RATIO_TARGETS = [
    ("churn-64", "cpu", 0.10),
    ("churn-64", "p99", 0.20),
    ("read-64", "cpu", 0.20),
    ("enter-1", "cpu", 1 / 3),
]
# One caller's Enter p50 at most this many floors.
FLOOR_TARGET = 2.0


def load(out, name):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def row(run, op):
    stats = run["ops"].get(op) if run else None
    if not stats:
        return None
    return {
        "ops": stats["ops_per_sec"],
        "p50": stats["p50_us"],
        "p99": stats["p99_us"],
        "cpu": run.get("server_cpu_us_per_op"),
    }


def fmt(value, unit=""):
    if value is None:
        return "-"
    if value >= 1000 and unit == "us":
        return f"{value / 1000:.2f} ms"
    return f"{value:,.1f}{' us' if unit == 'us' else ''}"


def main(out):
    lines = [f"comparison: {os.path.abspath(out)}", ""]
    header = f"{'workload':<10} {'system':<9} {'ops/s':>10} {'p50':>10} {'p99':>10} {'server CPU/op':>14}"
    lines += [header, "-" * len(header)]
    measured = {}
    for workload, op in WORKLOADS.items():
        pair = {system: row(load(out, f"{system}-{workload}"), op) for system in ("conclave", "etcd")}
        if not any(pair.values()):
            continue
        measured[workload] = pair
        for system, r in pair.items():
            if r is None:
                lines.append(f"{workload:<10} {system:<9} {'(not run)':>10}")
                continue
            lines.append(
                f"{workload:<10} {system:<9} {r['ops']:>10,.0f} {fmt(r['p50'], 'us'):>10} "
                f"{fmt(r['p99'], 'us'):>10} {fmt(r['cpu'], 'us'):>14}"
            )
    floor_runs = [load(out, name) for name in ("floor-start", "floor-end")]
    floors = [f["enter_floor_us"] for f in floor_runs if f and "enter_floor_us" in f]
    shared_floors = [f["enter_floor_shared_disk_us"] for f in floor_runs if f and "enter_floor_shared_disk_us" in f]
    lines += ["", "targets (issue 13), Conclave against etcd in this run:"]
    for workload, what, bound in RATIO_TARGETS:
        pair = measured.get(workload)
        if not pair or not pair["conclave"] or not pair["etcd"] or not pair["etcd"][what]:
            lines.append(f"  {workload} {what}: not measured")
            continue
        ratio = pair["conclave"][what] / pair["etcd"][what]
        verdict = "met" if ratio <= bound else "not met"
        lines.append(f"  {workload} {what}: {ratio:.2f} (target <= {bound:.2f}): {verdict}")
    one = measured.get("enter-1", {}).get("conclave")
    if one and floors:
        floor = sum(floors) / len(floors)
        times = one["p50"] / floor
        verdict = "met" if times <= FLOOR_TARGET else "not met"
        spread = ", ".join(f"{f:.1f}" for f in floors)
        lines.append(f"  enter-1 p50: {times:.2f} x the floor ({one['p50']:.1f} us against {floor:.1f} us, "
                     f"the mean of {spread}) (target <= {FLOOR_TARGET:.0f}x): {verdict}")
        if shared_floors:
            shared = sum(shared_floors) / len(shared_floors)
            lines.append(f"    context: {one['p50'] / shared:.2f} x the shared-disk floor ({shared:.1f} us: the "
                         f"fdatasync p50 with the three nodes' writers syncing at once, plus two round trips)")
    else:
        lines.append("  enter-1 p50 against the floor: not measured")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
