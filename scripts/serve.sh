#!/usr/bin/env bash
# Builds flowscore and serves the shipped default model (models/fashion-mnist/1) on
# 127.0.0.1:8080. Extra arguments go to `flowscore serve` (e.g. --bind 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release
exec ./target/release/flowscore serve --models-dir models "$@"
