//! oneDNN-reordered weights: each layer's weights reordered once into oneDNN's blocked layout,
//! and every layer run as one oneDNN inner product with its bias and ReLU fused. These are
//! libtorch's own operators (`mkldnn::_reorder_linear_weight`, `mkldnn::_linear_pointwise`, what
//! torch.compile's CPU freezing emits); tch does not bind them, so a small C++ shim
//! (src/kernels/cpp/onednn_linear.cpp, built by build.rs) calls them through libtorch's
//! dispatcher. Where this kernel wins is in docs/kernels.md.
use super::{frozen_input, frozen_weights, relu_between};
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

/// Whether the loaded libtorch registers both operators.
pub(super) fn loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    // SAFETY: a query of libtorch's operator registry, which static initialisers filled when
    // libtorch was loaded.
    *LOADED.get_or_init(|| unsafe { flowscore_onednn_available() })
}

/// Turns the shim's (tensor, error) pair into a tensor, logging the error it reports.
fn take(result: *mut C_tensor, error: *mut c_char, what: &str) -> Option<Tensor> {
    if result.is_null() {
        if !error.is_null() {
            // SAFETY: the shim hands over a NUL-terminated malloc'd message and never reuses it.
            let msg = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
            unsafe { flowscore_onednn_free_error(error) };
            tracing::warn!(error = %msg, "oneDNN {what} failed; libtorch's own layers run instead");
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
    /// Reorders a CPU f32 layer; None when oneDNN is not loaded or the layer does not qualify.
    pub(super) fn new(layer: &nn::Linear, relu: bool) -> Option<OneDnnLinear> {
        if !loaded() {
            return None;
        }
        let (w, bias) = frozen_weights(layer)?;
        let (_, k) = w.size2().ok()?;
        let mut error = std::ptr::null_mut();
        // SAFETY: `w` is a live contiguous f32 tensor; the shim only reads it.
        let packed = take(unsafe { flowscore_onednn_pack(w.as_ptr(), &mut error) }, error, "weight reorder")?;
        Some(OneDnnLinear { packed, bias, relu, k })
    }

    /// The layer on a CPU f32 batch x of shape [m, k]; None if x does not qualify.
    fn forward(&self, x: &Tensor) -> Option<Tensor> {
        let (x, _) = frozen_input(x, self.k)?;
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

/// The MLP on a batch (each layer fuses its own ReLU); None if x does not qualify (it needs
/// autograd) or oneDNN reports an error.
pub(super) fn mlp(layers: &[OneDnnLinear], x: &Tensor) -> Option<Tensor> {
    layers.first()?;
    let mut h = x.shallow_clone();
    for layer in layers {
        h = layer.forward(&h)?;
    }
    Some(h)
}

/// The layers of an MLP in oneDNN's layout, ReLU fused between them; None if one does not qualify.
pub(super) fn prepare(layers: &[nn::Linear]) -> Option<Vec<OneDnnLinear>> {
    let last = layers.len().checked_sub(1)?;
    layers.iter().enumerate().map(|(j, layer)| OneDnnLinear::new(layer, relu_between(j, last))).collect()
}
