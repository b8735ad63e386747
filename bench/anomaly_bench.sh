#!/usr/bin/env bash
# Anomaly-detection quality (docs/benchmarks.md, "Anomaly detection quality"):
#   1. images: the shipped Fashion-MNIST model, calibrated on test rows 0..5000, against
#      out-of-distribution sets made here (bench/anomaly_image.rs): AUROC of `likelihood`,
#      `complexity_corrected` and the PNG length alone. BENCH_HOLDOUT=1 also trains a smaller model
#      without class 9 (a few minutes) and scores that class.
#   2. tables: flowscore against IsolationForest, LOF, a one-class SVM and a Gaussian mixture on
#      scikit-learn's bundled datasets and a synthetic set (bench/anomaly_tabular.py).
#
#   bench/anomaly_bench.sh
#
# Installs scikit-learn into .venv-bench (git-ignored) on first use. Environment: BENCH_SEEDS
# [0,1,2], FLOWSCORE_BIN [./target/release/flowscore], BENCH_TRAIN_ARGS [] extra `flowscore train`
# flags for the tabular runs. Writes bench/out/anomaly-results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWSCORE_BIN:-./target/release/flowscore}
OUT=bench/out/anomaly
SKLEARN=scikit-learn==1.7.2
mkdir -p "$OUT"
[ -x "$BIN" ] || cargo build --release
if ! .venv-bench/bin/python -c "import sklearn; assert sklearn.__version__ == '${SKLEARN#*==}'" 2>/dev/null; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q --disable-pip-version-check "$SKLEARN" "numpy<3"
fi
cargo bench --bench anomaly_image --no-run -q 2>/dev/null || cargo bench --bench anomaly_image --no-run
IMG=$(ls -t target/release/deps/anomaly_image-* | grep -v '\.d$' | head -n 1)
TEST=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
TRAIN=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# scikit-learn's digits (8×8, levels 0..16) as 28×28 8-bit images: ×15, 3× nearest, 2-pixel border.
.venv-bench/bin/python - "$OUT/digits.npy" <<'PY'
import sys
import numpy as np
from sklearn.datasets import load_digits
d = load_digits().images * 15.0
big = np.kron(d, np.ones((1, 3, 3)))
out = np.zeros((len(d), 28, 28), np.uint8)
out[:, 2:26, 2:26] = np.clip(np.round(big), 0, 255).astype(np.uint8)
np.save(sys.argv[1], out)
PY
rm -rf "$OUT/fashion-mnist" && mkdir -p "$OUT/fashion-mnist"
cp -r models/fashion-mnist/1 "$OUT/fashion-mnist/1"
"$BIN" calibrate --model "$OUT/fashion-mnist/1" --data "$TEST" --limit 5000 >/dev/null
extra=()
if [ "${BENCH_HOLDOUT:-0}" = 1 ]; then
  .venv-bench/bin/python - "$TRAIN" "$OUT/train-no9.npy" <<'PY'
import gzip, sys
import numpy as np
x = np.frombuffer(gzip.open(sys.argv[1]).read()[16:], np.uint8).reshape(-1, 28, 28)
y = np.frombuffer(gzip.open(sys.argv[1].replace("images-idx3", "labels-idx1")).read()[8:], np.uint8)
np.save(sys.argv[2], x[y != 9])
PY
  "$BIN" --threads 2 train --data "$OUT/train-no9.npy" --out "$OUT/no9" --force --couplings 4 --hidden-layers 3 \
    --hidden-units 256 --epochs 8 >/dev/null 2>&1
  extra=(--holdout-model "$OUT/no9")
fi
{
  echo "## Images ($(git rev-parse --short HEAD), $(date -u +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo
  "$IMG" --model "$OUT/fashion-mnist/1" --digits "$OUT/digits.npy" "${extra[@]}"
  echo
  echo "## Tables (seeds ${BENCH_SEEDS:-0,1,2})"
  echo
  .venv-bench/bin/python bench/anomaly_tabular.py --bin "$BIN" --seeds "${BENCH_SEEDS:-0,1,2}" \
    --train-args "${BENCH_TRAIN_ARGS:-}" 2>/dev/null
} | tee bench/out/anomaly-results.md
