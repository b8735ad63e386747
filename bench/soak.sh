#!/usr/bin/env bash
# Soak: mixed routes for a long time with a hot swap every minute, reporting RSS, errors and
# latency per window. The server serves the default model (models/fashion-mnist/1) and a copy of
# it as version 2; the swaps alternate between them. Load per window, from bench/load.rs (one
# client thread each): /log_prob 1-row JSON from 8 connections, and one connection each on
# /score, /encode, /inpaint (20 steps) and GET /sample?n=16; GET /metrics and /models every
# second. Goal: RSS drift under 50 MB after the first swap.
#
#   bench/soak.sh
#
# Environment: SOAK_MINUTES [30], SOAK_WINDOW_S [60] (one swap per window), SOAK_PORT [18300],
# FLOWSCORE_BIN [./target/release/flowscore], FLOWSCORE_SERVE_ARGS []. Writes bench/out/soak.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out
BIN=${FLOWSCORE_BIN:-./target/release/flowscore}
PORT=${SOAK_PORT:-18300}
MINUTES=${SOAK_MINUTES:-30}
WINDOW=${SOAK_WINDOW_S:-60}
read -r -a EXTRA <<<"${FLOWSCORE_SERVE_ARGS:-}"
mkdir -p "$OUT/bodies" "$OUT/logs"
[ -x "$BIN" ] || cargo build --release
[ -f "$OUT/bodies/json-1.json" ] || .venv/bin/python bench/make_bodies.py --out "$OUT/bodies" --dim 784 >/dev/null
cargo bench --bench load --no-run -q 2>/dev/null || cargo bench --bench load --no-run
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -n 1)

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/models/fashion-mnist"
cp -r models/fashion-mnist/1 "$work/models/fashion-mnist/1"
cp -r models/fashion-mnist/1 "$work/models/fashion-mnist/2"
python3 - "$work/models/fashion-mnist/2/card.json" <<'PY'
import json, sys
card = json.load(open(sys.argv[1])); card["version"] = "2"; json.dump(card, open(sys.argv[1], "w"))
PY
python3 - "$work/inpaint.json" <<'PY'
import json, sys
row = [0.5] * 784
json.dump({"inputs": [row], "mask": [[float(i % 2) for i in range(784)]], "steps": 20}, open(sys.argv[1], "w"))
PY
"$BIN" --threads 2 serve --models-dir "$work/models" --model fashion-mnist/1 --bind "127.0.0.1:$PORT" \
  --admin-token soak "${EXTRA[@]}" >"$OUT/logs/soak-server.log" 2>&1 &
pid=$!
until curl -sf -o /dev/null "127.0.0.1:$PORT/ready"; do kill -0 $pid || exit 1; sleep 0.2; done
rss() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
base="http://127.0.0.1:$PORT"
echo "# soak $(git rev-parse --short HEAD 2>/dev/null), $(date -u +%FT%TZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), ${MINUTES} min, a swap every ${WINDOW} s"
echo "idle RSS: $(rss) MB"
windows=$((MINUTES * 60 / WINDOW))
version=2
rows=()
for w in $(seq 1 "$windows"); do
  p=()
  "$LOAD" --url "$base/log_prob" --body "$OUT/bodies/json-1.json" --concurrency 8 --seconds "$WINDOW" --warmup 0 >"$work/lp" & p+=($!)
  "$LOAD" --url "$base/score" --body "$OUT/bodies/json-1.json" --concurrency 1 --seconds "$WINDOW" --warmup 0 >"$work/sc" & p+=($!)
  "$LOAD" --url "$base/encode" --body "$OUT/bodies/json-1.json" --concurrency 1 --seconds "$WINDOW" --warmup 0 >"$work/en" & p+=($!)
  "$LOAD" --url "$base/inpaint" --body "$work/inpaint.json" --concurrency 1 --seconds "$WINDOW" --warmup 0 >"$work/in" & p+=($!)
  "$LOAD" --method GET --url "$base/sample?n=16&seed=3" --concurrency 1 --seconds "$WINDOW" --warmup 0 >"$work/sa" & p+=($!)
  ( for _ in $(seq 1 "$WINDOW"); do curl -s -o /dev/null "$base/metrics"; curl -s -o /dev/null "$base/models"; sleep 1; done ) & p+=($!)
  sleep $((WINDOW / 2))
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'authorization: Bearer soak' "$base/models/fashion-mnist/$version/activate")
  [ "$code" = 200 ] || echo "swap to version $version: HTTP $code"
  version=$((3 - version))
  wait "${p[@]}"
  line=$(python3 - "$work" "$w" "$(rss)" <<'PY'
import sys
work, w, rss = sys.argv[1], sys.argv[2], sys.argv[3]
def read(name):
    fields = dict(kv.split("=", 1) for kv in open(f"{work}/{name}").read().split()[1:])
    return fields
parts, errors, requests = [], 0, 0
for name in ["lp", "sc", "en", "in", "sa"]:
    f = read(name)
    errors += int(f["refused"]) + int(f["other"]) + int(f["errors"])
    requests += int(f["ok"])
    parts.append(f"{name}_p99_ms={f['ok_p99_ms']}")
print(f"window={w} rss_mb={rss} ok={requests} errors={errors} " + " ".join(parts))
PY
)
  echo "$line"
  rows+=("$line")
done
printf '%s\n' "${rows[@]}" | python3 bench/soak_report.py | tee "$OUT/soak.md"
