//! The NICE model: z = exp(s) ⊙ c_K(…c_1(pre(x))).
use super::coupling::Coupling;
use super::preprocess::PreprocessTensors;
use super::{FastMlp, FlowError, FlowSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, Kind, Tensor};

#[derive(Debug)]
pub struct Nice {
    spec: FlowSpec,
    pre: PreprocessTensors,
    couplings: Vec<Coupling>,
    /// Log-scales s of the diagonal scaling layer.
    scale: Tensor,
}

/// Conditional completion by projected gradient ascent on log p (the paper's inpainting).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InpaintOptions {
    pub steps: usize,
    /// Step size at iteration t is `step_size / (1 + t / 100)`.
    pub step_size: f64,
    /// Standard deviation of Gaussian noise added to each step (0 = plain ascent).
    pub noise: f64,
    pub seed: u64,
}

impl Default for InpaintOptions {
    fn default() -> Self {
        InpaintOptions { steps: 300, step_size: 1e-3, noise: 0.0, seed: 0 }
    }
}

impl Nice {
    /// Builds the graph under `p`; variables are named `scale` and `coupling.{i}.layer.{j}.*`.
    /// Serving then loads weights into the same variables.
    pub fn new(p: &nn::Path, spec: FlowSpec) -> Result<Nice, FlowError> {
        spec.validate()?;
        let a = &spec.architecture;
        let couplings = (0..a.couplings)
            .map(|i| Coupling::new(&(p / "coupling" / i), a.dim, i % 2, a.hidden_layers, a.hidden_units))
            .collect();
        let scale = p.zeros("scale", &[a.dim as i64]);
        let pre = spec.preprocess.tensors(p.device());
        Ok(Nice { spec, pre, couplings, scale })
    }

    pub fn spec(&self) -> &FlowSpec {
        &self.spec
    }

    /// Where the weights live.
    pub fn device(&self) -> tch::Device {
        self.scale.device()
    }

    pub fn dim(&self) -> usize {
        self.spec.architecture.dim
    }

    /// The learned log-scales s (one per latent dimension).
    pub fn log_scales(&self) -> Vec<f64> {
        Vec::<f64>::try_from(self.scale.to_kind(Kind::Double).to_device(tch::Device::Cpu)).unwrap_or_default()
    }

    fn check(&self, x: &Tensor) -> Result<(), FlowError> {
        let size = x.size();
        let expected = self.dim() as i64;
        match size.as_slice() {
            [_, d] if *d == expected => Ok(()),
            [_, d] => Err(FlowError::Shape { expected, got: *d }),
            _ => Err(FlowError::InvalidSpec(format!("expected a 2-D batch, got shape {size:?}"))),
        }
    }

    /// h after preprocessing and all couplings, before scaling; and the preprocessing log-det.
    fn couple(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (h, log_det) = self.pre.forward(x);
        let h = self.couplings.iter().fold(h, |h, c| c.forward(&h));
        (h, log_det)
    }

    /// Encode x → z with log|det ∂z/∂x| per row (f64).
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor), FlowError> {
        self.check(x)?;
        let (h, log_det) = self.couple(x);
        let z = h * self.scale.exp();
        let log_det = log_det + self.scale.sum(Kind::Double);
        Ok((z, log_det))
    }

    /// Exact log p(x) per row in nats (f64): Σ log p(z_d) + Σ s_d + log|det J_pre|.
    pub fn log_prob(&self, x: &Tensor) -> Result<Tensor, FlowError> {
        let (z, log_det) = self.encode(x)?;
        let prior = self.spec.prior.log_density(&z).sum_dim_intlist(1, false, Kind::Double);
        Ok(prior + log_det)
    }

    /// Decode z → x (the exact inverse of encode).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor, FlowError> {
        self.check(z)?;
        let h = z * (-&self.scale).exp();
        let h = self.couplings.iter().rev().fold(h, |h, c| c.inverse(&h));
        Ok(self.pre.inverse(&h))
    }

    /// Draws n samples: z from the prior scaled by `temperature`, then decode. The same seed
    /// gives the same samples.
    pub fn sample(&self, n: usize, seed: u64, temperature: f64) -> Result<Tensor, FlowError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let d = self.dim();
        let z = self.spec.prior.draw(&mut rng, n * d);
        let z = Tensor::f_from_slice(&z)?.f_view([n as i64, d as i64])?.to_device(self.scale.device()) * temperature;
        self.decode(&z)
    }

    /// Completes the coordinates where `missing` is true (same shape as x, 1.0 = missing) by
    /// projected gradient ascent on log p(x), the observed ones held fixed. Deterministic given
    /// `opts.seed`. Needs autograd, so it turns grad mode on locally.
    pub fn inpaint(&self, x: &Tensor, missing: &Tensor, opts: &InpaintOptions) -> Result<Tensor, FlowError> {
        self.check(x)?;
        if x.size() != missing.size() {
            return Err(FlowError::InvalidSpec(format!(
                "mask shape {:?} does not match inputs {:?}",
                missing.size(),
                x.size()
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let len = x.numel();
        let device = x.device();
        let missing = missing.to_kind(Kind::Float);
        let domain = self.spec.preprocess.domain();
        // Start the missing coordinates from seeded noise inside the data's range.
        let start: Vec<f32> = match domain {
            Some((lo, hi)) => (0..len).map(|_| rng.gen_range(lo..hi) as f32).collect(),
            None => vec![0.0; len],
        };
        let start = match &self.pre {
            PreprocessTensors::Standardize { mean, .. } if domain.is_none() => mean.expand_as(x).shallow_clone(),
            _ => Tensor::f_from_slice(&start)?.view(x.size().as_slice()).to_device(device),
        };
        let observed = 1.0 - &missing;
        let missing_mask = missing.gt(0.5);
        let mut cur = x.to_kind(Kind::Float) * &observed + start * &missing;
        for t in 0..opts.steps {
            let grad = tch::with_grad(|| -> Result<Tensor, FlowError> {
                let v = cur.detach().set_requires_grad(true);
                let lp = self.log_prob(&v)?.sum(Kind::Double);
                let g = Tensor::run_backward(&[lp], &[&v], false, false);
                Ok(g.into_iter().next().unwrap_or_else(|| v.zeros_like()))
            })?;
            let step = opts.step_size / (1.0 + t as f64 / 100.0);
            let mut update = grad * step;
            if opts.noise > 0.0 {
                let noise: Vec<f32> = (0..len)
                    .map(|_| (rng.sample::<f64, _>(rand_distr::StandardNormal) * opts.noise * step) as f32)
                    .collect();
                update += Tensor::f_from_slice(&noise)?.view(x.size().as_slice()).to_device(device);
            }
            // Observed coordinates are taken from `cur` itself, whatever the update holds (an
            // overflowing update times 0 would be NaN).
            cur = (&cur + update).where_self(&missing_mask, &cur).detach();
            if let Some((lo, hi)) = domain {
                cur = cur.clamp(lo, hi);
            }
        }
        Ok(cur)
    }

    /// Hands each coupling's MLP layers (ReLU between them, none after the last) to `make`, and
    /// runs inference through what it returns from then on (`crate::kernels::prepare` does this
    /// for the server). Only for frozen weights: later changes to the variables are not seen.
    pub fn prepare_mlps<E>(
        &mut self,
        mut make: impl FnMut(&[nn::Linear]) -> Result<Box<dyn FastMlp>, E>,
    ) -> Result<(), E> {
        let result = self.couplings.iter_mut().try_for_each(|c| c.prepare(&mut make));
        if result.is_err() {
            self.clear_prepared_mlps();
        }
        result
    }

    /// Back to the layers themselves.
    pub fn clear_prepared_mlps(&mut self) {
        self.couplings.iter_mut().for_each(Coupling::clear_prepared);
    }

    /// Sets the log-scales so that z has the prior's spread on `x` (data-dependent
    /// initialisation; the couplings start as the identity). Returns the new log-scales.
    pub fn init_scale_from_data(&mut self, x: &Tensor) -> Result<(), FlowError> {
        self.check(x)?;
        let _guard = tch::no_grad_guard();
        let (h, _) = self.couple(x);
        let std = h.std_dim(0, true, false).clamp_min(1e-3);
        let s = (self.spec.prior.std() / std).log();
        self.scale.copy_(&s);
        Ok(())
    }
}
