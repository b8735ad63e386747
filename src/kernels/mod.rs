//! CPU kernels for the coupling MLPs at inference: libtorch's own layers (`plain`), MKL-packed
//! weights, oneDNN-reordered weights, and our own tiled AVX-512 kernel. Which one a batch takes is one pure function, `plan`, of the CPU, the policy
//! (`--cpu-kernels`) and the batch's rows; `PreparedMlp` holds the copies that plan needs, built
//! once per loaded model. The NICE model (`crate::flow`) sees only its `FastMlp` trait.
//!
//! Every prepared copy is of frozen weights: later changes to the variables are not seen, so
//! training never prepares. Inputs that need autograd (inpainting's) take libtorch's own layers.
mod cpu;
mod mkl;
mod onednn;
mod tiled;

pub use cpu::{Cpu, Vendor};

use crate::flow::{FastMlp, Nice};
use tch::{nn, Device, Kind, Tensor};

/// The `--cpu-kernels` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuKernels {
    /// The measured per-vendor rule (`plan`; docs/kernels.md).
    #[default]
    Auto,
    /// libtorch's own layers, nothing prepared.
    Plain,
    /// MKL-packed weights at every batch size.
    Mkl,
    /// oneDNN-reordered weights at every batch size.
    Onednn,
    /// Our AVX-512 kernel at every batch size.
    Tiled,
}

impl CpuKernels {
    pub const ALL: [CpuKernels; 5] =
        [CpuKernels::Auto, CpuKernels::Plain, CpuKernels::Mkl, CpuKernels::Onednn, CpuKernels::Tiled];

    pub fn name(self) -> &'static str {
        match self {
            CpuKernels::Auto => "auto",
            CpuKernels::Plain => "plain",
            CpuKernels::Mkl => "mkl",
            CpuKernels::Onednn => "onednn",
            CpuKernels::Tiled => "tiled",
        }
    }

    /// The single kernel a named policy forces (None for `auto`).
    fn forced(self) -> Option<Kernel> {
        match self {
            CpuKernels::Auto => None,
            CpuKernels::Plain => Some(Kernel::Plain),
            CpuKernels::Mkl => Some(Kernel::Mkl),
            CpuKernels::Onednn => Some(Kernel::Onednn),
            CpuKernels::Tiled => Some(Kernel::Tiled),
        }
    }
}

impl std::fmt::Display for CpuKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one batch runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    Plain,
    Mkl,
    Onednn,
    Tiled,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Plain => "plain",
            Kernel::Mkl => "mkl",
            Kernel::Onednn => "onednn",
            Kernel::Tiled => "tiled",
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Under `auto` on an AVX-512 CPU: batches of up to `plain_max` rows take libtorch's own layers,
/// those of up to `tiled_max` our tiled kernel, and larger ones oneDNN (docs/kernels.md has the
/// measurements these come from).
struct AutoRule {
    plain_max: i64,
    tiled_max: i64,
}

/// Intel Xeon: plain was fastest at 1–3 rows, tiled from 4 rows to about 224, oneDNN above.
const INTEL: AutoRule = AutoRule { plain_max: 3, tiled_max: 224 };

/// AMD EPYC (Zen 4): tiled was fastest up to 384 rows, oneDNN above.
const AMD: AutoRule = AutoRule { plain_max: 0, tiled_max: 384 };

/// The kernel a batch of `rows` rows takes on `cpu` under `policy`. A named policy takes its
/// kernel at every size (`check` tells whether this CPU can run it); `auto` follows what was
/// measured per vendor, and where nothing was measured takes libtorch's own layers.
pub fn plan(cpu: Cpu, policy: CpuKernels, rows: i64) -> Kernel {
    if let Some(kernel) = policy.forced() {
        return kernel;
    }
    let rule = match cpu.vendor {
        Vendor::Intel if cpu.avx512 => INTEL,
        Vendor::Amd if cpu.avx512 => AMD,
        _ => return Kernel::Plain,
    };
    if rows <= rule.plain_max {
        Kernel::Plain
    } else if rows <= rule.tiled_max {
        Kernel::Tiled
    } else if cpu.onednn {
        Kernel::Onednn
    } else {
        Kernel::Plain
    }
}

/// Largest batch `kernels_used` looks at: every rule is constant beyond a few hundred rows.
const PLANNED_ROWS: i64 = 4096;

/// Every kernel `plan` may choose on `cpu` under `policy`, in a fixed order.
pub fn kernels_used(cpu: Cpu, policy: CpuKernels) -> Vec<Kernel> {
    let mut kernels: Vec<Kernel> = (1..=PLANNED_ROWS).map(|rows| plan(cpu, policy, rows)).collect();
    kernels.sort();
    kernels.dedup();
    kernels
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("--cpu-kernels {policy}: {reason}")]
    Unsupported { policy: CpuKernels, reason: &'static str },
    #[error("--cpu-kernels {policy}: the {kernel} kernel cannot take this model's layers (CPU float32 layers only)")]
    Layers { policy: CpuKernels, kernel: Kernel },
}

/// Whether this CPU and libtorch can run `policy`.
pub fn check(cpu: Cpu, policy: CpuKernels) -> Result<(), KernelError> {
    let reason = match policy {
        CpuKernels::Mkl if !cpu.mkl => "the loaded libtorch does not export MKL's packed GEMM",
        CpuKernels::Onednn if !cpu.onednn => "the loaded libtorch does not register the oneDNN linear operators",
        CpuKernels::Tiled if !cpu.avx512 => "this CPU has no AVX-512F",
        _ => return Ok(()),
    };
    Err(KernelError::Unsupported { policy, reason })
}

/// One coupling MLP with the prepared copies `plan` needs; implements the flow's `FastMlp`.
#[derive(Debug)]
pub struct PreparedMlp {
    cpu: Cpu,
    policy: CpuKernels,
    mkl: Option<Vec<mkl::MklLinear>>,
    onednn: Option<Vec<onednn::OneDnnLinear>>,
    tiled: Option<Vec<tiled::TiledLinear>>,
}

impl PreparedMlp {
    /// Prepares the copies of `layers` (ReLU between them, none after the last) that `policy`
    /// needs on `cpu`.
    pub fn new(layers: &[nn::Linear], cpu: Cpu, policy: CpuKernels) -> Result<PreparedMlp, KernelError> {
        check(cpu, policy)?;
        let mut mlp = PreparedMlp { cpu, policy, mkl: None, onednn: None, tiled: None };
        for kernel in kernels_used(cpu, policy) {
            let prepared = match kernel {
                Kernel::Plain => true,
                Kernel::Mkl => {
                    mlp.mkl = mkl::prepare(layers);
                    mlp.mkl.is_some()
                }
                Kernel::Onednn => {
                    mlp.onednn = onednn::prepare(layers);
                    mlp.onednn.is_some()
                }
                Kernel::Tiled => {
                    mlp.tiled = tiled::prepare(layers);
                    mlp.tiled.is_some()
                }
            };
            if !prepared {
                return Err(KernelError::Layers { policy, kernel });
            }
        }
        Ok(mlp)
    }

    /// Bytes the prepared copies hold.
    pub fn bytes(&self) -> usize {
        let mkl: usize = self.mkl.iter().flatten().map(mkl::MklLinear::bytes).sum();
        let onednn: usize = self.onednn.iter().flatten().map(onednn::OneDnnLinear::bytes).sum();
        let tiled: usize = self.tiled.iter().flatten().map(tiled::TiledLinear::bytes).sum();
        mkl + onednn + tiled
    }
}

impl FastMlp for PreparedMlp {
    fn forward(&self, x: &Tensor) -> Option<Tensor> {
        let rows = x.size2().ok()?.0;
        match plan(self.cpu, self.policy, rows) {
            Kernel::Plain => None,
            Kernel::Mkl => mkl::mlp(self.mkl.as_deref()?, x),
            Kernel::Onednn => onednn::mlp(self.onednn.as_deref()?, x),
            Kernel::Tiled => tiled::mlp(self.tiled.as_deref()?, x),
        }
    }
}

/// What `prepare` did to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub policy: CpuKernels,
    pub kernels: Vec<Kernel>,
    /// Bytes of the prepared copies, all couplings together.
    pub bytes: usize,
}

/// Prepares every coupling MLP of a loaded, frozen CPU model for `policy` on this machine. Under
/// `auto`, a model whose layers no prepared kernel can take (not CPU float32) keeps libtorch's
/// own layers; a named policy that cannot be honoured is an error.
pub fn prepare(nice: &mut Nice, policy: CpuKernels) -> Result<Prepared, KernelError> {
    let cpu = Cpu::detect();
    let mut bytes = 0;
    let result = nice.prepare_mlps(|layers| {
        let mlp = PreparedMlp::new(layers, cpu, policy)?;
        bytes += mlp.bytes();
        Ok::<_, KernelError>(Box::new(mlp) as Box<dyn FastMlp>)
    });
    match result {
        Ok(()) => Ok(Prepared { policy, kernels: kernels_used(cpu, policy), bytes }),
        Err(KernelError::Layers { .. }) if policy == CpuKernels::Auto => {
            nice.clear_prepared_mlps();
            Ok(Prepared { policy, kernels: vec![Kernel::Plain], bytes: 0 })
        }
        Err(e) => Err(e),
    }
}

/// Whether layer `j` of an MLP whose last layer is `last` is followed by a ReLU.
fn relu_between(j: usize, last: usize) -> bool {
    j < last
}

/// A linear layer's weight [out, in] and bias [out] as detached, contiguous CPU f32 tensors (a
/// zero bias where the layer has none). None for layers on another device or of another kind.
fn frozen_weights(layer: &nn::Linear) -> Option<(Tensor, Tensor)> {
    let w = layer.ws.detach().contiguous();
    if w.device() != Device::Cpu || w.kind() != Kind::Float {
        return None;
    }
    let (n, _) = w.size2().ok()?;
    let bias = match &layer.bs {
        Some(b) => b.detach().contiguous(),
        None => Tensor::zeros([n], (Kind::Float, Device::Cpu)),
    };
    Some((w, bias))
}

/// A batch x as the prepared layers take it: a contiguous CPU f32 [m, k] matrix with m > 0 and
/// the layer's k, outside autograd. None otherwise (libtorch's own layers then run).
fn frozen_input(x: &Tensor, k: i64) -> Option<(Tensor, i64)> {
    if x.device() != Device::Cpu || x.kind() != Kind::Float || x.requires_grad() {
        return None;
    }
    let (m, cols) = x.size2().ok()?;
    if cols != k || m == 0 {
        return None;
    }
    Some((x.contiguous(), m))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XEON: Cpu = Cpu { vendor: Vendor::Intel, avx512: true, mkl: true, onednn: true };
    const EPYC: Cpu = Cpu { vendor: Vendor::Amd, avx512: true, mkl: true, onednn: true };

    fn rows_taking(cpu: Cpu, policy: CpuKernels, kernel: Kernel) -> Vec<i64> {
        (1..=1024).filter(|&r| plan(cpu, policy, r) == kernel).collect()
    }

    fn ranges(r: &[std::ops::RangeInclusive<i64>]) -> Vec<i64> {
        r.iter().cloned().flatten().collect()
    }

    #[test]
    fn intel_runs_tiny_batches_plain_then_tiled_then_onednn() {
        assert_eq!(rows_taking(XEON, CpuKernels::Auto, Kernel::Plain), ranges(&[1..=3]));
        assert_eq!(rows_taking(XEON, CpuKernels::Auto, Kernel::Tiled), ranges(&[4..=224]));
        assert_eq!(rows_taking(XEON, CpuKernels::Auto, Kernel::Onednn), ranges(&[225..=1024]));
    }

    #[test]
    fn amd_runs_the_tiled_kernel_up_to_384_rows_and_onednn_above() {
        assert_eq!(rows_taking(EPYC, CpuKernels::Auto, Kernel::Tiled), ranges(&[1..=384]));
        assert_eq!(rows_taking(EPYC, CpuKernels::Auto, Kernel::Onednn), ranges(&[385..=1024]));
    }

    #[test]
    fn without_onednn_large_batches_take_libtorchs_own_layers() {
        for cpu in [XEON, EPYC] {
            let cpu = Cpu { onednn: false, ..cpu };
            assert_eq!(plan(cpu, CpuKernels::Auto, 1024), Kernel::Plain, "{cpu}");
            assert_eq!(kernels_used(cpu, CpuKernels::Auto).last(), Some(&Kernel::Tiled), "{cpu}");
        }
    }

    #[test]
    fn unmeasured_machines_take_libtorchs_own_layers() {
        let other = Cpu { vendor: Vendor::Other, ..XEON };
        let no_avx512 = Cpu { avx512: false, ..EPYC };
        let intel_no_avx512 = Cpu { avx512: false, ..XEON };
        for cpu in [other, no_avx512, intel_no_avx512] {
            assert_eq!(kernels_used(cpu, CpuKernels::Auto), [Kernel::Plain], "{cpu}");
        }
    }

    #[test]
    fn a_named_policy_takes_its_kernel_at_every_size() {
        for (policy, kernel) in [
            (CpuKernels::Plain, Kernel::Plain),
            (CpuKernels::Mkl, Kernel::Mkl),
            (CpuKernels::Onednn, Kernel::Onednn),
            (CpuKernels::Tiled, Kernel::Tiled),
        ] {
            for cpu in [XEON, EPYC] {
                assert_eq!(kernels_used(cpu, policy), [kernel]);
                assert_eq!(rows_taking(cpu, policy, kernel).len(), 1024);
            }
        }
    }

    #[test]
    fn kernels_used_lists_every_choice_of_auto() {
        assert_eq!(kernels_used(XEON, CpuKernels::Auto), [Kernel::Plain, Kernel::Onednn, Kernel::Tiled]);
        assert_eq!(kernels_used(EPYC, CpuKernels::Auto), [Kernel::Onednn, Kernel::Tiled]);
        // Every rule is constant past the rows kernels_used looks at.
        for cpu in [XEON, EPYC] {
            assert_eq!(plan(cpu, CpuKernels::Auto, PLANNED_ROWS), plan(cpu, CpuKernels::Auto, 1 << 40));
        }
    }

    /// `kernel` on an MLP with widths that are not multiples of a tile or block, against
    /// libtorch's own layers, at batch sizes around every block edge.
    fn kernel_equals_libtorchs_layers(kernel: Kernel) {
        use tch::nn::Module;
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let widths = [37, 100, 29, 45];
        let layers: Vec<nn::Linear> = widths
            .windows(2)
            .enumerate()
            .map(|(j, w)| nn::linear(vs.root() / j, w[0], w[1], Default::default()))
            .collect();
        let last = layers.len() - 1;
        let policy = match kernel {
            Kernel::Plain => CpuKernels::Plain,
            Kernel::Mkl => CpuKernels::Mkl,
            Kernel::Onednn => CpuKernels::Onednn,
            Kernel::Tiled => CpuKernels::Tiled,
        };
        let cpu = Cpu::detect();
        let _g = tch::no_grad_guard();
        for rows in [1, 5, 12, 16, 17, 31, 32, 33, 48, 64, 100, 400] {
            let x = Tensor::randn([rows, 37], (Kind::Float, Device::Cpu));
            let want = layers.iter().enumerate().fold(x.shallow_clone(), |h, (j, l)| {
                let h = l.forward(&h);
                if relu_between(j, last) {
                    h.relu()
                } else {
                    h
                }
            });
            let got = PreparedMlp::new(&layers, cpu, policy)
                .expect("prepares")
                .forward(&x)
                .expect("the kernel takes a contiguous f32 batch");
            assert_eq!(got.size(), [rows, 45]);
            let diff = (&got - &want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            assert!(scale > 0.1 && diff <= 1e-5 * scale, "{kernel}, {rows} rows: diff {diff} at scale {scale}");
        }
    }

    #[test]
    #[cfg_attr(not(libtorch_mkl), ignore = "the loaded libtorch has no MKL")]
    fn mkl_equals_libtorchs_layers() {
        kernel_equals_libtorchs_layers(Kernel::Mkl);
    }

    #[test]
    #[cfg_attr(not(libtorch_onednn), ignore = "the loaded libtorch has no oneDNN linear operators")]
    fn onednn_equals_libtorchs_layers() {
        kernel_equals_libtorchs_layers(Kernel::Onednn);
    }

    #[test]
    #[cfg_attr(not(cpu_avx512), ignore = "this CPU has no AVX-512F")]
    fn tiled_equals_libtorchs_layers() {
        kernel_equals_libtorchs_layers(Kernel::Tiled);
    }

    /// Inputs a prepared kernel cannot take (autograd) go back to libtorch's own layers.
    #[test]
    fn inputs_that_need_autograd_take_libtorchs_layers() {
        let vs = nn::VarStore::new(Device::Cpu);
        let layers = [
            nn::linear(vs.root() / 0, 8, 20, Default::default()),
            nn::linear(vs.root() / 1, 20, 3, Default::default()),
        ];
        let x = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let cpu = Cpu::detect();
        for policy in CpuKernels::ALL.into_iter().filter(|p| *p != CpuKernels::Auto && check(cpu, *p).is_ok()) {
            let mlp = PreparedMlp::new(&layers, cpu, policy).expect("prepares");
            assert!(mlp.forward(&x).is_none(), "{policy} took an input that needs autograd");
        }
    }

    #[test]
    fn check_refuses_what_the_machine_cannot_run() {
        let bare = Cpu { vendor: Vendor::Other, avx512: false, mkl: false, onednn: false };
        for policy in [CpuKernels::Mkl, CpuKernels::Onednn, CpuKernels::Tiled] {
            let msg = check(bare, policy).expect_err("refused").to_string();
            assert!(msg.starts_with(&format!("--cpu-kernels {policy}: ")), "{msg}");
        }
        assert!(check(bare, CpuKernels::Auto).is_ok() && check(bare, CpuKernels::Plain).is_ok());
    }
}
