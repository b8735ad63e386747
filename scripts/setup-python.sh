#!/usr/bin/env bash
# A Python venv (.venv, git-ignored) with plain PyTorch 2.13.0 and numpy, for the Python loader
# test (python/flowscore_torch.py) and the PyTorch reference benchmarks. Idempotent.
# PyPI's Linux torch wheel is the CUDA build, so this pulls the CUDA packages (~4.7 GB, ~70 s).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if .venv/bin/python -c 'import torch, numpy, fastapi, uvicorn; assert torch.__version__.startswith("2.13.0")' 2>/dev/null; then
  echo "python venv ready (.venv)"; exit 0
fi
.venv/bin/pip install -q "torch==2.13.0" "numpy<3" "safetensors>=0.4" fastapi uvicorn
echo "python venv ready (.venv)"
