#!/usr/bin/env python3
"""Table of bench/overload_bench.sh's `load ...` lines (stdin): goodput per concurrency as a share
of the best rate at concurrency <= 32 (where the server saturates), admitted p99, refusals, RSS."""
import sys

rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in sys.stdin if line.startswith("load ")]
best = max(float(r["ok_rows_per_s"]) for r in rows if int(r["concurrency"]) <= 32)
print()
print("| concurrency | goodput rows/s | share of saturated | admitted p50 / p99 ms | refused/s | errors | RSS MB |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    secs = float(r["seconds"])
    rate = float(r["ok_rows_per_s"])
    print(f"| {r['concurrency']} | {rate:,.0f} | {100 * rate / best:.0f}% | {float(r['ok_p50_ms']):.0f} / "
          f"{float(r['ok_p99_ms']):.0f} | {int(r['refused']) / secs:,.0f} | {r['errors']} | {r['rss_mb']} |")
print(f"\nsaturated rate (best at c <= 32): {best:,.0f} rows/s; goal: >= 90% of it at 4x and 16x that concurrency")
