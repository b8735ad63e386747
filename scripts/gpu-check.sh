#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU (issue "Scoring and training on a GPU"): the
# CUDA libtorch, a release build, the GPU exactness tests (tests/gpu.rs, which build.rs enables
# where libtorch has CUDA and /dev/nvidiactl exists), the raw throughput benchmark (bench/gpu.rs),
# the served rows/s of 4096-row NPY requests at 8 clients against that raw rate, and one training
# epoch on the GPU next to one on the CPU. Writes the figures to
# ${OUT:-bench/out}/gpu-results.txt.
#
#   scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out}
mkdir -p "$out"
log="$out/gpu-results.txt"
: > "$log"
say() { echo "$*" | tee -a "$log"; }
say "gpu-check $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(date -u +%F) $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
scripts/setup-libtorch.sh --cuda
cargo build --release
cargo test --release --test gpu -- --include-ignored 2>&1 | tee -a "$log" | grep -E "^test |test result"
cargo bench --bench gpu -- --device cuda --seconds 5 | tee -a "$log"
# Served: 4096-row NPY at 8 clients, as a share of the raw rate at 4096.
python3 - "$out/rows4096.npy" <<'PY'
import sys, struct
n, d = 4096, 784
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (n, d)
header += " " * (63 - (len(header) + 10) % 64) + "\n"
with open(sys.argv[1], "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    f.write(struct.pack("<f", 0.5) * (n * d))
PY
target/release/flowscore init --out "$out/paper" --dim 784 --shape 28,28 --preprocess logit --force >/dev/null
target/release/flowscore serve --model "$out/paper" --device cuda --bind 127.0.0.1:8093 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf 127.0.0.1:8093/ready >/dev/null && break; sleep 1; done
cargo bench --bench load -- --url http://127.0.0.1:8093/log_prob --body "$out/rows4096.npy" \
  --content-type application/x-npy --rows 4096 --concurrency 8 --seconds 15 | tee -a "$log"
# One training epoch of the default recipe on Fashion-MNIST, on the GPU and on the CPU.
data=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ -f "$data" ]; then
  for device in cuda cpu; do
    start=$(date +%s.%N)
    target/release/flowscore train --data "$data" --out "$out/epoch-$device" --force --epochs 1 --device "$device" >/dev/null
    say "train_epoch device=$device seconds=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")"
  done
else
  say "train_epoch: $data missing (scripts/setup.sh installs it)"
fi
say "done: $log"
