#!/usr/bin/env bash
# An S3-compatible server for the remote-store tests: moto's standalone server (PyPI; no MinIO
# or other S3 server is packaged in the registries reachable here), pinned, in .venv-s3
# (git-ignored). Idempotent: a second run checks the version and returns.
#
#   scripts/setup-s3-server.sh && .venv-s3/bin/moto_server -H 127.0.0.1 -p 9000
set -euo pipefail
cd "$(dirname "$0")/.."
MOTO=moto[server]==5.2.5
if .venv-s3/bin/python -c "import importlib.metadata as m; assert m.version('moto') == '${MOTO#*==}'" 2>/dev/null; then
  echo "moto ${MOTO#*==} ready (.venv-s3)"
  exit 0
fi
rm -rf .venv-s3
python3 -m venv .venv-s3
.venv-s3/bin/pip install -q --disable-pip-version-check "$MOTO"
.venv-s3/bin/python -c "import importlib.metadata as m; print('moto', m.version('moto'), 'ready (.venv-s3)')"
