//! The MLP on the transposed batch with libtorch's own GEMMs, hᵀ ← W·hᵀ + b: the weight matrix is
//! the left operand and the rows are the columns of each product. MKL processes those columns in
//! blocks of 16 (one AVX-512 register of f32), and on Intel a nearly full last block costs about
//! what a full one does, where the row-major products pay more (docs/kernels.md).
use super::{frozen_weights, relu_between};
use tch::{nn, Tensor};

/// An MLP's frozen weights and biases (views of the layers' own tensors, no copy).
#[derive(Debug)]
pub(super) struct FeatureMajorMlp {
    layers: Vec<(Tensor, Tensor)>,
}

impl FeatureMajorMlp {
    /// None if a layer is not a CPU f32 layer.
    pub(super) fn new(layers: &[nn::Linear]) -> Option<FeatureMajorMlp> {
        layers.first()?;
        Some(FeatureMajorMlp { layers: layers.iter().map(frozen_weights).collect::<Option<_>>()? })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Option<Tensor> {
        let last = self.layers.len() - 1;
        let mut h = x.tr();
        for (j, (w, b)) in self.layers.iter().enumerate() {
            h = b.unsqueeze(1).f_addmm(w, &h).ok()?;
            if relu_between(j, last) {
                let _ = h.relu_();
            }
        }
        Some(h.tr())
    }
}
