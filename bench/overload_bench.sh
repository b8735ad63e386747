#!/usr/bin/env bash
# Goodput under overload: flowscore with --queue-depth 64 on the paper's architecture (784-d,
# 4 couplings x 5 x 1000, random weights), 64-row JSON requests from bench/load.rs (one client
# thread, closed loop, reconnecting when the server closes). Concurrency 8, 16 and 32 show where
# the server saturates (32 in the issue's measurement); 128 and 512 are 4x and 16x that. Goodput
# counts only the 200s; the report gives each load's goodput as a share of the best rate at
# c <= 32, the p99 of the admitted (200) requests, and the server's RSS after the load.
#
#   bench/overload_bench.sh
#
# Environment: BENCH_DURATION [15] seconds per load, BENCH_WARMUP [2], BENCH_PORT [18090],
# BENCH_CONCURRENCY [8,16,32,128,512], FLOWSCORE_BIN [./target/release/flowscore] (e.g. an older
# build to compare), FLOWSCORE_SERVE_ARGS [] extra flags. Writes bench/out/overload-results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out
MODEL=$OUT/model-paper
BIN=${FLOWSCORE_BIN:-./target/release/flowscore}
PORT=${BENCH_PORT:-18090}
DURATION=${BENCH_DURATION:-15}
WARMUP=${BENCH_WARMUP:-2}
CONC=${BENCH_CONCURRENCY:-8,16,32,128,512}
read -r -a EXTRA <<<"${FLOWSCORE_SERVE_ARGS:-}"
mkdir -p "$OUT/bodies" "$OUT/logs"
[ -x "$BIN" ] || cargo build --release
[ -f "$MODEL/card.json" ] || "$BIN" init --out "$MODEL" --dim 784 --shape 28,28 --couplings 4 --hidden-layers 5 --hidden-units 1000
[ -f "$OUT/bodies/json-64.json" ] || .venv/bin/python bench/make_bodies.py --out "$OUT/bodies" --dim 784 >/dev/null
cargo bench --bench load --no-run -q 2>/dev/null || cargo bench --bench load --no-run
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -n 1)

ulimit -n 65536 2>/dev/null || true
"$BIN" --threads 2 serve --bind "127.0.0.1:$PORT" --model "$MODEL" --queue-depth 64 "${EXTRA[@]}" \
  >"$OUT/logs/overload-server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready" && break
  kill -0 $pid 2>/dev/null || { tail -20 "$OUT/logs/overload-server.log"; exit 1; }
  sleep 0.5
done
rss() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
echo "# $("$BIN" --version) ($(git rev-parse --short HEAD 2>/dev/null)), $(date -u +%FT%TZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "server RSS idle: $(rss) MB"
results=()
for c in ${CONC//,/ }; do
  line=$("$LOAD" --url "http://127.0.0.1:$PORT/log_prob" --body "$OUT/bodies/json-64.json" --rows 64 \
    --concurrency "$c" --seconds "$DURATION" --warmup "$WARMUP")
  line="$line rss_mb=$(rss)"
  echo "$line"
  results+=("$line")
done
printf '%s\n' "${results[@]}" | python3 bench/overload_report.py | tee "$OUT/overload-results.md"
