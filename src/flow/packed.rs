//! Inference-only fast path for the coupling MLPs on CPU: each layer's weight matrix packed once
//! into MKL's internal GEMM layout (`cblas_sgemm_pack`), so that a forward pass does not re-pack
//! it. A plain GEMM re-packs the whole weight matrix on every call; on the paper's architecture
//! (76 MB of weights) that copy dominates batches of 8–64 rows, which is exactly what the
//! dynamic batcher produces from many single-row clients (about 1.8× more rows/s at batch 32 on
//! the 2-core machine; see bench/ceiling.rs). Batches of 1–2 rows and of 384 or more, where
//! libtorch's own GEMMs are as fast or faster, stay on the plain path.
//!
//! The symbols come from the libtorch already loaded: x86 builds link MKL statically and export
//! its CBLAS API. Where they are missing (another BLAS, ARM) packing is unavailable and the plain
//! tch path runs. Packing is for frozen weights only: the packed copy does not follow later
//! changes to the variables, so training never packs.
use super::cpu::{cpu, Cpu};
use std::sync::OnceLock;
use tch::{nn, Device, Kind, Tensor};

// CBLAS enum values (mkl_cblas.h).
const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;
const PACKED: i32 = 151;
const B_MATRIX: i32 = 162;

/// Rows the packed layout is tuned for. MKL's packed layout for B does not depend on the rows of
/// A in size, but its kernels do: packing for 1 row was barely faster than no packing, while 32,
/// 64 and 256 all gave 1.6–2.6× at 4–64 rows on the paper's architecture.
const PACK_FOR_ROWS: i32 = 64;

/// Batches up to this many rows take the plain path: for one or two rows the unpacked GEMV is
/// as fast or faster (measured: 1 row 342 against 302 rows/s).
const PLAIN_MAX_ROWS: i64 = 2;

/// Batches of this many rows or more take the plain path as well: there libtorch's own GEMM
/// amortises its packing over the rows and runs faster than MKL's packed kernels. Paper
/// architecture, 2 threads, the two paths timed alternately (bench/ceiling.rs), plain ÷ packed
/// rows/s in two runs: 256 rows 0.98 / 0.98, 512 rows 1.08 / 1.04, 1024 rows 1.06 / 1.11; at 32
/// rows 0.88 / 0.86.
const PLAIN_FROM_ROWS: i64 = 384;

// MKL's LP64 interface: MKL_INT is a C int.
type PackGetSize = unsafe extern "C" fn(identifier: i32, m: i32, n: i32, k: i32) -> usize;
type Pack = unsafe extern "C" fn(
    layout: i32,
    identifier: i32,
    trans: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    src: *const f32,
    ld: i32,
    dest: *mut f32,
);
type Compute = unsafe extern "C" fn(
    layout: i32,
    transa: i32,
    transb: i32,
    m: i32,
    n: i32,
    k: i32,
    a: *const f32,
    lda: i32,
    b: *const f32,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);

struct Mkl {
    get_size: PackGetSize,
    pack: Pack,
    compute: Compute,
}

/// MKL's packed-GEMM entry points in this process, looked up once.
fn mkl() -> Option<&'static Mkl> {
    static MKL: OnceLock<Option<Mkl>> = OnceLock::new();
    MKL.get_or_init(|| {
        if std::env::var_os("FLOWSCORE_NO_PACKED_GEMM").is_some() {
            return None;
        }
        // The handle of the running program searches every library it has loaded.
        let this = libloading::os::unix::Library::this();
        // SAFETY: the types above are the documented C signatures of these MKL functions.
        let mkl = unsafe {
            Mkl {
                get_size: *this.get::<PackGetSize>(b"cblas_sgemm_pack_get_size\0").ok()?,
                pack: *this.get::<Pack>(b"cblas_sgemm_pack\0").ok()?,
                compute: *this.get::<Compute>(b"cblas_sgemm_compute\0").ok()?,
            }
        };
        // The program's own handle is never unloaded; the function pointers stay valid.
        std::mem::forget(this);
        Some(mkl)
    })
    .as_ref()
}

/// Whether this process packs weights for inference: x86 libtorch with MKL, not disabled by the
/// `FLOWSCORE_NO_PACKED_GEMM` environment variable, on a CPU where packing pays. On AMD, MKL's
/// packed kernels were slower than libtorch's own GEMMs at every batch size from 8 to 384 rows
/// (0.72–0.98×, paper architecture, 2 threads, timed alternately), so the weights are not packed
/// there and the copy's memory is saved.
pub fn available() -> bool {
    mkl().is_some() && cpu() != Cpu::AmdAvx512
}

/// One `nn::Linear` (y = x Wᵀ + b) with W held in MKL's packed layout.
#[derive(Debug)]
pub(super) struct PackedLinear {
    /// Opaque packed buffer; MKL forbids moving it, and a tensor's storage never moves.
    packed: Tensor,
    bias: Tensor,
    /// Output and input widths.
    n: i64,
    k: i64,
}

impl PackedLinear {
    /// Packs a CPU f32 layer; None when packing is unavailable or the layer does not qualify.
    pub(super) fn new(layer: &nn::Linear) -> Option<PackedLinear> {
        if !available() {
            return None;
        }
        let mkl = mkl()?;
        let (w, bias) = super::frozen_weights(layer)?;
        let (n, k) = w.size2().ok()?;
        let (ni, ki) = (i32::try_from(n).ok()?, i32::try_from(k).ok()?);
        // SAFETY: plain query with valid dimensions.
        let bytes = unsafe { (mkl.get_size)(B_MATRIX, PACK_FOR_ROWS, ni, ki) };
        let packed = Tensor::empty([(bytes / 4 + 1) as i64], (Kind::Float, Device::Cpu));
        // SAFETY: `w` is a contiguous row-major n×k f32 matrix (ld = k) alive for the call; op(B)
        // = Wᵀ is k×n as cblas expects for C = x·op(B); `packed` holds at least `bytes` bytes.
        unsafe {
            (mkl.pack)(
                ROW_MAJOR,
                B_MATRIX,
                TRANS,
                PACK_FOR_ROWS,
                ni,
                ki,
                1.0,
                w.data_ptr() as *const f32,
                ki,
                packed.data_ptr() as *mut f32,
            )
        };
        Some(PackedLinear { packed, bias, n, k })
    }

    /// Whether a batch of `rows` rows is faster on the packed path.
    pub(super) fn suits(rows: i64) -> bool {
        rows > PLAIN_MAX_ROWS && rows < PLAIN_FROM_ROWS
    }

    /// x Wᵀ + b for a CPU f32 batch x of shape [m, k]; None if x does not qualify (the caller
    /// then takes the plain path).
    pub(super) fn forward(&self, x: &Tensor) -> Option<Tensor> {
        let mkl = mkl()?;
        let (x, m) = super::frozen_input(x, self.k)?;
        // C starts as the bias in every row; the GEMM adds x·Wᵀ to it (beta = 1).
        let out = self.bias.repeat([m, 1]);
        let (mi, ni, ki) = (i32::try_from(m).ok()?, self.n as i32, self.k as i32);
        // SAFETY: x is a contiguous m×k f32 matrix (lda = k), `out` a fresh contiguous m×n one
        // (ldc = n), and `packed` was produced by cblas_sgemm_pack for this n and k; all three
        // tensors outlive the call.
        unsafe {
            (mkl.compute)(
                ROW_MAJOR,
                NO_TRANS,
                PACKED,
                mi,
                ni,
                ki,
                x.data_ptr() as *const f32,
                ki,
                self.packed.data_ptr() as *const f32,
                ki,
                1.0,
                out.data_ptr() as *mut f32,
                ni,
            )
        };
        Some(out)
    }

    /// Bytes held by the packed copy.
    pub(super) fn bytes(&self) -> usize {
        self.packed.numel() * 4 + self.bias.numel() * 4
    }
}
