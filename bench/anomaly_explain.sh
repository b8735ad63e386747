#!/usr/bin/env bash
# Explanations on planted anomalies: 8 columns in 4 correlated pairs (x = z + 0.1·noise), a model
# trained with `flowscore train` defaults on 3,000 rows, and 200 test rows each with one column
# pushed 3 away from its partner. Prints precision@1 (the top attribution is the planted column)
# and hit@2. Part of docs/benchmarks.md, "Anomaly detection quality".
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWSCORE_BIN:-./target/release/flowscore}
OUT=bench/out/explain
mkdir -p "$OUT"
[ -x "$BIN" ] || cargo build --release
python3 - "$OUT" <<'PY'
import random, sys
out, r = sys.argv[1], random.Random(1)
def row():
    x = []
    for _ in range(4):
        z = r.gauss(0, 1)
        x += [z + 0.1 * r.gauss(0, 1), z + 0.1 * r.gauss(0, 1)]
    return x
header = ",".join(f"x{i}" for i in range(8)) + "\n"
with open(f"{out}/train.csv", "w") as f:
    f.write(header + "".join(",".join(f"{v:.5f}" for v in row()) + "\n" for _ in range(3000)))
planted = []
with open(f"{out}/test.csv", "w") as f:
    f.write(header)
    for _ in range(200):
        x, j = row(), r.randrange(8)
        x[j] += r.choice([-3, 3])
        planted.append(j)
        f.write(",".join(f"{v:.5f}" for v in x) + "\n")
open(f"{out}/planted.txt", "w").write(" ".join(map(str, planted)))
PY
"$BIN" --threads 2 train --data "$OUT/train.csv" --out "$OUT/model" --force >/dev/null 2>&1
"$BIN" explain --model "$OUT/model" --data "$OUT/test.csv" --top-k 2 >"$OUT/explain.jsonl"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
planted = list(map(int, open(f"{out}/planted.txt").read().split()))
rows = [json.loads(l) for l in open(f"{out}/explain.jsonl")]
p1 = sum(r["top"][0]["feature"] == j for r, j in zip(rows, planted)) / len(rows)
p2 = sum(j in [t["feature"] for t in r["top"]] for r, j in zip(rows, planted)) / len(rows)
print(f"explain rows={len(rows)} precision@1={p1:.3f} hit@2={p2:.3f}")
PY
