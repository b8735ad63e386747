#!/usr/bin/env bash
# What the dashboard's browser test (scripts/browser-test.sh) needs, idempotently: Debian's
# chromium and chromium-driver (apt-get, as root or through sudo) and a venv .venv-browser/
# (git-ignored) with selenium from PyPI. Selenium is given both binaries' paths, so it never
# downloads a browser or a driver of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SELENIUM_VERSION=4.48.0

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

stamp=.venv-browser/.flowscore-ready # written last
recipe="selenium==$SELENIUM_VERSION"
if [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ] && .venv-browser/bin/python -c 'import selenium' 2>/dev/null; then
  echo "browser test ready ($(chromium --version 2>/dev/null | head -n 1), selenium $SELENIUM_VERSION)"
  exit 0
fi
rm -rf .venv-browser
"$PYTHON" -m venv .venv-browser
.venv-browser/bin/python -m pip -q --disable-pip-version-check install "selenium==$SELENIUM_VERSION"
echo "$recipe" >"$stamp"
echo "browser test ready ($(chromium --version 2>/dev/null | head -n 1), selenium $SELENIUM_VERSION)"
