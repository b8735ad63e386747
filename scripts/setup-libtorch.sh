#!/usr/bin/env bash
# Provision libtorch 2.13.0 (the version tch 0.26 expects) from the PyPI `torch` wheel into
# .libtorch/ (git-ignored). Idempotent: a finished install is left alone.
#
#   scripts/setup-libtorch.sh          lean CPU set-up (~1 GB): torch's include/ and the CPU
#                                      libraries, plus libcudart and libcupti, which
#                                      libtorch_cpu.so links against even on CPU.
#   scripts/setup-libtorch.sh --cuda   the full wheel with every CUDA package (~4.7 GB).
#
# Either way .libtorch/torch points at a folder with include/ and lib/; .cargo/config.toml sets
# LIBTORCH to it and build.rs bakes its lib/ into the binary's rpath.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
CUDART=nvidia-cuda-runtime==13.0.96
CUPTI=nvidia-cuda-cupti==13.0.85
PYTHON=${PYTHON:-python3}
mode=lean
[ "${1:-}" = "--cuda" ] && mode=cuda
root=.libtorch
marker="$root/.done-$mode-$TORCH_VERSION"

if [ -f "$marker" ] && [ -e "$root/torch/lib/libtorch_cpu.so" ]; then
  echo "libtorch $TORCH_VERSION ($mode) already in $root/torch"
  exit 0
fi
mkdir -p "$root"

if [ "$mode" = cuda ]; then
  [ -x "$root/venv-cuda/bin/python" ] || "$PYTHON" -m venv "$root/venv-cuda"
  "$root/venv-cuda/bin/pip" install -q "torch==$TORCH_VERSION"
  site=$("$root/venv-cuda/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sfn "$(cd "$site/torch" && pwd)" "$root/torch"
else
  site="$root/site"
  wheel_dir="$root/wheels"
  mkdir -p "$wheel_dir" "$site"
  ls "$wheel_dir"/torch-$TORCH_VERSION-*.whl >/dev/null 2>&1 ||
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$wheel_dir" "torch==$TORCH_VERSION"
  # The CPU libraries and headers only; libtorch_cuda*.so and the CUDA packages stay out.
  "$PYTHON" - "$wheel_dir" "$site" <<'PY'
import glob, sys, zipfile
wheel_dir, site = sys.argv[1], sys.argv[2]
keep_libs = {"libc10.so", "libtorch_cpu.so", "libgomp.so.1", "libshm.so"}
whl = sorted(glob.glob(f"{wheel_dir}/torch-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist()
             if n.startswith("torch/include/")
             or (n.startswith("torch/lib/") and n.split("/")[-1] in keep_libs)]
    z.extractall(site, names)
PY
  # libtorch_cpu.so needs libcudart.so.13 and libcupti.so.13; its RPATH looks in
  # $ORIGIN/../../nvidia/cu13/lib, which is where these wheels install under $site.
  "$PYTHON" -m pip install -q --no-deps --upgrade --target "$site" "$CUDART" "$CUPTI"
  # tch links -ltorch, whose real library only forwards to torch_cpu and torch_cuda: a CPU
  # build needs an empty stand-in.
  echo '' | cc -shared -x c - -o "$site/torch/lib/libtorch.so" -Wl,-soname,libtorch.so
  ln -sfn "$(cd "$site/torch" && pwd)" "$root/torch"
fi
rm -f "$root"/.done-*
touch "$marker"
echo "libtorch $TORCH_VERSION ($mode) ready in $root/torch -> $(readlink "$root/torch")"
