#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, then format, lints, the
# Rust tests (unit, exactness, store, training, CLI, Python-loader agreement) and the Python
# loader's own self-check.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
.venv/bin/python python/test_flowscore_torch.py
