//! Additive coupling: y_keep = x_keep, y_other = x_other + m(x_keep). Unit Jacobian.
use super::FastMlp;
use tch::{nn, nn::Module, Device, Kind, Tensor};

#[derive(Debug)]
pub(super) struct Coupling {
    keep: Tensor,
    other: Tensor,
    mlp: Vec<nn::Linear>,
    /// A stand-in for `mlp` at inference, prepared from its frozen weights (`prepare`).
    fast: Option<Box<dyn FastMlp>>,
}

impl Coupling {
    /// Coupling `parity` keeps the coordinates with index % 2 == parity. The MLP's last layer
    /// starts at zero, so a fresh coupling is the identity and training starts from the
    /// data-initialised scaling alone.
    pub(super) fn new(p: &nn::Path, dim: usize, parity: usize, hidden_layers: usize, units: usize) -> Coupling {
        let keep: Vec<i64> = (0..dim as i64).filter(|i| *i as usize % 2 == parity).collect();
        let other: Vec<i64> = (0..dim as i64).filter(|i| *i as usize % 2 != parity).collect();
        let units = units as i64;
        let mut mlp = Vec::with_capacity(hidden_layers + 1);
        let layers = p / "layer";
        let mut fan_in = keep.len() as i64;
        for j in 0..hidden_layers {
            mlp.push(nn::linear(&layers / j, fan_in, units, Default::default()));
            fan_in = units;
        }
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        mlp.push(nn::linear(&layers / hidden_layers, fan_in, other.len() as i64, zero));
        let device = p.device();
        Coupling { keep: index(&keep, device), other: index(&other, device), mlp, fast: None }
    }

    /// Hands the MLP's layers to `make` and keeps what it returns for inference.
    pub(super) fn prepare<E>(
        &mut self,
        make: &mut impl FnMut(&[nn::Linear]) -> Result<Box<dyn FastMlp>, E>,
    ) -> Result<(), E> {
        self.fast = Some(make(&self.mlp)?);
        Ok(())
    }

    pub(super) fn clear_prepared(&mut self) {
        self.fast = None;
    }

    fn shift(&self, keep: &Tensor) -> Tensor {
        match self.fast.as_ref().and_then(|fast| fast.forward(keep)) {
            Some(shift) => shift,
            None => self.shift_plain(keep),
        }
    }

    fn shift_plain(&self, keep: &Tensor) -> Tensor {
        let last = self.mlp.len() - 1;
        self.mlp.iter().enumerate().fold(keep.shallow_clone(), |h, (j, layer)| {
            let h = layer.forward(&h);
            if j < last {
                h.relu()
            } else {
                h
            }
        })
    }

    /// y = x with m(x_keep) added to the other coordinates: one gather, the MLP and one
    /// scatter-add, with no reassembly of the halves.
    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        let shift = self.shift(&x.index_select(1, &self.keep));
        x.index_add(1, &self.other, &shift)
    }

    pub(super) fn inverse(&self, y: &Tensor) -> Tensor {
        let shift = self.shift(&y.index_select(1, &self.keep));
        y.index_add(1, &self.other, &-shift)
    }
}

fn index(v: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Int64).to_device(device)
}
