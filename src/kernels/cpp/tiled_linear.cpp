// Our own AVX-512 kernel for one linear layer run feature-major (see src/kernels/tiled.rs):
//   Yᵀ = relu?(W·Xᵀ + b)
// with Xᵀ the batch transposed ([k, ld] f32, its first `columns` columns used, `columns` a multiple
// of 16) and W packed in tiles of TILE output features: tile t holds W[t·TILE + i][j] at
// [t][j][i], so one tile's weights are read front to back exactly once per block of 32 columns.
//
// Why not oneDNN or MKL: on batches of a few dozen rows both stall on the weights streaming in
// from memory, while this kernel prefetches the tile it reads a few KB ahead and hides that
// stream behind its FMAs (docs/kernels.md). The tiles are split over libtorch's intra-op
// threads (at::parallel_for, the same OpenMP team oneDNN uses), so no thread is added.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>

namespace {

// Output features per tile: 14 features × 2 registers of 16 columns = 28 accumulators, plus two
// registers of Xᵀ and one broadcast weight, within AVX-512's 32 registers.
constexpr int64_t TILE = 14;

// How far ahead of the FMAs a tile is prefetched, in floats (4 KB; docs/kernels.md).
constexpr int64_t PREFETCH = 1024;

// Columns of Xᵀ one pass over a thread's tiles reads. Wider batches are taken in chunks, so that
// the Xᵀ columns a pass reads stay in the core's L2 while its tiles stream by (docs/kernels.md).
constexpr int64_t CHUNK = 64;

// One tile × 16·NV columns: acc[i][v] starts at the bias and accumulates over k in order.
template <int NV>
__attribute__((target("avx512f"))) inline void tile(const float* __restrict w, const float* __restrict xt,
                                                     int64_t k, int64_t ld, const float* __restrict bias,
                                                     float* __restrict yt, bool relu) {
  __m512 acc[TILE][NV];
  for (int64_t i = 0; i < TILE; i++) {
    const __m512 b = _mm512_set1_ps(bias[i]);
    for (int v = 0; v < NV; v++) acc[i][v] = b;
  }
  for (int64_t j = 0; j < k; j++) {
    __m512 x[NV];
    for (int v = 0; v < NV; v++) x[v] = _mm512_loadu_ps(xt + j * ld + 16 * v);
    // A prefetch past the buffer's end is harmless: prefetches never fault.
    _mm_prefetch(reinterpret_cast<const char*>(w + j * TILE + PREFETCH), _MM_HINT_T0);
    const float* wj = w + j * TILE;
    for (int64_t i = 0; i < TILE; i++) {
      const __m512 wi = _mm512_set1_ps(wj[i]);
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(wi, x[v], acc[i][v]);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < TILE; i++) {
    for (int v = 0; v < NV; v++) {
      _mm512_storeu_ps(yt + i * ld + 16 * v, relu ? _mm512_max_ps(acc[i][v], zero) : acc[i][v]);
    }
  }
}

__attribute__((target("avx512f"))) void tiles(int64_t first, int64_t last, const float* xt, int64_t k, int64_t ld,
                                              int64_t columns, const float* w, const float* bias, float* yt,
                                              bool relu) {
  for (int64_t chunk = 0; chunk < columns; chunk += CHUNK) {
    const int64_t end = chunk + CHUNK < columns ? chunk + CHUNK : columns;
    for (int64_t t = first; t < last; t++) {
      const float* wt = w + t * k * TILE;
      float* y = yt + t * TILE * ld;
      int64_t c = chunk;
      for (; c + 32 <= end; c += 32) tile<2>(wt, xt + c, k, ld, bias + t * TILE, y + c, relu);
      for (; c < end; c += 16) tile<1>(wt, xt + c, k, ld, bias + t * TILE, y + c, relu);
    }
  }
}

}  // namespace

extern "C" {

// Output features per tile, for the Rust side's packing.
int64_t flowscore_tiled_features_per_tile() {
  return TILE;
}

// Whether this CPU runs the kernel (AVX-512F).
bool flowscore_tiled_available() {
  return __builtin_cpu_supports("avx512f");
}

// Yᵀ [n_tiles·TILE, ld] from Xᵀ [k, ld], the packed tiles [n_tiles, k, TILE] and the bias
// [n_tiles·TILE] (zero-padded like the tiles). False, with nothing written, when the arguments
// do not fit the kernel (the caller then takes another path).
bool flowscore_tiled_linear(const float* xt, int64_t k, int64_t ld, int64_t columns, const float* w,
                            const float* bias, int64_t n_tiles, float* yt, bool relu) {
  if (!flowscore_tiled_available() || k <= 0 || n_tiles <= 0 || columns <= 0 || columns % 16 != 0 ||
      columns > ld) {
    return false;
  }
  try {
    at::parallel_for(0, n_tiles, 1, [&](int64_t first, int64_t last) {
      tiles(first, last, xt, k, ld, columns, w, bias, yt, relu);
    });
  } catch (...) {
    return false;  // no exception may cross into Rust
  }
  return true;
}

}  // extern "C"
