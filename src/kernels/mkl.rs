//! MKL-packed weights: each layer's weight matrix packed once into MKL's internal GEMM layout
//! (`cblas_sgemm_pack`), so that a forward pass does not re-pack it. A plain GEMM re-packs the
//! whole weight matrix on every call, which dominates batches of a few dozen rows on large MLPs
//! (docs/kernels.md has the measurements).
//!
//! The symbols come from the libtorch already loaded: x86 builds link MKL statically and export
//! its CBLAS API. Where they are missing (another BLAS, ARM) this kernel is unavailable.
use super::{frozen_input, frozen_weights, relu_between};
use std::sync::OnceLock;
use tch::{nn, Device, Kind, Tensor};

// CBLAS enum values (mkl_cblas.h).
const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;
const PACKED: i32 = 151;
const B_MATRIX: i32 = 162;

/// Rows the packed layout is tuned for: MKL's packed layout does not depend on the rows of A in
/// size, but its kernels do (packing for 1 row barely gained; docs/kernels.md).
const PACK_FOR_ROWS: i32 = 64;

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

/// Whether the loaded libtorch exports MKL's packed-GEMM API.
pub(super) fn loaded() -> bool {
    mkl().is_some()
}

/// One `nn::Linear` (y = x Wᵀ + b) with W held in MKL's packed layout.
#[derive(Debug)]
pub(super) struct MklLinear {
    /// Opaque packed buffer; MKL forbids moving it, and a tensor's storage never moves.
    packed: Tensor,
    bias: Tensor,
    /// Output and input widths.
    n: i64,
    k: i64,
}

impl MklLinear {
    /// Packs a CPU f32 layer; None when MKL is not loaded or the layer does not qualify.
    pub(super) fn new(layer: &nn::Linear) -> Option<MklLinear> {
        let mkl = mkl()?;
        let (w, bias) = frozen_weights(layer)?;
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
        Some(MklLinear { packed, bias, n, k })
    }

    /// x Wᵀ + b for a CPU f32 batch x of shape [m, k]; None if x does not qualify.
    fn forward(&self, x: &Tensor) -> Option<Tensor> {
        let mkl = mkl()?;
        let (x, m) = frozen_input(x, self.k)?;
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

/// The MLP on a batch, ReLU between layers; None if x does not qualify (it needs autograd).
pub(super) fn mlp(layers: &[MklLinear], x: &Tensor) -> Option<Tensor> {
    let last = layers.len().checked_sub(1)?;
    let mut h = x.shallow_clone();
    for (j, layer) in layers.iter().enumerate() {
        h = layer.forward(&h)?;
        if relu_between(j, last) {
            let _ = h.relu_();
        }
    }
    Some(h)
}

/// The layers of an MLP in MKL's packed layout; None if one does not qualify.
pub(super) fn prepare(layers: &[nn::Linear]) -> Option<Vec<MklLinear>> {
    layers.first()?;
    layers.iter().map(MklLinear::new).collect()
}
