#!/usr/bin/env bash
# A small Python venv (.venv-oip, git-ignored) with NVIDIA's Triton HTTP client, tritonclient[http],
# and numpy, for the Open Inference Protocol (KServe v2) conformance test, python/test_oip.py.
# Idempotent: left alone when the pinned versions are installed and import.
#
#   scripts/setup-oip-client.sh && .venv-oip/bin/python python/test_oip.py --url 127.0.0.1:PORT --model NAME
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TRITONCLIENT=2.73.0
NUMPY=2.4.6
venv=.venv-oip

works() {
  "$venv/bin/python" - "$TRITONCLIENT" "$NUMPY" <<'PY'
import sys
from importlib.metadata import version

import numpy
import tritonclient.http  # noqa: F401

assert version("tritonclient") == sys.argv[1], version("tritonclient")
assert numpy.__version__ == sys.argv[2], numpy.__version__
PY
}
if [ -x "$venv/bin/python" ] && works 2>/dev/null; then
  echo "OIP client venv ready ($venv, tritonclient $TRITONCLIENT)"
  exit 0
fi
rm -rf "$venv"
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "tritonclient[http]==$TRITONCLIENT" "numpy==$NUMPY"
works
echo "OIP client venv ready ($venv, tritonclient $TRITONCLIENT, $(du -sh "$venv" | cut -f1))"
