#!/usr/bin/env bash
# Training benchmark on Fashion-MNIST, flowscore vs a plain-PyTorch NICE (the paper's recipe),
# each for the same wall-clock budget on this machine, one after the other (never concurrently:
# both use the 2 cores). Prints test log-likelihood against time for both, and the ratio of a
# flowscore training step to a PyTorch step for the same architecture (target <= 1.0).
#   BUDGET=900 bench/train_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-900}
out=bench/out/train; mkdir -p "$out"
data=/usr/share/datasets/fashion-mnist
scripts/setup.sh --python >/dev/null
cargo build --release -q

echo "== step time, the paper's architecture (4 couplings x 5 x 1000, batch 256, 2 threads)"
rust_step=$(cargo bench -q --bench train_step -- 1000 5 256 2 | sed -n 's/.*step_ms_median=\([0-9.]*\).*/\1/p')
py_step=$(.venv/bin/python bench/pytorch_nice_train.py --step-time-only 20 --threads 2 | sed -n 's/.*step_ms_median=\([0-9.]*\).*/\1/p')
echo "flowscore ${rust_step} ms/step, PyTorch ${py_step} ms/step, ratio $(python3 -c "print(f'{$rust_step/$py_step:.3f}')")"
echo "== same for flowscore's default architecture (6 x 3 x 400)"
rust_step2=$(cargo bench -q --bench train_step -- 400 3 256 2 | sed -n 's/.*step_ms_median=\([0-9.]*\).*/\1/p')
py_step2=$(.venv/bin/python bench/pytorch_nice_train.py --step-time-only 20 --threads 2 --couplings 6 --hidden-layers 3 --hidden-units 400 | sed -n 's/.*step_ms_median=\([0-9.]*\).*/\1/p')
echo "flowscore ${rust_step2} ms/step, PyTorch ${py_step2} ms/step, ratio $(python3 -c "print(f'{$rust_step2/$py_step2:.3f}')")"

echo "== flowscore default recipe, ${BUDGET}s budget"
./target/release/flowscore --threads 2 train --data $data/train-images-idx3-ubyte.gz \
  --test $data/t10k-images-idx3-ubyte.gz --out "$out/flowscore-model" --force --name bench \
  --max-seconds "$BUDGET" --epochs 1000 --patience 1000 2>&1 | tee "$out/flowscore.log" | grep -E 'epoch|saved'
echo "== plain PyTorch NICE, paper recipe (4 x 5 x 1000, s=0, identity, lr 1e-3, batch 256), ${BUDGET}s budget"
.venv/bin/python bench/pytorch_nice_train.py --budget-seconds "$BUDGET" --eval-every-seconds 60 --threads 2 \
  | tee "$out/pytorch.log" | grep -E '^t='
echo "== summary"
python3 - "$out" <<'PY'
import json, sys, re
out = sys.argv[1]
card = json.load(open(f"{out}/flowscore-model/card.json"))
t = card["training"]
print(f"flowscore: test {t['test_log_likelihood']:.1f} nats ({t['test_bits_per_dim']:.3f} bits/dim) after {t['wall_seconds']:.0f}s, {t['epochs']} epochs")
for h in t["history"]:
    print(f"  t={h['seconds']:6.0f}s epoch {h['epoch']:3d}  val {h['val_log_likelihood']:8.1f} nats ({h['val_bits_per_dim']:.3f} bpd)")
last = [l for l in open(f"{out}/pytorch.log") if l.startswith("t=")][-1]
print("pytorch  :", last.strip())
PY
