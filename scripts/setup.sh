#!/usr/bin/env bash
# Everything flowscore needs on a fresh Debian machine, idempotently:
# Debian packages, libtorch (lean CPU set-up by default; pass --cuda for the full wheel),
# and with --python the Python venv used by the tests and benchmarks.
#   scripts/setup.sh [--cuda] [--python]
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=""; python=0
for a in "$@"; do
  case "$a" in
    --cuda) cuda=--cuda ;;
    --python) python=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

# Debian packages: Fashion-MNIST (the default model's data and real test rows), promtool
# (metrics format check), a C compiler for torch-sys.
need=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v promtool >/dev/null || need+=(prometheus)
command -v wrk >/dev/null || need+=(wrk)
command -v cc >/dev/null || need+=(gcc g++)
command -v python3 >/dev/null || need+=(python3 python3-venv python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

scripts/setup-libtorch.sh $cuda
[ "$python" = 1 ] && scripts/setup-python.sh
exit 0
