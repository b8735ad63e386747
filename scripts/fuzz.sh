#!/usr/bin/env bash
# Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis, every
# check, admin routes included with a token), against a release build serving a small trained
# tabular model. Exits non-zero on any failure. Part of scripts/test.sh.
#
#   scripts/fuzz.sh [extra schemathesis arguments]
#
# Environment: FUZZ_MAX_EXAMPLES [40] examples per operation and phase, FUZZ_SEED [1],
# FLOWSCORE_BIN [./target/release/flowscore]. The report goes to target/fuzz/. The unload routes
# are left out: unloading the one model served is a valid request that leaves nothing to fuzz
# (tests/models.rs covers them).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWSCORE_BIN:-./target/release/flowscore}
SCHEMATHESIS=schemathesis==4.32.5
out=target/fuzz
[ -x "$BIN" ] || cargo build --release
if ! .venv-fuzz/bin/schemathesis --version 2>/dev/null | grep -q "${SCHEMATHESIS#*==}"; then
  python3 -m venv .venv-fuzz
  .venv-fuzz/bin/pip install -q --disable-pip-version-check "$SCHEMATHESIS"
fi
rm -rf "$out" && mkdir -p "$out/models" "$out/data"
# A model of values in [0, 1] (logit preprocessing, like the image models): every input the
# document allows keeps its float32 arithmetic finite (docs/testing.md says more).
python3 - "$out/data/tab.csv" <<'PY'
import random, sys
r = random.Random(0)
with open(sys.argv[1], "w") as f:
    f.write("a,b,c,d\n")
    for _ in range(400):
        x = r.random()
        f.write(f"{x:.4f},{r.random():.4f},{min(1, max(0, 0.5 * x + r.gauss(0.2, 0.1))):.4f},{r.random():.4f}\n")
PY
"$BIN" train --data "$out/data/tab.csv" --out "$out/models/tab/1" --name tab --epochs 3 --couplings 2 \
  --hidden-layers 1 --hidden-units 16 --preprocess logit >/dev/null 2>&1
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
"$BIN" serve --bind "127.0.0.1:$port" --models-dir "$out/models" --data-dir "$out/data" --admin-token "$token" \
  >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/ready" && break
  kill -0 $pid 2>/dev/null || { tail -20 "$out/server.log"; exit 1; }
  sleep 0.1
done
status=0
PYTHONPATH=scripts SCHEMATHESIS_HOOKS=fuzz_hooks .venv-fuzz/bin/schemathesis --config-file scripts/schemathesis.toml \
  run "http://127.0.0.1:$port/openapi.json" \
  --checks all -H "Authorization: Bearer $token" --seed "${FUZZ_SEED:-1}" \
  --max-examples "${FUZZ_MAX_EXAMPLES:-40}" --workers 1 --request-timeout 30 --no-color \
  --exclude-path-regex '/unload$' "$@" \
  >"$out/report.txt" 2>&1 || status=$?
grep -E '^(Failures|  ❌|Test cases|  [0-9]+ generated)|^=+ .* =+$' "$out/report.txt" || true
# The server must have stayed up and ready throughout.
curl -sf -o /dev/null "http://127.0.0.1:$port/ready" || { echo "fuzz: the server is not ready after the run"; status=1; }
if grep -q 'panicked' "$out/server.log"; then echo "fuzz: the server log has a panic"; status=1; fi
[ "$status" = 0 ] || echo "fuzz: failures; the full report is $out/report.txt"
exit "$status"
