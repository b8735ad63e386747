#!/usr/bin/env bash
# Does a background training job hurt scoring? p50/p99 of 1-row /log_prob at concurrency 1 on
# the default model, without and then with a training job running (Fashion-MNIST, the default
# recipe, --train-threads 1). wrk shares the 2 cores with the server.
#   DURATION=20 bench/train_interference.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
PORT=${PORT:-18090}
TOKEN=bench-token
out=bench/out/interference; rm -rf "$out"; mkdir -p "$out/models" "$out/data"
cp -r models/fashion-mnist "$out/models/"
cp /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz "$out/data/"
.venv/bin/python bench/make_bodies.py --out "$out/bodies" --dim 784 >/dev/null
./target/release/flowscore --threads 2 serve --bind 127.0.0.1:$PORT --models-dir "$out/models" \
  --data-dir "$out/data" --admin-token $TOKEN --train-threads 1 >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
until curl -sf localhost:$PORT/ready >/dev/null; do sleep 0.2; done
load() {
  WRK_BODY_FILE="$out/bodies/json-1.json" WRK_CONTENT_TYPE=application/json WRK_ROWS=1 WRK_LABEL="$1" \
    wrk -t1 -c1 -d"${DURATION}s" -s bench/wrk_post.lua "http://127.0.0.1:$PORT/log_prob" | grep wrk_result
}
load idle
job=$(curl -s -X POST localhost:$PORT/train -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"dataset": {"path": "train-images-idx3-ubyte.gz"}, "name": "bench", "promote": "never", "config": {"epochs": 100}}')
id=$(echo "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
sleep 3
load training
curl -s localhost:$PORT/train/$id -H "authorization: Bearer $TOKEN" | python3 -c \
  'import json,sys; j=json.load(sys.stdin); print("job", j["state"], "epoch", j["epoch"], "progress", round(j["progress"],2))'
curl -s -X DELETE localhost:$PORT/train/$id -H "authorization: Bearer $TOKEN" >/dev/null
