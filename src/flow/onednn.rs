//! Inference-only fast path for the coupling MLPs on AMD CPUs: each layer's weights reordered
//! once into oneDNN's blocked layout, and every layer run as one oneDNN inner product with its
//! bias and ReLU fused. These are libtorch's own operators (`mkldnn::_reorder_linear_weight`,
//! `mkldnn::_linear_pointwise`, what torch.compile's CPU freezing emits); tch does not bind them,
//! so a small C++ shim (src/flow/cpp/onednn_linear.cpp, built by build.rs) calls them through
//! libtorch's dispatcher. On the AMD machines MKL takes slower kernels than oneDNN's: on the
//! paper's architecture, 2 threads, this path scored 1.26–1.34× the rows/s of the best MKL path
//! at 32 rows, 1.15–1.30× at 64, 1.09–1.25× at 512 and 1.7× at 1 row. On Intel nothing was
//! measured, and the MKL paths stay (see `flow::packed`, `flow::coupling`).
//!
//! The reordered copy does not follow later changes to the variables, so training never uses it;
//! inputs that need autograd (inpainting's) take the other paths.
use super::cpu::{cpu, Cpu};
use std::ffi::{c_char, CStr};
use std::sync::OnceLock;
use tch::{nn, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn flowscore_onednn_available() -> bool;
    fn flowscore_onednn_pack(weight: *const C_tensor, error: *mut *mut c_char) -> *mut C_tensor;
    fn flowscore_onednn_linear(
        x: *const C_tensor,
        packed: *const C_tensor,
        bias: *const C_tensor,
        relu: bool,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn flowscore_onednn_free_error(error: *mut c_char);
}

/// Whether this process runs the coupling MLPs through oneDNN: an AMD AVX-512 CPU (the only kind
/// it was measured on), a libtorch that registers the operators, and `FLOWSCORE_NO_PACKED_GEMM`
/// unset.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // SAFETY: a query of libtorch's operator registry, which static initialisers filled when
        // libtorch was loaded.
        cpu() == Cpu::AmdAvx512
            && std::env::var_os("FLOWSCORE_NO_PACKED_GEMM").is_none()
            && unsafe { flowscore_onednn_available() }
    })
}

/// Turns the shim's (tensor, error) pair into a tensor, logging the error it reports.
fn take(result: *mut C_tensor, error: *mut c_char, what: &str) -> Option<Tensor> {
    if result.is_null() {
        if !error.is_null() {
            // SAFETY: the shim hands over a NUL-terminated malloc'd message and never reuses it.
            let msg = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
            unsafe { flowscore_onednn_free_error(error) };
            tracing::warn!(error = %msg, "oneDNN {what} failed; the MKL paths run instead");
        }
        return None;
    }
    // SAFETY: a fresh `at::Tensor*` from the shim, owned from here on by the returned Tensor.
    Some(unsafe { Tensor::from_ptr(result) })
}

/// One `nn::Linear` (y = x Wᵀ + b, optionally ReLU'd) with W in oneDNN's layout.
#[derive(Debug)]
pub(super) struct OneDnnLinear {
    packed: Tensor,
    bias: Tensor,
    relu: bool,
    /// Input width.
    k: i64,
}

impl OneDnnLinear {
    /// Reorders a CPU f32 layer; None when oneDNN is unavailable or the layer does not qualify.
    pub(super) fn new(layer: &nn::Linear, relu: bool) -> Option<OneDnnLinear> {
        if !available() {
            return None;
        }
        let (w, bias) = super::frozen_weights(layer)?;
        let (_, k) = w.size2().ok()?;
        let mut error = std::ptr::null_mut();
        // SAFETY: `w` is a live contiguous f32 tensor; the shim only reads it.
        let packed = take(unsafe { flowscore_onednn_pack(w.as_ptr(), &mut error) }, error, "weight reorder")?;
        Some(OneDnnLinear { packed, bias, relu, k })
    }

    /// The layer on a CPU f32 batch x of shape [m, k]; None if x does not qualify (the caller then
    /// takes another path).
    pub(super) fn forward(&self, x: &Tensor) -> Option<Tensor> {
        let (x, _) = super::frozen_input(x, self.k)?;
        let mut error = std::ptr::null_mut();
        // SAFETY: all three tensors are live for the call; the shim only reads them and returns a
        // new tensor.
        let y = unsafe {
            flowscore_onednn_linear(x.as_ptr(), self.packed.as_ptr(), self.bias.as_ptr(), self.relu, &mut error)
        };
        take(y, error, "linear")
    }

    /// Bytes held by the reordered copy.
    pub(super) fn bytes(&self) -> usize {
        self.bias.numel() * 4 + self.packed.numel() * 4
    }
}
