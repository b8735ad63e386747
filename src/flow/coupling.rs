//! Additive coupling: y_keep = x_keep, y_other = x_other + m(x_keep). Unit Jacobian.
use super::cpu::{cpu, Cpu};
use super::onednn::OneDnnLinear;
use super::packed::PackedLinear;
use super::tiled::{self, TiledLinear};
use tch::{nn, nn::Module, Device, Kind, Tensor};

#[derive(Debug)]
pub(super) struct Coupling {
    keep: Tensor,
    other: Tensor,
    mlp: Vec<nn::Linear>,
    /// The same layers in MKL's packed layout, for inference (empty unless packed).
    packed: Vec<PackedLinear>,
    /// The same layers in oneDNN's layout, for inference (empty unless reordered; where present
    /// they run every batch that qualifies).
    onednn: Vec<OneDnnLinear>,
    /// The same layers in our AVX-512 kernel's tiles, for inference (empty unless packed; where
    /// present they run every batch of up to `tiled::MAX_ROWS` rows that qualifies).
    tiled: Vec<TiledLinear>,
    /// Whether batches of the sizes in `feature_major_columns` run the MLP feature-major.
    feature_major: bool,
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
        Coupling {
            keep: index(&keep, device),
            other: index(&other, device),
            mlp,
            packed: Vec::new(),
            onednn: Vec::new(),
            tiled: Vec::new(),
            feature_major: false,
        }
    }

    /// Prepares the MLP's current weights for inference: on AMD, packed in tiles for our kernel
    /// (`tiled::available`; batches of up to `tiled::MAX_ROWS` rows) and reordered for oneDNN
    /// (`onednn::available`; larger batches); elsewhere packed for MKL where that pays, with the
    /// feature-major path on (CPU only, the only device it was measured on). Returns the bytes
    /// the prepared copies hold (0 where none applies).
    pub(super) fn pack(&mut self) -> usize {
        let last = self.mlp.len() - 1;
        let tiled: Option<Vec<TiledLinear>> = if tiled::available() {
            self.mlp.iter().enumerate().map(|(j, layer)| TiledLinear::new(layer, j < last)).collect()
        } else {
            None
        };
        self.tiled = tiled.unwrap_or_default();
        let onednn: Option<Vec<OneDnnLinear>> =
            self.mlp.iter().enumerate().map(|(j, layer)| OneDnnLinear::new(layer, j < last)).collect();
        self.onednn = onednn.unwrap_or_default();
        if !self.tiled.is_empty() || !self.onednn.is_empty() {
            let tiled: usize = self.tiled.iter().map(TiledLinear::bytes).sum();
            return tiled + self.onednn.iter().map(OneDnnLinear::bytes).sum::<usize>();
        }
        let packed: Option<Vec<PackedLinear>> = self.mlp.iter().map(PackedLinear::new).collect();
        self.packed = packed.unwrap_or_default();
        self.feature_major = self.keep.device() == Device::Cpu;
        self.packed.iter().map(PackedLinear::bytes).sum()
    }

    pub(super) fn set_feature_major(&mut self, on: bool) {
        self.feature_major = on;
    }

    pub(super) fn drop_tiled(&mut self) {
        self.tiled.clear();
    }

    fn shift(&self, keep: &Tensor) -> Tensor {
        if let Some(shift) = self.shift_tiled(keep) {
            return shift;
        }
        if let Some(shift) = self.shift_onednn(keep) {
            return shift;
        }
        let rows = keep.size().first().copied().unwrap_or(0);
        if let Some(columns) = self.feature_major.then(|| feature_major_columns(cpu(), rows)).flatten() {
            return self.shift_feature_major(keep, columns);
        }
        self.shift_packed(keep).unwrap_or_else(|| self.shift_plain(keep))
    }

    /// The MLP on the transposed batch, hᵀ ← W·hᵀ + b: the weight matrix is the left operand
    /// and the rows are the columns of each product (see `feature_major_columns`). The batch is
    /// padded with zero rows to `columns` (≥ its rows); the padding's outputs are dropped.
    fn shift_feature_major(&self, keep: &Tensor, columns: i64) -> Tensor {
        let rows = keep.size().first().copied().unwrap_or(0);
        let last = self.mlp.len() - 1;
        let mut h = if columns > rows { keep.constant_pad_nd([0, 0, 0, columns - rows]).tr() } else { keep.tr() };
        for (j, layer) in self.mlp.iter().enumerate() {
            h = match &layer.bs {
                Some(b) => b.unsqueeze(1).addmm(&layer.ws, &h),
                None => layer.ws.matmul(&h),
            };
            if j < last {
                let _ = h.relu_();
            }
        }
        h.tr().narrow(0, 0, rows)
    }

    /// None when the weights are not packed in tiles, the batch is larger than the kernel's
    /// range, or the input does not qualify (it needs autograd, as inpainting's does).
    fn shift_tiled(&self, keep: &Tensor) -> Option<Tensor> {
        let rows = keep.size2().ok()?.0;
        if self.tiled.is_empty() || rows > tiled::MAX_ROWS {
            return None;
        }
        tiled::mlp(&self.tiled, keep)
    }

    /// None when the weights are not reordered for oneDNN or the input does not qualify (it
    /// needs autograd, as inpainting's does).
    fn shift_onednn(&self, keep: &Tensor) -> Option<Tensor> {
        if self.onednn.is_empty() {
            return None;
        }
        let mut h = keep.shallow_clone();
        for layer in &self.onednn {
            h = layer.forward(&h)?;
        }
        Some(h)
    }

    /// None when the weights are not packed, packing does not gain at this batch size, or the
    /// input does not qualify (`PackedLinear::forward` refuses inputs that need autograd, as
    /// inpainting's do).
    fn shift_packed(&self, keep: &Tensor) -> Option<Tensor> {
        let rows = keep.size2().ok()?.0;
        if self.packed.is_empty() || !PackedLinear::suits(rows) {
            return None;
        }
        let last = self.packed.len() - 1;
        let mut h = keep.shallow_clone();
        for (j, layer) in self.packed.iter().enumerate() {
            h = layer.forward(&h)?;
            if j < last {
                let _ = h.relu_();
            }
        }
        Some(h)
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

/// How many columns the feature-major MLP should run a batch of `rows` rows with, or None where
/// the row-major paths are faster. MKL streams the weights as the left operand of each product
/// and processes the columns in blocks of 16 (one AVX-512 register of f32), so its speed moves in
/// steps of 16 rows, differently per vendor. Paper architecture, 2 threads, the paths timed
/// alternately (bench/ceiling.rs; two copies of one path measured up to 4% apart):
/// - Intel: a part-filled last block costs about as much as a full one, so feature-major wins
///   where that block is (nearly) full. Feature-major ÷ packed rows/s over three sweeps:
///   1.04–1.22 at 12–16 rows, 1.00–1.18 at 28–32 and 1.06–1.20 at 44–48; 0.83–0.99 at 17–24,
///   33–40 and 49–64.
/// - AMD (where the oneDNN path, faster still, is off; see `flow::onednn`): a part-filled block
///   cost up to twice a full one, so the batch is padded with zero rows to whole blocks. Padded
///   feature-major ÷ plain rows/s over two sweeps of every size from 1 to 64: 1.02–1.43 at 2–16
///   rows, 0.86–1.07 at 17–22, mostly 1.0–1.4 at 23–64 (1.30 at 32 in both), 1.00–1.28 at
///   96–384; 0.70–0.74 at 1 row and 0.99–1.09 at 512–1024.
///
/// Elsewhere nothing was measured, and the row-major paths run.
fn feature_major_columns(cpu: Cpu, rows: i64) -> Option<i64> {
    match cpu {
        Cpu::IntelAvx512 => (rows <= 48 && (rows % 16 == 0 || rows % 16 >= 12)).then_some(rows),
        Cpu::AmdAvx512 => {
            let padded = (2..=16).contains(&rows) || (23..=384).contains(&rows);
            padded.then_some((rows + 15) / 16 * 16)
        }
        Cpu::Other => None,
    }
}

fn index(v: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Int64).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(cpu: Cpu) -> Vec<(i64, i64)> {
        (1..=512).filter_map(|r| feature_major_columns(cpu, r).map(|c| (r, c))).collect()
    }

    #[test]
    fn intel_runs_nearly_full_blocks_of_16_rows_feature_major_unpadded() {
        let expected: Vec<(i64, i64)> = [12..=16, 28..=32, 44..=48].into_iter().flatten().map(|r| (r, r)).collect();
        assert_eq!(chosen(Cpu::IntelAvx512), expected);
    }

    #[test]
    fn amd_pads_feature_major_batches_to_whole_blocks_of_16() {
        let chosen = chosen(Cpu::AmdAvx512);
        let rows: Vec<i64> = chosen.iter().map(|&(r, _)| r).collect();
        let expected: Vec<i64> = [2..=16, 23..=384].into_iter().flatten().collect();
        assert_eq!(rows, expected);
        for (rows, columns) in chosen {
            assert!(columns % 16 == 0 && columns >= rows && columns - rows < 16, "{rows} rows -> {columns} columns");
        }
    }

    #[test]
    fn other_cpus_never_run_feature_major() {
        assert!(chosen(Cpu::Other).is_empty());
    }

    /// The feature-major MLP gives the row-major one's values, with and without padding.
    #[test]
    fn feature_major_mlp_equals_row_major() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut c = Coupling::new(&vs.root(), 10, 0, 3, 40);
        // The last layer starts at zero; give it weights so that the shift is not trivially 0.
        tch::no_grad(|| c.mlp[3].ws.copy_(&(Tensor::randn([5, 40], (Kind::Float, Device::Cpu)) * 0.3)));
        for (rows, columns) in [(16, 16), (13, 16), (1, 16), (17, 32)] {
            let x = Tensor::randn([rows, 10], (Kind::Float, Device::Cpu));
            let keep = x.index_select(1, &c.keep);
            let row_major = c.shift_plain(&keep);
            let feature_major = c.shift_feature_major(&keep, columns);
            assert_eq!(feature_major.size(), [rows, 5]);
            let diff = (&feature_major - &row_major).abs().max().double_value(&[]);
            let scale = row_major.abs().max().double_value(&[]);
            assert!(
                scale > 0.1 && diff <= 1e-5 * scale,
                "{rows} rows in {columns} columns: diff {diff} at scale {scale}"
            );
        }
    }
}
