//! Factorised priors p(z) = Π_d p(z_d).
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Prior {
    /// Standard logistic, the paper's choice for images.
    Logistic,
    /// Standard normal.
    Gaussian,
}

impl Prior {
    /// Element-wise log-density, numerically stable in the tails.
    pub fn log_density(&self, z: &Tensor) -> Tensor {
        match self {
            // log σ(z) + log σ(−z) = −softplus(−z) − softplus(z)
            Prior::Logistic => -(z.softplus() + (-z).softplus()),
            Prior::Gaussian => z.square() * -0.5 - 0.5 * (2.0 * std::f64::consts::PI).ln(),
        }
    }

    /// Standard deviation of the prior, used to initialise the scaling layer from data.
    pub fn std(&self) -> f64 {
        match self {
            Prior::Logistic => std::f64::consts::PI / 3f64.sqrt(),
            Prior::Gaussian => 1.0,
        }
    }

    /// Draws `len` values with a seeded Rust RNG: libtorch's generator is process-global, so
    /// seeded sampling must not depend on it.
    pub fn draw(&self, rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        match self {
            Prior::Logistic => (0..len)
                .map(|_| {
                    let u: f64 = rng.gen::<f64>().clamp(1e-12, 1.0 - 1e-12);
                    (u.ln() - (1.0 - u).ln()) as f32
                })
                .collect(),
            Prior::Gaussian => (0..len).map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal) as f32).collect(),
        }
    }
}
