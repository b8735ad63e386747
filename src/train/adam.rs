//! Adam (Kingma & Ba 2015) over a model's variables, written out rather than tch's optimiser so
//! that its moments can be saved with a checkpoint and a resumed run continues exactly where the
//! interrupted one stopped (tch's optimiser does not expose its state). The update is libtorch's:
//! p ← p − lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε).
use std::collections::BTreeMap;
use tch::{nn, Tensor};

pub(super) struct Adam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Steps taken.
    t: u64,
    /// Variables by name, with their first and second moments.
    params: BTreeMap<String, (Tensor, Tensor, Tensor)>,
}

impl Adam {
    pub(super) fn new(vs: &nn::VarStore, beta1: f64, beta2: f64, eps: f64) -> Adam {
        let params = vs.variables().into_iter().map(|(name, p)| (name, (p.zeros_like(), p.zeros_like(), p))).collect();
        Adam { beta1, beta2, eps, t: 0, params }
    }

    /// One step on the gradients in the variables (from `backward`), which it then clears.
    pub(super) fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.t += 1;
        let t = self.t as i32;
        let (bias1, bias2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for (m, v, p) in self.params.values_mut() {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            *m *= self.beta1;
            *m += &g * (1.0 - self.beta1);
            *v *= self.beta2;
            *v += &g * &g * (1.0 - self.beta2);
            let denom = v.sqrt() / bias2.sqrt() + self.eps;
            *p -= &*m * (lr / bias1) / denom;
            let _ = g.detach_().zero_();
        }
    }

    pub(super) fn steps(&self) -> u64 {
        self.t
    }

    /// The moments as named tensors (`m.<var>`, `v.<var>`), for a checkpoint.
    pub(super) fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|(name, (m, v, _))| {
                [(format!("m.{name}"), m.shallow_clone()), (format!("v.{name}"), v.shallow_clone())]
            })
            .collect()
    }

    /// Restores `steps` and the moments from `state` (as written by `state`); every variable must
    /// have both, with its shape.
    pub(super) fn restore(&mut self, steps: u64, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for (name, (m, v, _)) in self.params.iter_mut() {
            for (moment, key) in [(m, format!("m.{name}")), (v, format!("v.{name}"))] {
                let saved = state.get(&key).ok_or_else(|| format!("the checkpoint has no `{key}`"))?;
                if saved.size() != moment.size() {
                    return Err(format!("`{key}` has shape {:?}, the model {:?}", saved.size(), moment.size()));
                }
                moment.copy_(saved);
            }
        }
        self.t = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Two steps on a quadratic, against the update written out by hand in f64.
    #[test]
    fn steps_follow_the_adam_update() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut adam = Adam::new(&vs, 0.9, 0.999, 1e-8);
        let (mut m, mut v, mut p) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
        for t in 1..=2 {
            (&w * &w).sum(Kind::Float).backward();
            adam.step(0.1);
            for i in 0..2 {
                let g = 2.0 * p[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
                p[i] -= 0.1 / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got = Vec::<f64>::try_from(w.to_kind(Kind::Double)).expect("values");
        for (a, b) in got.iter().zip(p) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {p:?}");
        }
        assert_eq!(adam.steps(), 2);
    }
}
