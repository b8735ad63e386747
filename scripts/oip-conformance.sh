#!/usr/bin/env bash
# Open Inference Protocol (KServe v2 REST) conformance with NVIDIA's client, tritonclient[http]:
# trains two small tabular models of different widths, serves both from one release build, and
# runs python/test_oip.py against them (metadata, readiness, infer in JSON and binary mode, values
# equal to /models/{name}/log_prob and /encode). Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWSCORE_BIN:-./target/release/flowscore}
out=target/oip
[ -x "$BIN" ] || cargo build --release
scripts/setup-oip-client.sh
rm -rf "$out" && mkdir -p "$out/models" "$out/data"
python3 - "$out/data" <<'PY'
import random, sys
r = random.Random(0)
for name, d in (("narrow", 4), ("wide", 7)):
    with open(f"{sys.argv[1]}/{name}.csv", "w") as f:
        f.write(",".join(f"c{i}" for i in range(d)) + "\n")
        for _ in range(300):
            f.write(",".join(f"{r.gauss(0, 1):.4f}" for _ in range(d)) + "\n")
PY
for name in narrow wide; do
  "$BIN" train --data "$out/data/$name.csv" --out "$out/models/$name/1" --name "$name" --epochs 2 --couplings 2 \
    --hidden-layers 1 --hidden-units 16 >/dev/null 2>&1
done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --bind "127.0.0.1:$port" --models-dir "$out/models" >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/v2/health/ready" && break
  kill -0 $pid 2>/dev/null || { tail -20 "$out/server.log"; exit 1; }
  sleep 0.1
done
.venv-oip/bin/python python/test_oip.py --url "127.0.0.1:$port" --model narrow --model wide
