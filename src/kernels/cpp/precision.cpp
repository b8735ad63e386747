// Float32 stays float32 on every backend: libtorch lets cuDNN use TF32 by default, and the
// TORCH_ALLOW_TF32_CUBLAS_OVERRIDE environment variable turns it on for cuBLAS matmuls too.
#include <ATen/Context.h>

extern "C" {

void flowscore_pin_float32() {
  at::globalContext().setFloat32MatmulPrecision("highest");
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
}

bool flowscore_tf32_allowed() {
  auto& c = at::globalContext();
  return c.allowTF32CuBLAS() || c.allowTF32CuDNN() ||
         c.float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
}

void flowscore_allow_tf32_for_test() { at::globalContext().setFloat32MatmulPrecision("high"); }

}  // extern "C"
