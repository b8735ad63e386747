//! NICE (Dinh, Krueger, Bengio 2014) in tch: additive couplings, a diagonal scaling, a factorised
//! prior and the model's own fixed preprocessing. Pure tensor code: no HTTP, no async.
mod coupling;
mod nice;
mod preprocess;
mod prior;

pub use nice::{InpaintOptions, Nice};
pub use preprocess::Preprocess;
pub use prior::Prior;

use serde::{Deserialize, Serialize};

/// The shape of a NICE model; stored in the model card as `architecture`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Input dimension D.
    pub dim: usize,
    /// Number of additive coupling layers K.
    pub couplings: usize,
    /// Hidden layers of each coupling MLP.
    pub hidden_layers: usize,
    /// Units per hidden layer.
    pub hidden_units: usize,
}

impl Architecture {
    /// Weights and biases of the coupling MLPs plus the scaling layer (an upper bound: each
    /// coupling's halves are counted as the larger half).
    pub fn parameter_count(&self) -> usize {
        let (half, h) = (self.dim.div_ceil(2), self.hidden_units);
        let mlp = (half + 1) * h + self.hidden_layers.saturating_sub(1) * (h + 1) * h + (h + 1) * half;
        self.couplings * mlp + self.dim
    }
}

/// Everything needed to build a NICE graph (weights aside).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowSpec {
    pub architecture: Architecture,
    pub prior: Prior,
    pub preprocess: Preprocess,
}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("invalid model specification: {0}")]
    InvalidSpec(String),
    #[error("expected rows of {expected} values, got {got}")]
    Shape { expected: i64, got: i64 },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl FlowSpec {
    /// Checks what a model file or a client could get wrong before any tensor is built.
    pub fn validate(&self) -> Result<(), FlowError> {
        let a = &self.architecture;
        let bad = |m: String| Err(FlowError::InvalidSpec(m));
        if a.dim < 2 {
            return bad(format!("dim must be at least 2, got {}", a.dim));
        }
        if a.dim > 1 << 20 {
            return bad(format!("dim {} is too large", a.dim));
        }
        if a.couplings == 0 || a.couplings > 64 {
            return bad(format!("couplings must be in 1..=64, got {}", a.couplings));
        }
        if a.hidden_layers == 0 || a.hidden_layers > 64 {
            return bad(format!("hidden_layers must be in 1..=64, got {}", a.hidden_layers));
        }
        if a.hidden_units == 0 || a.hidden_units > 1 << 16 {
            return bad(format!("hidden_units must be in 1..=65536, got {}", a.hidden_units));
        }
        self.preprocess.validate(a.dim)
    }
}

/// A faster stand-in for a coupling MLP at inference (ReLU between its layers, none after the
/// last), prepared from its frozen layers (`Nice::prepare_mlps`; see `crate::kernels`). None: this
/// batch takes the layers themselves (for example an input that needs autograd).
pub trait FastMlp: Send + std::fmt::Debug {
    fn forward(&self, x: &tch::Tensor) -> Option<tch::Tensor>;
}

/// bits/dim of 8-bit data scaled to [0,1]: (−log p + D ln 256) / (D ln 2).
pub fn bits_per_dim(log_prob: f64, dim: usize, eight_bit: bool) -> f64 {
    let d = dim as f64;
    let offset = if eight_bit { d * 256f64.ln() } else { 0.0 };
    (-log_prob + offset) / (d * std::f64::consts::LN_2)
}
