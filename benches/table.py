"""Turns benches/run.sh's results into the load table and ratios, and rewrites that section of
BENCHMARKS.md (between the LOAD-TABLE markers)."""

import json
import pathlib
import platform
import re
import sys
import time

results_file, nonces_json, seconds, conns, rate, journal_file = sys.argv[1:7]
# A scenario measured more than once (interleaved with another) is reported as the mean.
runs = {}
for line in pathlib.Path(results_file).read_text().splitlines():
    name, _, data = line.partition("|")
    runs.setdefault(name, []).append(json.loads(data))

def mean(ds):
    out = dict(ds[0])
    for key in ("rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_request", "recover_us"):
        values = [d[key] for d in ds if d.get(key) is not None]
        if values:
            out[key] = sum(values) / len(values)
    out["errors"] = sum(d["errors"] for d in ds)
    out["runs"] = len(ds)
    return out

# The chain's own rate for levy's batched transfers, no proxy (examples/chain_load), before
# and after levy's settled run: the mean of the two.
capacity = runs.pop("chain capacity", None)
if capacity:
    capacity = {**capacity[0], **{k: sum(c[k] for c in capacity) / len(capacity)
                                  for k in ("transfers_per_s", "node_cpu_us_per_transfer", "gas_per_transfer")},
                "runs": len(capacity)}
rows = [(name, mean(ds)) for name, ds in runs.items()]
r = dict(rows)
# A baseline build measured beside this one (BASELINE_LEVY) has a table of its own.
side = [(name, d) for name, d in rows if name.startswith("side by side")]
rows = [(name, d) for name, d in rows if not name.startswith("side by side")]
# The runs checked on chain (benches/settled.sh) have their own table.
settled_rows = [(name, d) for name, d in rows if "settled" in d]
rows = [(name, d) for name, d in rows if "settled" not in d]
cpu = lambda name: r[name].get("cpu_us_per_request")
recover = r["levy paid, batched"]["recover_us"]

def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}".replace(",", " ")

table = ["| scenario | requests/s | p50 µs | p99 µs | p99.9 µs | errors | levy/proxy CPU µs per request |", "|---|---|---|---|---|---|---|"]
for name, d in rows:
    label = f"{name} (mean of {d['runs']} interleaved runs)" if d["runs"] > 1 else name
    table.append(f"| {label} | {fmt(d['rps'])} | {fmt(d['p50_us'])} | {fmt(d['p99_us'])} | {fmt(d['p999_us'])} | {d['errors']} | {fmt(d.get('cpu_us_per_request'), 1)} |")

# What a server sustains with every 200 settled on chain: the lower of what it served and
# what settled per second over the load and the catch-up after it (0 if any 200 went unsettled).
sustained = lambda d: min(d["rps"], d["settled_per_s"]) if d["every_200_settled"] else 0.0
settled_table = ["| server | paid requests/s | p50 µs | p99 µs | non-200 | CPU µs per request | 200s settled on chain | settled after the load | settled/s over load + catch-up | server CPU µs per settled payment | anvil CPU µs per settled payment | gas per settled payment | sustained requests/s, every 200 settled |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for name, d in settled_rows:
    settled_table.append(f"| {name} | {fmt(d['rps'], 1)} | {fmt(d['p50_us'])} | {fmt(d['p99_us'])} | {d['errors']} | {fmt(d.get('cpu_us_per_request'), 1)} | {d['settled']} of {d['requests']} {'(all)' if d['every_200_settled'] else '(NOT all)'} | {d['settled_after_s']:.1f} s | {fmt(d['settled_per_s'], 1)} | {fmt(d.get('server_cpu_us_per_settled'))} | {fmt(d['anvil_cpu_us_per_settled'])} | {fmt(d.get('gas_per_settled'))} | {fmt(sustained(d), 1)} |")
if capacity:
    settled_table.append(f"| the chain alone: {capacity['transfers']} transfers in `aggregate3` batches of {capacity['batch']}, no proxy (examples/chain_load; mean of the runs before and after levy's) | – | – | – | – | – | {capacity['transfers']} of {capacity['signed']} | – | {fmt(capacity['transfers_per_s'], 1)} | – | {fmt(capacity['node_cpu_us_per_transfer'])} | {fmt(capacity['gas_per_transfer'])} | {fmt(capacity['transfers_per_s'], 1)} |")
levy_settled = r["levy paid, batched, every 200 settled"]
# The peers are left out of a run with PEERS=0.
peers = "x402-axum, facilitator over HTTP" in r

journal = [json.loads(line) for line in pathlib.Path(journal_file).read_text().splitlines() if line.strip()]
journal_table = ["| concurrent callers | durability | CPU µs per payment | wall µs per payment | accept p50 µs | accept p99 µs | payments per sync |", "|---|---|---|---|---|---|---|"]
for j in journal:
    journal_table.append(f"| {j['callers']} | {j['durability']} | {fmt(j['cpu_us_per_payment'], 1)} | {fmt(j['wall_us_per_payment'], 1)} | {j['p50_us']} | {j['p99_us']} | {fmt(j['payments_per_sync'], 1) if j['payments_per_sync'] is not None else '–'} |")

nonces = json.loads(nonces_json)
free, bare, challenge, paid = (r[k] for k in ("levy free route", "bare Pingora", "levy 402 challenge", "levy paid, batched"))
forwarding = r["bare Pingora, levy's forwarding work"]
free_open, paid_open = (r[f"levy {k}, {rate} req/s offered"] for k in ("free route", "paid, batched"))
extra_cpu = (cpu("levy paid, batched") or 0) - (cpu("levy free route") or 0)
open_gap = lambda paid_name, free_name: f"{r[paid_name]['p50_us'] - r[free_name]['p50_us']:.0f} µs"
paid64 = (cpu("levy paid, batched, 64 connections") or 0) / ((cpu("levy free route, 64 connections") or 0) + r["levy paid, batched, 64 connections"]["recover_us"])
def peer_ratios():
    express = ("@x402/express, facilitator in process", "@x402/express, facilitator over HTTP")
    best_express = max(sustained(r[k]) for k in express)
    cheapest_express = min(r[k]["server_cpu_us_per_settled"] for k in express)
    axum = r["x402-axum, facilitator over HTTP"]
    return [
        f"| levy server CPU per settled payment / the cheapest @x402/express setup's | 1/{cheapest_express / max(levy_settled['server_cpu_us_per_settled'], 0.001):.0f} | ≤ 1/100 |",
        f"| levy's anvil CPU per settled payment / the reference server's (facilitator in process) | 1/{r[express[0]]['anvil_cpu_us_per_settled'] / max(levy_settled['anvil_cpu_us_per_settled'], 0.001):.1f} | ≤ 1/10 |",
        f"| levy sustained / best @x402/express sustained, every 200 settled on chain ({conns} connections) | {sustained(levy_settled) / max(best_express, 0.001):.0f} | ≥ 50 |",
        f"| levy sustained / x402-axum sustained, every 200 settled on chain | {sustained(levy_settled) / max(sustained(axum), 0.001):.0f} | > 1 |",
        f"| levy served / best @x402/express served, paid requests/s in the same runs | {levy_settled['rps'] / max(r['@x402/express, facilitator in process']['rps'], r['@x402/express, facilitator over HTTP']['rps'], 0.001):.0f} | – |",
    ]

def chain_ratios():
    return [
        f"| levy's anvil CPU per settled payment / the bare batched transfers' anvil CPU per transfer | {levy_settled['anvil_cpu_us_per_settled'] / max(capacity['node_cpu_us_per_transfer'], 0.001):.2f} | ≤ 1.3 |",
        f"| levy's gas per settled payment / the bare transfers' | {levy_settled['gas_per_settled'] / max(capacity['gas_per_transfer'], 0.001):.2f} | – |",
        f"| levy sustained (every 200 settled) / the chain's own rate for the same transfers | {sustained(levy_settled) / max(capacity['transfers_per_s'], 0.001):.2f} | ≥ 0.8 |",
    ]

ratios = [
    f"| levy free / bare Pingora throughput | {free['rps'] / bare['rps']:.2f} | – |",
    f"| levy free / bare Pingora doing levy's forwarding work, throughput | {free['rps'] / forwarding['rps']:.2f} | ≥ 0.95 |",
    f"| 402 challenge / levy free throughput | {challenge['rps'] / free['rps']:.2f} | ≥ 1.0 |",
    f"| paid CPU − free CPU per request, in secp256k1 recoveries ({recover:.1f} µs each, this run) | {extra_cpu / recover:.2f} | – |",
    f"| paid p99 / free p99 ({conns} connections, closed loop) | {paid['p99_us'] / max(free['p99_us'], 1):.2f} | ≤ 2 |",
    f"| paid p99 / free p99 ({rate} req/s offered, open loop) | {paid_open['p99_us'] / max(free_open['p99_us'], 1):.2f} | – |",
    f"| paid CPU / (free CPU + one recovery) per request, 64 connections | {paid64:.2f} | ≤ 1.5 |",
    f"| paid (sync durability) p50 − free p50 ({rate} req/s offered, open loop) | {open_gap(f'levy paid, batched, {rate} req/s offered', f'levy free route, {rate} req/s offered')} | ≤ 150 µs |",
    f"| the same, chain paused | {open_gap(f'levy paid, batched, {rate} req/s offered, chain paused', f'levy free route, {rate} req/s offered, chain paused')} | ≤ 150 µs |",
    f"| paid (async durability) p50 − free p50 ({rate} req/s offered, open loop) | {open_gap(f'levy paid, batched, async durability, {rate} req/s offered', f'levy free route, {rate} req/s offered')} | – |",
    f"| the same, chain paused | {open_gap(f'levy paid, batched, async durability, {rate} req/s offered, chain paused', f'levy free route, {rate} req/s offered, chain paused')} | – |",
    f"| async / sync durability paid throughput ({conns} connections) | {r['levy paid, batched, async durability']['rps'] / paid['rps']:.2f} | – |",
    f"| paid throughput with the funds check (payer-state cache warm) / without | {paid['rps'] / r['levy paid, batched, funds check off']['rps']:.2f} | – |",
    f"| paid CPU with the funds check − without, per request | {(cpu('levy paid, batched') or 0) - (cpu('levy paid, batched, funds check off') or 0):.1f} µs | ≤ 2 µs |",
    f"| metered (upto) / exact paid throughput, both batched | {r['levy metered (upto), batched']['rps'] / paid['rps']:.2f} | – |",
    f"| metered (upto) CPU − exact paid CPU per request | {(cpu('levy metered (upto), batched') or 0) - (cpu('levy paid, batched') or 0):.1f} µs | – |",
    f"| channel voucher / exact paid throughput, both batched | {r['levy channel vouchers (batch-settlement)']['rps'] / paid['rps']:.2f} | – |",
    f"| channel voucher CPU − exact paid CPU per request | {(cpu('levy channel vouchers (batch-settlement)') or 0) - (cpu('levy paid, batched') or 0):.1f} µs | – |",
    f"| paid throughput with state on Redis / embedded (one replica) | {r['levy paid, batched, state on Redis']['rps'] / paid['rps']:.2f} | – |",
    f"| paid CPU with state on Redis − embedded, per request | {(cpu('levy paid, batched, state on Redis') or 0) - (cpu('levy paid, batched') or 0):.1f} µs | – |",
    f"| Redis round trips per paid request (state on Redis) | {sum(d['redis_calls'] for d in runs['levy paid, batched, state on Redis']) / max(sum(d['requests'] for d in runs['levy paid, batched, state on Redis']), 1):.2f} | – |",
    *(chain_ratios() if capacity else []),
    *(peer_ratios() if peers else []),
    f"| levy paid throughput, 2 pingora threads / 1 (64 connections) | {r['levy paid, batched, 2 threads, 64 connections']['rps'] / r['levy paid, batched, 64 connections']['rps']:.2f} | – |",
    f"| levy free throughput, 2 pingora threads / 1 (64 connections) | {r['levy free route, 2 threads, 64 connections']['rps'] / r['levy free route, 64 connections']['rps']:.2f} | – |",
    f"| RSS of 1 000 000 live nonces | {nonces['rss_growth_mib']:.0f} MiB ({nonces['bytes_per_nonce']:.0f} B each) | ≤ 256 MiB |",
]
side_table = []
if side:
    side_table = ["", "The same request paths on this build and on the baseline build (`BASELINE_LEVY`), side by side in this run: each scenario alternated between the two, in swapped order over three rounds (means of the three):", "", "| scenario | baseline req/s | this build req/s | this / baseline | baseline CPU µs/req | this build CPU µs/req | this / baseline |", "|---|---|---|---|---|---|---|"]
    for name, d in side:
        if not name.startswith("side by side: "):
            continue
        scenario = name.removeprefix("side by side: ")
        b = r.get(f"side by side, baseline: {scenario}")
        if b is None:
            continue
        side_table.append(f"| {scenario} | {fmt(b['rps'])} | {fmt(d['rps'])} | {d['rps'] / max(b['rps'], 1):.2f} | {fmt(b.get('cpu_us_per_request'), 1)} | {fmt(d.get('cpu_us_per_request'), 1)} | {(d.get('cpu_us_per_request') or 0) / max(b.get('cpu_us_per_request') or 0, 0.001):.2f} |")

section = "\n".join([
    "<!-- LOAD-TABLE:BEGIN (written by benches/run.sh) -->",
    f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {seconds} s per scenario, {conns} keep-alive connections (closed loop unless a rate is offered), pingora `threads: 1, work_stealing: false` and mimalloc for levy and the bare proxy, nginx `worker_processes 1`; load tool, origin, proxies and anvil share the machine's cores.",
    "",
    *table,
    "",
    "| ratio | measured | target |",
    "|---|---|---|",
    *ratios,
    *side_table,
    "",
    "Paid runs checked on chain, first in the run on a fresh chain (benches/settled.sh): the payee's balance moved by the price × every 200, levy's settlement drained first.",
    "",
    *settled_table,
    "",
    "The journal's accept log alone as concurrency grows (`examples/journal_load --callers 1,4,16,64 20000`, after the load runs, nothing else running):",
    "",
    *journal_table,
    "<!-- LOAD-TABLE:END -->",
])
path = pathlib.Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
text = path.read_text()
pattern = re.compile(r"<!-- LOAD-TABLE:BEGIN.*?LOAD-TABLE:END -->", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text + "\n" + section + "\n"
path.write_text(text)
print(section)
