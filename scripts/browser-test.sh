#!/usr/bin/env bash
# The dashboard in a real browser (tests/browser/test_dashboard.py): headless Chromium through
# selenium against `flowscore serve` with a temporary store. Needs scripts/setup-browser.sh first;
# without Chromium it fails and says so. About 30 s on 2 cores once the binary is built.
#   scripts/browser-test.sh [--update-docs]   (--update-docs: also copy the screenshots to docs/img/)
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromedriver)
[ -x .venv-browser/bin/python ] && .venv-browser/bin/python -c 'import selenium' 2>/dev/null || missing+=(".venv-browser with selenium")
if [ ${#missing[@]} -gt 0 ]; then
  echo "browser-test.sh: missing ${missing[*]}: run scripts/setup-browser.sh first" >&2
  exit 1
fi
# The page's files are compiled into the binary: build it so that it serves the current ones,
# unless FLOWSCORE_BIN names one already built from these sources (test.sh: cargo test's).
bin=${FLOWSCORE_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --bin flowscore
  bin=target/release/flowscore
fi
exec .venv-browser/bin/python tests/browser/test_dashboard.py --binary "$bin" "$@"
