#!/usr/bin/env bash
# Builds flowscore and runs it on the shipped default model. Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release
model=models/fashion-mnist/1
./target/release/flowscore inspect --model "$model"
./target/release/flowscore sample --model "$model" -n 64 --seed 0 --out samples.png
