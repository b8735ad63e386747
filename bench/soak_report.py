#!/usr/bin/env python3
"""Table of bench/soak.sh's `window=...` lines (stdin): RSS, requests, errors and p99 per window,
and the RSS drift after the first swap."""
import sys

rows = [dict(kv.split("=", 1) for kv in line.split()) for line in sys.stdin if line.startswith("window=")]
rss = [int(r["rss_mb"]) for r in rows]
routes = ["lp", "sc", "en", "in", "sa"]
print()
print("| window | RSS MB | requests | errors | p99 ms: log_prob / score / encode / inpaint / sample |")
print("|---:|---:|---:|---:|---|")
for r in rows:
    p99 = " / ".join(f"{float(r[k + '_p99_ms']):.1f}" for k in routes)
    print(f"| {r['window']} | {r['rss_mb']} | {int(r['ok']):,} | {r['errors']} | {p99} |")
errors = sum(int(r["errors"]) for r in rows)
requests = sum(int(r["ok"]) for r in rows)
print(f"\nRSS after the first swap {rss[0]} MB, highest {max(rss)} MB, last {rss[-1]} MB: "
      f"drift {max(rss) - rss[0]} MB (goal < 50); {errors} errors in {requests:,} requests")
