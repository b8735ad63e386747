//! Inference-only fast path for the coupling MLPs on AMD CPUs: our own AVX-512 kernel
//! (src/flow/cpp/tiled_linear.cpp), which runs the MLP feature-major (hᵀ ← W·hᵀ + b) with each
//! layer's weights packed once in tiles of 14 output features, read front to back and prefetched
//! a few KB ahead of the FMAs.
//!
//! Why: the dynamic batcher's batches of 16–64 rows stream all 76 MB of the paper's weights per
//! forward pass, and oneDNN's kernels stall on that stream (a chain of 24 distinct 1000×1000
//! layers at 32 rows took 366–386 µs a layer against 312 µs for one layer that stays in cache).
//! This kernel hides it: 291 µs a layer at 32 rows, 160 against 230 µs at 16, 573 against 679 µs at
//! 64 and 4.84 against 4.94 ms at 512 (AMD EPYC Zen 4 VM, 2 threads, medians).
//!
//! The tiles do not follow later changes to the variables, so training never uses them; inputs
//! that need autograd (inpainting's) take the other paths.
use super::cpu::{cpu, Cpu};
use std::sync::OnceLock;
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

/// Batches of up to this many rows take the kernel; larger ones oneDNN's (`flow::onednn`), which
/// was as fast at 384 rows and faster above: paper architecture, 2 threads, the two timed
/// alternately (bench/ceiling.rs), kernel ÷ oneDNN rows/s 1.11 at 1 row, 1.20 at 2, 0.95 and 1.04 at 4 (two
/// runs), 1.15 at 8, 1.42 at 16, 1.30 at 32, 1.14 at 64, 1.05 at 128, 1.02 at 256, 1.00 at 384, 0.96 at 512 and 0.94 at
/// 1024.
pub(super) const MAX_ROWS: i64 = 384;

/// Whether this process can run the kernel: an AVX-512 CPU, with neither
/// `FLOWSCORE_NO_PACKED_GEMM` (no prepared weights at all) nor `FLOWSCORE_NO_TILED_KERNEL` (oneDNN
/// at every batch size) set. Only AMD was measured, so only AMD takes it when serving
/// (`available`); the tests run the kernel on any AVX-512 CPU.
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let off =
            ["FLOWSCORE_NO_PACKED_GEMM", "FLOWSCORE_NO_TILED_KERNEL"].iter().any(|v| std::env::var_os(v).is_some());
        // SAFETY: a CPUID query.
        !off && unsafe { flowscore_tiled_available() }
    })
}

/// Whether the server's MLPs take this path on this CPU.
pub fn available() -> bool {
    supported() && cpu() == Cpu::AmdAvx512
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
    /// Packs a CPU f32 layer; None when the kernel is unsupported here or the layer does not
    /// qualify.
    pub(super) fn new(layer: &nn::Linear, relu: bool) -> Option<TiledLinear> {
        if !supported() {
            return None;
        }
        let (w, bias) = super::frozen_weights(layer)?;
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

/// The MLP `layers` on a CPU f32 batch x of shape [m, k]: x is transposed once (padded with zero
/// rows to whole blocks of 16), every layer runs feature-major, and the result is transposed back
/// to [m, n]. None if x does not qualify (the caller then takes another path).
pub(super) fn mlp(layers: &[TiledLinear], x: &Tensor) -> Option<Tensor> {
    let first = layers.first()?;
    let (x, m) = super::frozen_input(x, first.k)?;
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
    use tch::nn::Module;

    /// The kernel gives the plain layers' values for widths that are not multiples of a tile and
    /// batches that are not multiples of a column block, with ReLU between layers and none after
    /// the last.
    #[test]
    fn tiled_mlp_equals_plain_layers() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512 (or FLOWSCORE_NO_PACKED_GEMM is set)");
            return;
        }
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let widths = [37, 100, 29, 45];
        let layers: Vec<nn::Linear> = widths
            .windows(2)
            .enumerate()
            .map(|(j, w)| nn::linear(vs.root() / j, w[0], w[1], Default::default()))
            .collect();
        let last = layers.len() - 1;
        let tiled: Vec<TiledLinear> =
            layers.iter().enumerate().filter_map(|(j, l)| TiledLinear::new(l, j < last)).collect();
        assert_eq!(tiled.len(), layers.len());
        let _g = tch::no_grad_guard();
        for rows in [1, 5, 16, 17, 31, 32, 33, 48, 64, 100] {
            let x = Tensor::randn([rows, 37], (Kind::Float, Device::Cpu));
            let plain = layers.iter().enumerate().fold(x.shallow_clone(), |h, (j, l)| {
                let h = l.forward(&h);
                if j < last {
                    h.relu()
                } else {
                    h
                }
            });
            let got = mlp(&tiled, &x).expect("the kernel takes a contiguous f32 batch");
            assert_eq!(got.size(), [rows, 45]);
            let diff = (&got - &plain).abs().max().double_value(&[]);
            let scale = plain.abs().max().double_value(&[]);
            assert!(scale > 0.1 && diff <= 1e-5 * scale, "{rows} rows: diff {diff} at scale {scale}");
        }
    }

    /// Inputs the kernel cannot take are refused, not miscomputed: the wrong width and inputs that
    /// need autograd.
    #[test]
    fn tiled_mlp_refuses_inputs_it_cannot_take() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512 (or FLOWSCORE_NO_PACKED_GEMM is set)");
            return;
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = nn::linear(vs.root(), 8, 20, Default::default());
        let tiled = [TiledLinear::new(&layer, false).expect("packs")];
        assert!(mlp(&tiled, &Tensor::zeros([4, 9], (Kind::Float, Device::Cpu))).is_none());
        let x = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(mlp(&tiled, &x).is_none());
        assert!(mlp(&[], &Tensor::zeros([4, 8], (Kind::Float, Device::Cpu))).is_none());
    }
}
