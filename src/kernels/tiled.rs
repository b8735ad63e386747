//! Our own AVX-512 kernel (src/kernels/cpp/tiled_linear.cpp): the MLP runs feature-major
//! (hᵀ ← W·hᵀ + b) with each layer's weights packed once in tiles of 14 output features, read
//! front to back and prefetched a few KB ahead of the FMAs. Why: on batches of a few dozen rows
//! the library GEMMs stall on the weights streaming in from memory, and this kernel hides that
//! stream behind its FMAs (docs/kernels.md has the measurements).
use super::{frozen_input, frozen_weights, relu_between};
use tch::{nn, Device, Kind, Tensor};

extern "C" {
    fn flowscore_tiled_features_per_tile() -> i64;
    fn flowscore_tiled_available() -> bool;
    fn flowscore_tiled_linear(
        xt: *const f32,
        k: i64,
        ld: i64,
        columns: i64,
        w: *const f32,
        bias: *const f32,
        n_tiles: i64,
        yt: *mut f32,
        relu: bool,
    ) -> bool;
}

/// The batch is padded with zero rows to a multiple of this (one AVX-512 register of f32).
const COLUMN_BLOCK: i64 = 16;

/// Whether this CPU can run the kernel (it needs AVX-512F; the C side checks CPUID once).
pub(super) fn supported() -> bool {
    // SAFETY: a CPUID query.
    unsafe { flowscore_tiled_available() }
}

/// One `nn::Linear` (y = x Wᵀ + b, optionally ReLU'd) with W packed in the kernel's tiles.
#[derive(Debug)]
pub(super) struct TiledLinear {
    /// [n_tiles, k, TILE]: tile t holds W[t·TILE + i][j] at [t][j][i], zero past the last feature.
    tiles: Tensor,
    /// [n_tiles · TILE], zero-padded like the tiles.
    bias: Tensor,
    relu: bool,
    /// Output and input widths.
    n: i64,
    k: i64,
}

impl TiledLinear {
    /// Packs a CPU f32 layer; None when this CPU cannot run the kernel or the layer does not
    /// qualify.
    pub(super) fn new(layer: &nn::Linear, relu: bool) -> Option<TiledLinear> {
        if !supported() {
            return None;
        }
        let (w, bias) = frozen_weights(layer)?;
        let (n, k) = w.size2().ok()?;
        // SAFETY: returns a constant.
        let tile = unsafe { flowscore_tiled_features_per_tile() };
        let (full, rest) = (n / tile, n % tile);
        let n_tiles = full + i64::from(rest > 0);
        // Copied straight into place from views of W, so that packing allocates nothing but the
        // tiles (a padded copy of W would be a temporary as large as the layer).
        let tiles = Tensor::zeros([n_tiles, k, tile], (Kind::Float, Device::Cpu));
        if full > 0 {
            tiles.narrow(0, 0, full).copy_(&w.narrow(0, 0, full * tile).view([full, tile, k]).transpose(1, 2));
        }
        if rest > 0 {
            tiles.get(full).narrow(1, 0, rest).copy_(&w.narrow(0, full * tile, rest).tr());
        }
        let bias = bias.constant_pad_nd([0, n_tiles * tile - n]);
        Some(TiledLinear { tiles, bias, relu, n, k })
    }

    fn n_tiles(&self) -> i64 {
        self.tiles.size()[0]
    }

    /// hᵀ [≥ k, columns] → [n_tiles · TILE, columns]; rows of hᵀ past k (the padding of the
    /// layer before) are not read.
    fn forward_t(&self, ht: &Tensor, columns: i64) -> Option<Tensor> {
        let padded = self.bias.size()[0];
        let yt = Tensor::empty([padded, columns], (Kind::Float, Device::Cpu));
        // SAFETY: ht is a contiguous f32 [≥ k, columns] matrix (checked by the caller, `mlp`),
        // `tiles` and `bias` have the shapes the kernel reads for n_tiles and k, and `yt` is a fresh
        // contiguous f32 [n_tiles·TILE, columns] matrix; all outlive the call, which only writes yt.
        let ok = unsafe {
            flowscore_tiled_linear(
                ht.data_ptr() as *const f32,
                self.k,
                columns,
                columns,
                self.tiles.data_ptr() as *const f32,
                self.bias.data_ptr() as *const f32,
                self.n_tiles(),
                yt.data_ptr() as *mut f32,
                self.relu,
            )
        };
        ok.then_some(yt)
    }

    /// Bytes held by the packed copy.
    pub(super) fn bytes(&self) -> usize {
        (self.tiles.numel() + self.bias.numel()) * 4
    }
}

/// The layers of an MLP in the kernel's tiles, ReLU between them; None if one does not qualify.
pub(super) fn prepare(layers: &[nn::Linear]) -> Option<Vec<TiledLinear>> {
    let last = layers.len().checked_sub(1)?;
    layers.iter().enumerate().map(|(j, layer)| TiledLinear::new(layer, relu_between(j, last))).collect()
}

/// The MLP `layers` on a CPU f32 batch x of shape [m, k]: x is transposed once (padded with zero
/// rows to whole blocks of 16), every layer runs feature-major, and the result is transposed back
/// to [m, n]. None if x does not qualify (the caller then takes another path).
pub(super) fn mlp(layers: &[TiledLinear], x: &Tensor) -> Option<Tensor> {
    let first = layers.first()?;
    let (x, m) = frozen_input(x, first.k)?;
    let columns = (m + COLUMN_BLOCK - 1) / COLUMN_BLOCK * COLUMN_BLOCK;
    let mut ht = x.constant_pad_nd([0, 0, 0, columns - m]).tr().contiguous();
    let mut n = first.k;
    for layer in layers {
        if layer.k != n {
            return None;
        }
        ht = layer.forward_t(&ht, columns)?;
        n = layer.n;
    }
    Some(ht.narrow(0, 0, n).narrow(1, 0, m).tr())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs the kernel cannot take are refused, not miscomputed: the wrong width and inputs that
    /// need autograd.
    #[test]
    #[cfg_attr(not(cpu_avx512), ignore = "this CPU has no AVX-512F: the tiled kernel cannot run here")]
    fn tiled_mlp_refuses_inputs_it_cannot_take() {
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = nn::linear(vs.root(), 8, 20, Default::default());
        let tiled = [TiledLinear::new(&layer, false).expect("packs")];
        assert!(mlp(&tiled, &Tensor::zeros([4, 9], (Kind::Float, Device::Cpu))).is_none());
        let x = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(mlp(&tiled, &x).is_none());
        assert!(mlp(&[], &Tensor::zeros([4, 8], (Kind::Float, Device::Cpu))).is_none());
    }
}
