#!/usr/bin/env bash
# A Python venv (.venv, git-ignored) with PyTorch 2.13.0 for the CPU, numpy, safetensors, FastAPI
# and uvicorn, for the Python loader test (python/flowscore_torch.py) and the PyTorch reference
# server (bench/pytorch_server.py). Idempotent: a finished venv is left alone; an unfinished one
# (no stamp file) is rebuilt from scratch.
#
# PyPI's Linux torch wheel is the CUDA build, whose dependencies add ~3.4 GB (CUDA, triton). It is
# installed here without them (~1.4 GB in all, ~30 s with the wheel at hand): torch's own libraries
# stay as shipped; of the CUDA libraries they link against, libcudart, libcupti and libcufile come
# from their small nvidia-* packages, and cuBLAS, cuDNN, cuFFT, cuRAND, cuSPARSE(Lt), NCCL, NVRTC
# and NVSHMEM get stand-ins compiled here (cc, nm) into torch/lib: just the symbols torch imports,
# each aborting with a message if called. Only CUDA work would call them (without a GPU,
# torch.cuda.is_available() is False).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
# torch's own requirements less the Linux-only CUDA ones (cuda-toolkit, cuda-bindings,
# nvidia-cudnn/-cusparselt/-nccl/-nvshmem, triton), the three real CUDA libraries, and ours.
REQS=(filelock "typing-extensions>=4.10.0" "setuptools>=77.0.3" "sympy>=1.13.3" "networkx>=2.5.1"
  jinja2 "fsspec>=0.8.5" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  nvidia-cufile==1.15.1.6 "numpy<3" "safetensors>=0.4" fastapi uvicorn)
stamp=.venv/.flowscore-ready # written last
recipe="torch==$TORCH_VERSION ${REQS[*]} stand-ins:1"

works() {
  .venv/bin/python - "$TORCH_VERSION" <<'PY'
import sys
import fastapi, numpy, safetensors.torch, uvicorn  # noqa: F401
import torch
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
x = torch.randn(64, 32, dtype=torch.float64)
assert torch.allclose(torch.nn.functional.linear(x, torch.eye(32, dtype=x.dtype)), x)
PY
}
if [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ] && works 2>/dev/null; then
  echo "python venv ready (.venv)"
  exit 0
fi
for tool in cc nm; do
  command -v "$tool" >/dev/null || { echo "setup-python.sh: $tool not found (Debian: gcc, binutils)" >&2; exit 1; }
done

rm -rf .venv
"$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
"${pip[@]}" install "${REQS[@]}"

# The torch wheel; scripts/setup-libtorch.sh's lean set-up keeps the same one here.
wheel_dir=.libtorch/wheels
tag=$(.venv/bin/python -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
wheel=$(ls "$wheel_dir"/torch-$TORCH_VERSION-$tag-$tag-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  "${pip[@]}" download --no-deps --only-binary=:all: -d "$wheel_dir" "torch==$TORCH_VERSION"
  wheel=$(ls "$wheel_dir"/torch-$TORCH_VERSION-$tag-$tag-*.whl | head -n 1)
fi
"${pip[@]}" install --no-deps "$wheel"

# The stand-ins, from the symbols torch/lib's libraries import (nm -D).
lib=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')/torch/lib
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
.venv/bin/python - "$lib" "$build" <<'PY'
import glob, subprocess, sys

lib, build = sys.argv[1], sys.argv[2]
# soname: (version tag of its symbols, or None and the name prefix of its unversioned symbols)
STUBS = {
    "libcublas.so.13": ("libcublas.so.13", None),
    "libcublasLt.so.13": ("libcublasLt.so.13", None),
    "libcudnn.so.9": ("libcudnn.so.9", None),
    "libcufft.so.12": ("libcufft.so.12", None),
    "libcurand.so.10": ("libcurand.so.10", None),
    "libcusparse.so.12": ("libcusparse.so.12", None),
    "libcusparseLt.so.0": (None, "cusparseLt"),
    "libnccl.so.2": (None, "nccl"),
    "libnvrtc.so.13": ("libnvrtc.so.13", None),
    "libnvshmem_host.so.3": ("NVSHMEM", None),
}
# cuDNN's version queries answer 0, so that torch.backends.cudnn.version() raises, not aborts.
BODIES = {
    "cudnnGetVersion": "unsigned long cudnnGetVersion(void) { return 0; }\n",
    "cudnnGetProperty": "int cudnnGetProperty(int t, int *v) { (void)t; *v = 0; return 1001; }\n",
}
HEAD = r"""#include <stdio.h>
#include <stdlib.h>
static void die(const char *what) {
  fprintf(stderr, "%s called: this torch has no CUDA libraries (scripts/setup-python.sh)\n", what);
  abort();
}
"""
wanted = set()
for so in glob.glob(f"{lib}/*.so*"):
    out = subprocess.run(["nm", "-D", "--undefined-only", so], check=True, capture_output=True, text=True)
    wanted |= {f[1] for f in map(str.split, out.stdout.splitlines()) if f[0] == "U"}
for soname, (tag, prefix) in STUBS.items():
    names = sorted({w.split("@")[0] for w in wanted if (tag and w.endswith("@" + tag))
                    or (prefix and "@" not in w and w.startswith(prefix))})
    with open(f"{build}/{soname}.c", "w") as fh:
        fh.write(HEAD + "".join(BODIES.get(n) or f'void {n}(void) {{ die("{n}"); }}\n' for n in names))
    with open(f"{build}/{soname}.map", "w") as fh:
        fh.write(f"{tag or ''} {{ {'global: ' + '; '.join(names) + ';' if names else ''} local: *; }};\n")
PY
for c in "$build"/*.c; do
  so=$(basename "$c" .c)
  cc -shared -fPIC -O1 -o "$lib/$so" "$c" "-Wl,-soname,$so" "-Wl,--version-script=$build/$so.map"
done

works
echo "$recipe" >"$stamp"
echo "python venv ready (.venv, $(du -sh .venv | cut -f1))"
