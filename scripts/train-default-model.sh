#!/usr/bin/env bash
# Reproduces the shipped default model, models/fashion-mnist (about 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release
data=/usr/share/datasets/fashion-mnist
./target/release/flowscore --threads 2 train \
  --data "$data/train-images-idx3-ubyte.gz" --test "$data/t10k-images-idx3-ubyte.gz" \
  --out "${1:-models/fashion-mnist/1}" --force --name fashion-mnist \
  --preprocess logit --couplings 6 --hidden-layers 3 --hidden-units 400 \
  --lr 2e-3 --lr-schedule cosine --epochs 50 --patience 10 --batch-size 256 --seed 0
