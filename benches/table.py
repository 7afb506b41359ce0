"""Turns benches/run.sh's results into the load table and ratios, and rewrites that section of
BENCHMARKS.md (between the LOAD-TABLE markers)."""

import json
import pathlib
import platform
import re
import sys
import time

results_file, nonces_json, seconds, conns, rate = sys.argv[1:6]
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

rows = [(name, mean(ds)) for name, ds in runs.items()]
r = dict(rows)
cpu = lambda name: r[name].get("cpu_us_per_request")
recover = r["levy paid, batched"]["recover_us"]

def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}".replace(",", " ")

table = ["| scenario | requests/s | p50 µs | p99 µs | p99.9 µs | errors | levy/proxy CPU µs per request |", "|---|---|---|---|---|---|---|"]
for name, d in rows:
    label = f"{name} (mean of {d['runs']} interleaved runs)" if d["runs"] > 1 else name
    table.append(f"| {label} | {fmt(d['rps'])} | {fmt(d['p50_us'])} | {fmt(d['p99_us'])} | {fmt(d['p999_us'])} | {d['errors']} | {fmt(d.get('cpu_us_per_request'), 1)} |")

nonces = json.loads(nonces_json)
free, bare, challenge, paid = (r[k] for k in ("levy free route", "bare Pingora", "levy 402 challenge", "levy paid, batched"))
forwarding = r["bare Pingora, levy's forwarding work"]
free_open, paid_open = (r[f"levy {k}, {rate} req/s offered"] for k in ("free route", "paid, batched"))
extra_cpu = (cpu("levy paid, batched") or 0) - (cpu("levy free route") or 0)
open_gap = lambda paid_name, free_name: f"{r[paid_name]['p50_us'] - r[free_name]['p50_us']:.0f} µs"
paid64 = (cpu("levy paid, batched, 64 connections") or 0) / ((cpu("levy free route, 64 connections") or 0) + r["levy paid, batched, 64 connections"]["recover_us"])
ratios = [
    f"| levy free / bare Pingora throughput | {free['rps'] / bare['rps']:.2f} | – |",
    f"| levy free / bare Pingora doing levy's forwarding work, throughput | {free['rps'] / forwarding['rps']:.2f} | ≥ 0.95 |",
    f"| 402 challenge / levy free throughput | {challenge['rps'] / free['rps']:.2f} | ≥ 1.0 |",
    f"| paid CPU − free CPU per request, in secp256k1 recoveries ({recover:.1f} µs each, this run) | {extra_cpu / recover:.2f} | – |",
    f"| paid p99 / free p99 ({conns} connections, closed loop) | {paid['p99_us'] / max(free['p99_us'], 1):.2f} | ≤ 2 |",
    f"| paid p99 / free p99 ({rate} req/s offered, open loop) | {paid_open['p99_us'] / max(free_open['p99_us'], 1):.2f} | – |",
    f"| paid CPU / (free CPU + one recovery) per request, 64 connections | {paid64:.2f} | ≤ 1.5 |",
    f"| paid (sync durability) p50 − free p50 ({rate} req/s offered, open loop) | {paid_open['p50_us'] - free_open['p50_us']:.0f} µs | ≤ 150 µs |",
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
    f"| levy paid / best @x402/express paid throughput (this run's chain; fresh chain, every 200 settled: benches/peers.sh) | {paid['rps'] / max(r['@x402/express, facilitator in process']['rps'], r['@x402/express, facilitator over HTTP']['rps'], 0.001):.0f} | ≥ 50 (sustained) |",
    f"| levy paid / x402-axum paid throughput (this run's chain; fresh chain: benches/peers.sh) | {paid['rps'] / max(r['x402-axum, facilitator over HTTP']['rps'], 0.001):.0f} | > 1 |",
    f"| RSS of 1 000 000 live nonces | {nonces['rss_growth_mib']:.0f} MiB ({nonces['bytes_per_nonce']:.0f} B each) | ≤ 256 MiB |",
]
section = "\n".join([
    "<!-- LOAD-TABLE:BEGIN (written by benches/run.sh) -->",
    f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {seconds} s per scenario, {conns} keep-alive connections (closed loop unless a rate is offered), pingora `threads: 1, work_stealing: false` and mimalloc for levy and the bare proxy, nginx `worker_processes 1`; load tool, origin, proxies and anvil share the machine's cores.",
    "",
    *table,
    "",
    "| ratio | measured | target |",
    "|---|---|---|",
    *ratios,
    "<!-- LOAD-TABLE:END -->",
])
path = pathlib.Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
text = path.read_text()
pattern = re.compile(r"<!-- LOAD-TABLE:BEGIN.*?LOAD-TABLE:END -->", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text + "\n" + section + "\n"
path.write_text(text)
print(section)
