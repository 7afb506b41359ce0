"""Compares two runs of benches/run.sh (kept with RESULTS_OUT), scenario by scenario:
requests/s and CPU per request of the second over the first.

    python3 benches/compare.py before.txt after.txt
"""

import json
import pathlib
import sys


def load(path):
    runs = {}
    for line in pathlib.Path(path).read_text().splitlines():
        name, _, data = line.partition("|")
        runs.setdefault(name, []).append(json.loads(data))
    return runs


def mean(ds, key):
    values = [d[key] for d in ds if d.get(key) is not None]
    return sum(values) / len(values) if values else None


def ratio(after, before):
    return "–" if not after or not before else f"{after / before:.2f}"


before, after = (load(p) for p in sys.argv[1:3])
print("| scenario | req/s before | req/s after | after / before | CPU µs/req before | CPU µs/req after | after / before |")
print("|---|---|---|---|---|---|---|")
for name, runs in after.items():
    if name not in before:
        continue
    rps = (mean(before[name], "rps"), mean(runs, "rps"))
    cpu = (mean(before[name], "cpu_us_per_request"), mean(runs, "cpu_us_per_request"))
    fmt = lambda v, d=0: "–" if v is None else f"{v:,.{d}f}".replace(",", " ")
    print(f"| {name} | {fmt(rps[0])} | {fmt(rps[1])} | {ratio(rps[1], rps[0])} | {fmt(cpu[0], 1)} | {fmt(cpu[1], 1)} | {ratio(cpu[1], cpu[0])} |")
