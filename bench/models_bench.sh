#!/usr/bin/env bash
# Many models and the Open Inference Protocol, measured (docs/benchmarks.md, "Many models"):
#
# 1. RSS of a server holding 1, 10 and 100 small tabular models (D = 10 to 50, 4 couplings x 2 x
#    64, random weights) and the shipped default model, after /ready and one request each.
# 2. 1-row JSON requests at 32 connections spread uniformly over the 100 models, against the same
#    load sent to one of them, on the same 100-model server, alternated BENCH_ROUNDS times.
# 3. The protocol's infer against /log_prob on the paper's architecture (784-d, 4 x 5 x 1000):
#    64-row JSON at c32, and 512-row binary against 512-row NPY at c8, alternated.
# 4. No regression for one model: this build against FLOWSCORE_OLD_BIN (a build of an earlier
#    commit, e.g. the single-model engine), 64-row and 1-row JSON at c32 on the paper model,
#    alternated. Skipped when FLOWSCORE_OLD_BIN is unset.
#
#   FLOWSCORE_OLD_BIN=/tmp/old/target/release/flowscore bench/models_bench.sh
#
# Environment: BENCH_DURATION [10] seconds per load, BENCH_WARMUP [2], BENCH_ROUNDS [3],
# BENCH_PORT [18095], FLOWSCORE_BIN [./target/release/flowscore]. Prints medians per load and
# writes bench/out/models-results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out
BIN=${FLOWSCORE_BIN:-./target/release/flowscore}
OLD=${FLOWSCORE_OLD_BIN:-}
PORT=${BENCH_PORT:-18095}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
ROUNDS=${BENCH_ROUNDS:-3}
MANY=$OUT/models-many
PAPER=$OUT/model-paper
mkdir -p "$OUT/bodies" "$OUT/logs" "$OUT/models-bodies"
[ -x "$BIN" ] || cargo build --release
cargo bench --bench load --no-run -q 2>/dev/null || cargo bench --bench load --no-run
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -n 1)
[ -f "$PAPER/card.json" ] || "$BIN" init --out "$PAPER" --dim 784 --shape 28,28 --couplings 4 --hidden-layers 5 --hidden-units 1000
[ -f "$OUT/bodies/json-64.json" ] || .venv/bin/python bench/make_bodies.py --out "$OUT/bodies" --dim 784 >/dev/null

# 100 tabular models t000..t099 of D = 10..50, and a 1-row body for each.
if [ ! -f "$MANY/t099/1/card.json" ]; then
  rm -rf "$MANY"
  for i in $(seq 0 99); do
    d=$((10 + i * 40 / 99))
    "$BIN" init --out "$MANY/$(printf 't%03d' "$i")/1" --dim "$d" --couplings 4 --hidden-layers 2 --hidden-units 64 \
      --seed "$i" >/dev/null
  done
fi
python3 - "$MANY" "$OUT/models-bodies" <<'PY'
import json, os, random, sys
many, bodies = sys.argv[1], sys.argv[2]
r = random.Random(0)
lines = []
for name in sorted(os.listdir(many)):
    d = json.load(open(f"{many}/{name}/1/card.json"))["architecture"]["dim"]
    path = f"{bodies}/{name}.json"
    json.dump({"inputs": [[round(r.gauss(0, 1), 4) for _ in range(d)]]}, open(path, "w"))
    lines.append(f"/models/{name}/log_prob {path}")
open(f"{bodies}/targets-100.txt", "w").write("\n".join(lines) + "\n")
open(f"{bodies}/targets-1.txt", "w").write(lines[50] + "\n")
PY
# Protocol bodies for the paper model: 64-row JSON and 512-row binary (float32), same rows as
# bench/make_bodies.py's.
.venv/bin/python - "$OUT/bodies" <<'PY'
import io, json, sys
import numpy as np
out = sys.argv[1]
x64 = np.random.default_rng(0).random((64, 784), dtype=np.float32)
flat = ",".join(str(v) for v in x64.reshape(-1))
open(f"{out}/oip-json-64.json", "w").write(
    '{"inputs":[{"name":"inputs","datatype":"FP32","shape":[64,784],"data":[' + flat + "]}]}")
x512 = np.load(f"{out}/npy-512.npy").astype(np.float32)
header = json.dumps({"inputs": [{"name": "inputs", "datatype": "FP32", "shape": list(x512.shape),
                                 "parameters": {"binary_data_size": x512.nbytes}}],
                     "outputs": [{"name": "log_prob", "parameters": {"binary_data": True}}]}).encode()
open(f"{out}/oip-bin-512.bin", "wb").write(header + x512.tobytes())
open(f"{out}/oip-bin-512.len", "w").write(str(len(header)))
PY

pid=
stop() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }; pid=; }
trap stop EXIT
serve() { # binary, then serve flags
  local bin=$1
  shift
  stop
  "$bin" --threads 2 serve --bind "127.0.0.1:$PORT" "$@" >"$OUT/logs/models-server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1200); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready" && return 0
    kill -0 "$pid" 2>/dev/null || { tail -20 "$OUT/logs/models-server.log"; exit 1; }
    sleep 0.25
  done
  echo "the server did not become ready"
  exit 1
}
rss() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
load() { # label, then load.rs arguments
  local label=$1
  shift
  local line
  line=$("$LOAD" --concurrency 32 --seconds "$DURATION" --warmup "$WARMUP" "$@")
  echo "$label $line" | tee -a "$OUT/models-results.txt"
}
: >"$OUT/models-results.txt"
echo "# $("$BIN" --version) ($(git rev-parse --short HEAD 2>/dev/null)), $(date -u +%FT%TZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" |
  tee -a "$OUT/models-results.txt"
base=http://127.0.0.1:$PORT

# 1. RSS.
for n in 1 10 100; do
  subset=$OUT/models-subset-$n
  rm -rf "$subset" && mkdir -p "$subset"
  for m in $(ls "$MANY" | head -n "$n"); do cp -r "$MANY/$m" "$subset/$m"; done
  serve "$BIN" --models-dir "$subset"
  for m in $(ls "$subset"); do
    curl -sf -o /dev/null -X POST "$base/models/$m/log_prob" -H 'content-type: application/json' \
      -d @"$OUT/models-bodies/$m.json"
  done
  echo "rss models=$n rss_mb=$(rss)" | tee -a "$OUT/models-results.txt"
done
serve "$BIN" --models-dir models
curl -sf -o /dev/null -X POST "$base/log_prob" -H 'content-type: application/json' \
  -d "{\"inputs\": [$(python3 -c 'print([0.5]*784)')]}"
echo "rss models=default rss_mb=$(rss)" | tee -a "$OUT/models-results.txt"

# 2. 100 models against one, alternated on one server.
serve "$BIN" --models-dir "$MANY"
for r in $(seq 1 "$ROUNDS"); do
  load "spread100 round=$r" --url "$base/" --targets "$OUT/models-bodies/targets-100.txt" --rows 1
  load "one-of-100 round=$r" --url "$base/" --targets "$OUT/models-bodies/targets-1.txt" --rows 1
done

# 3. The protocol against the flowscore routes, on the paper model.
serve "$BIN" --model "$PAPER" --models-dir "$OUT"
hl=$(cat "$OUT/bodies/oip-bin-512.len")
for r in $(seq 1 "$ROUNDS"); do
  load "log_prob-json64 round=$r" --url "$base/log_prob" --body "$OUT/bodies/json-64.json" --rows 64
  load "infer-json64 round=$r" --url "$base/v2/models/random/infer" --body "$OUT/bodies/oip-json-64.json" --rows 64
  load "log_prob-npy512 round=$r" --url "$base/log_prob" --body "$OUT/bodies/npy-512.npy" --rows 512 \
    --content-type application/x-npy --concurrency 8
  load "infer-bin512 round=$r" --url "$base/v2/models/random/infer" --body "$OUT/bodies/oip-bin-512.bin" --rows 512 \
    --content-type application/octet-stream --header "inference-header-content-length: $hl" --concurrency 8
done

# 4. No regression for one model, against an earlier build.
if [ -n "$OLD" ]; then
  for r in $(seq 1 "$ROUNDS"); do
    for which in new old; do
      if [ "$which" = new ]; then serve "$BIN" --model "$PAPER" --models-dir "$OUT"; else serve "$OLD" --model "$PAPER" --models-dir "$OUT"; fi
      load "$which-json64 round=$r" --url "$base/log_prob" --body "$OUT/bodies/json-64.json" --rows 64
      load "$which-json1 round=$r" --url "$base/log_prob" --body "$OUT/bodies/json-1.json" --rows 1
    done
  done
fi
stop
python3 - "$OUT/models-results.txt" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) round=\d+ load .*ok_rows_per_s=([\d.]+) ok_p50_ms=([\d.na]+) ok_p99_ms=([\d.na]+)", line)
    if m:
        runs.setdefault(m[1], []).append((float(m[2]), float(m[4])))
    elif line.startswith("rss"):
        print(line.strip())
med = {k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for k, v in runs.items()}
for k, (rate, p99) in med.items():
    print(f"{k:18s} median rows/s {rate:10.1f}  median p99 {p99:7.1f} ms")
for a, b in [("spread100", "one-of-100"), ("infer-json64", "log_prob-json64"), ("infer-bin512", "log_prob-npy512"),
             ("new-json64", "old-json64"), ("new-json1", "old-json1")]:
    if a in med and b in med:
        print(f"ratio {a} / {b}: {med[a][0] / med[b][0]:.3f}")
PY
