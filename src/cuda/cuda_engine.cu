// cuda_engine.cu -- the CUDA Gram engine: per-row tables and the tile epilogue.
//
// Math: layer_math.hpp, the per-entry layer maps shared with the CPU engine, with lane type
// V = double. Every entry carries (c, t) = (NNGP, NTK) through the whole program in registers;
// float32 and float64 storage alike are computed in double and rounded once, at the end.
//
// Work (driven by gram_plan.cu's GramPlan, all on the caller's stream):
//   row_stats     per point set, once: q[k][i], sq[k][i] (the variance of row i entering op k and
//                 its square root) and Θ(x_i, x_i), by row_step.hpp's row_step (shared with the
//                 CPU engine); the layer-0 variance ||x_i||²/d is summed in double. Rows outside
//                 row_step.hpp's range policy are reported (in the CPU engine's order) before any
//                 tile is computed. Optionally the GEMM scale exponent of each row, and flags
//                 (any row scaled / rescaled) so that the tiles can skip those tables.
//   scale_rows    the GEMM's x·2^-e copy of a point set with rows outside the safe range.
//   gram_tile     per tile, after the plan's cuBLAS GEMM of x_I · x_Jᵀ (of rows x·2^-e when
//                 scale exponents are given, multiplied back here): c = (x_i · x_j)/d snapped
//                 to ±√(q1 q2) when |ρ| is within snap_tol of 1, t = 0, then every op; when
//                 the plan passes the input rows, entries whose |ρ| is near 1 are flagged and
//                 near_parallel_kernel redoes them from the rows (exact_pair.hpp, as on the CPU).
//                 Programs with Series ops (Hermite series, series_math.hpp) run tile_kernel's
//                 Series instantiation instead: per entry the fewest terms its |ρ| allows, the
//                 Horner sums for F and F', and the duplicate rows' exact diagonal; an entry that
//                 needs the 2-D quadrature (series_fallback.hpp) is marked in a bit map and
//                 series_fallback_kernel recomputes it, so the quadrature's registers and local
//                 scratch stay out of the tile kernels. The largest tail bound left and the
//                 fallback's count go to a report the plan reads after the run.
//
// Layout: row-major everywhere. A block of 32 x 8 threads owns a 32 x 32 sub-tile; thread (x, y)
// computes rows y, y + 8, y + 16, y + 24 of column x and writes them along j (coalesced). For the
// mirror image (symmetric Gram) the values are staged in shared memory and written transposed,
// again coalesced. A diagonal tile computes only j > i; j == i is copied from the per-row
// recursion, so a symmetric Gram is exactly symmetric and its diagonal equals diagonal().
//
// Numerics: compiled with -fmad=false (CMakeLists.txt): the only fused operations are the
// explicit fma()s of layer_math.hpp (nt_fma / nt_mad), so an expression rounds the same way in
// the row recursion and in a tile, as on the CPU (-ffp-contract=off). IEEE division and square
// root; never --use_fast_math (the guards rely on NaN/Inf semantics).
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "cuda_check.cuh"
#include "cuda_engine.hpp"
#include "ntkfast/exact_pair.hpp"
#include "ntkfast/layer_math.hpp"
#include "ntkfast/program.hpp"
#include "ntkfast/row_step.hpp"
#include "ntkfast/series_fallback.hpp"
#include "ntkfast/series_math.hpp"

#ifndef NTKFAST_CUDA_ARCHS
#define NTKFAST_CUDA_ARCHS "unknown"
#endif

// The op switch also instantiated for the host: nvcc's device pass does not diagnose a switch
// that misses an enumerator, the host compiler does (-Werror=switch), so a forgotten op fails here.
template void ntkfast::apply_op<true, double>(const ntkfast::LayerOp&, const double*,
                                              const ntkfast::PairStats<double>&, double&, double&);

namespace ntkfast {
namespace cuda {
namespace {

static_assert(sizeof(LayerOp) == 64, "LayerOp is copied byte for byte to the device");

constexpr int kNormThreads = 256;           // row_norms: one warp per row
constexpr int kRowPassThreads = 128;        // row_pass: one thread per row
constexpr int kTileDim = 32;                // tile_kernel: a block owns kTileDim x kTileDim entries
constexpr int kBlockRows = 8;               //   with kTileDim x kBlockRows threads,
constexpr int kRowsPerThread = kTileDim / kBlockRows;  // each computing this many rows
constexpr unsigned long long kNoFailure = ~0ull;  // status[0]: the first failure's key
constexpr unsigned long long kAnyScaled = 1ull;    // status[1]: flags (RowStatsFlags)
constexpr unsigned long long kAnyRescaled = 2ull;
constexpr int64_t kMaxGridY = 65535;

// ------------------------------------------------------------------------------------------------
// Per-row tables.

// q[i] = ||x_i||² / d summed in double, sq[i] = √q[i]. A warp per row: the lanes stride over
// the features (coalesced), then a fixed shuffle tree: the same input always gives the same bits.
template <class T>
__global__ void __launch_bounds__(kNormThreads)
    row_norms_kernel(const T* __restrict__ x, int64_t n, int64_t d, int64_t ld, double inv_d,
                     double* __restrict__ q, double* __restrict__ sq, int32_t* __restrict__ scale_exp,
                     unsigned long long* __restrict__ status) {
  const int lane = int(threadIdx.x) & 31;
  const int64_t row = int64_t(blockIdx.x) * (kNormThreads / 32) + (threadIdx.x >> 5);
  if (row >= n) return;  // warp-uniform: every lane of a warp has the same row
  const T* r = x + row * ld;
  double sum = 0.0;
  bool nonzero = false;
  for (int64_t k = lane; k < d; k += 32) {
    const double v = double(r[k]);
    sum = sum + v * v;
    nonzero = nonzero || v != 0.0;
  }
  nonzero = __any_sync(0xffffffffu, nonzero);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) sum = sum + __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) {
    const double v = sum * inv_d;
    q[row] = v;
    sq[row] = sqrt(v);
    if (scale_exp) {
      const int32_t e = gemm_scale_exponent<T>(sum);
      scale_exp[row] = e;
      if (e != 0) atomicOr(status + 1, kAnyScaled);
    }
    // Category 0 of row_pass_kernel's failure key (the input variance): key = row.
    if (input_variance_underflows(v, nonzero)) atomicMin(status, (unsigned long long)row);
  }
}

// Rows 1..n_ops of the tables from row 0, and Θ(x_i, x_i): the CPU engine's row_pass
// (cpu_kernels.cpp) one row per thread, through the same row_step. Also the CPU engine's
// check_row_stats (engine.cpp), the same check_row_variance: the first failure in (op, row)
// order, NTK diagonal last, is kept as key = category * n + row by an atomicMin (category
// k = 0..n_ops: q entering op k, i.e. after op k - 1, 0 being the input variance; n_ops + 1: the
// NTK diagonal). With a rescale table (int32, the layout of q), homogeneous ops take rows of any
// normal variance, exactly, as on the CPU (row_step.hpp); without one they keep [2^-500, 2^500].
// A Series op takes the row's own E[φ²], E[φ'²] from its tables (`series`, the layout of q).
template <bool WithNtk>
__global__ void __launch_bounds__(kRowPassThreads)
    row_pass_kernel(const LayerOp* __restrict__ ops, int32_t n_ops, const double* __restrict__ pool,
                    const double* __restrict__ series,
                    double* __restrict__ q, double* __restrict__ sq, int64_t stride,
                    double* __restrict__ ntk_diag, int32_t* __restrict__ rescale, int64_t n,
                    double storage_max, unsigned long long* __restrict__ status) {
  const int64_t i = int64_t(blockIdx.x) * kRowPassThreads + threadIdx.x;
  if (i >= n) return;
  const unsigned long long un = (unsigned long long)n, row = (unsigned long long)i;
  const bool rescaling = rescale != nullptr;
  unsigned long long first = kNoFailure;
  bool any_rescaled = false;
  if (check_row_variance(q[i], n_ops > 0 ? &ops[0] : nullptr, storage_max, rescaling) != kRowInRange)
    first = row;
  double t = 0.0;
  for (int k = 0; k < n_ops; ++k) {
    const LayerOp& op = ops[k];
    const double qk = q[k * stride + i], sqk = sq[k * stride + i];
    const int32_t e = rescaling && homogeneous_degree(op) >= 0 ? rescale_exponent(qk) : 0;
    if (rescaling) rescale[k * stride + i] = e;
    any_rescaled = any_rescaled || e != 0;
    double q_next, sq_next;
    if (op.kind == kSeries) {
      const double* m = series + int64_t(op.p[0]) * stride + i;
      series_row_step<WithNtk>(m[0], m[stride], t, q_next, sq_next);
    } else if (e != 0)
      row_step_rescaled<WithNtk>(op, pool, qk, sqk, e, t, q_next, sq_next);
    else
      row_step<WithNtk>(op, pool, qk, sqk, t, q_next, sq_next);
    q[(k + 1) * stride + i] = q_next;
    sq[(k + 1) * stride + i] = sq_next;
    const LayerOp* next_op = k + 1 < n_ops ? &ops[k + 1] : nullptr;
    if (first == kNoFailure &&
        check_row_variance(q_next, next_op, storage_max, rescaling) != kRowInRange)
      first = (unsigned long long)(k + 1) * un + row;
  }
  if (WithNtk) {
    ntk_diag[i] = t;
    if (first == kNoFailure && check_ntk_diagonal(t, storage_max) != kRowInRange)
      first = (unsigned long long)(n_ops + 1) * un + row;
  }
  if (first != kNoFailure) atomicMin(status, first);
  if (any_rescaled) atomicOr(status + 1, kAnyRescaled);
}

// The GEMM's copy of a point set with scaled rows, and a table row in the storage type.
template <class T>
__global__ void scale_rows_kernel(const T* __restrict__ x, int64_t n, int64_t d,
                                  const int32_t* __restrict__ scale_exp, T* __restrict__ out) {
  const int64_t total = n * d;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x)
    out[idx] = T(ldexp(double(x[idx]), -scale_exp[idx / d]));  // exact in T, as std::ldexp
}

template <class T>
__global__ void store_row_kernel(const double* __restrict__ src, int64_t n, T* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = T(src[i]);
}

// ------------------------------------------------------------------------------------------------
// The tile epilogue.

template <class T>
struct TileParams {
  const T* gram;
  int64_t ld_gram;
  int64_t rows, cols;
  double inv_d, snap_tol;
  const LayerOp* ops;
  int32_t n_ops;
  const double* pool;
  const double* q1;
  const double* sq1;
  int64_t stride1;
  const double* q2;
  const double* sq2;
  int64_t stride2;
  T* nngp;
  T* nngp_mirror;
  T* ntk;
  T* ntk_mirror;
  int64_t ld_nngp, ld_nngp_mirror, ld_ntk, ld_ntk_mirror;
  const double* diag_nngp;
  const double* diag_ntk;
  const int32_t* scale_exp1;  // null: the GEMM saw unscaled rows
  const int32_t* scale_exp2;
  const int32_t* rescale1;    // per op and row (row_pass_kernel); null: no row rescaled
  const int32_t* rescale2;
  const T* x1;  // null: no exact near-parallel path
  const T* x2;
  int64_t d;
  unsigned* near_flag;  // with x1: set where an entry is near-parallel
  bool diagonal;
};

// What the kernels of programs with Series ops need besides TileParams (cuda_engine.hpp's
// TileArgs::Series); a parameter of its own, so the other programs' kernels do not carry it.
struct SeriesParams {
  const double* table1;  // offset to the tile's first row, stride a.stride1
  const double* table2;  // offset to the tile's first column, stride a.stride2
  SeriesData data;       // profiles, fallback records, rules (series_math.hpp)
  unsigned* marks;             // a bit per entry, i * cols + j
  unsigned long long* report;  // [0]: largest bound (bits), [1]: fallback entries
  unsigned* flag;              // some entry of this tile marked
};

template <class T>
__device__ __forceinline__ void input_entry(const TileParams<T>& a, int64_t i, int64_t j, double& c,
                                            double& s) {
  c = double(a.gram[i * a.ld_gram + j]);
  if (a.scale_exp1) c = ldexp(c, a.scale_exp1[i] + a.scale_exp2[j]);  // exact: see gemm_scale_exponent
  c = c * a.inv_d;
  s = pair_scale(a.q1[i], a.q2[j], a.sq1[i], a.sq2[j]);
  c = snap_input_correlation(c, s, a.snap_tol);
}

// (c, t) of entry (i, j) of a tile: the CPU engine's tile_impl (cpu_kernels.cpp) for one entry.
// Series: the program may have Series ops (then s is used, else it is not read); false: the entry
// needs series_fallback_kernel (Fallback false only).
template <bool WithNtk, bool Series, bool Fallback, class T>
__device__ __forceinline__ bool tile_entry(const TileParams<T>& a, const SeriesParams& s, int64_t i,
                                           int64_t j, double& c, double& t, SeriesTally& tally) {
  double scale;
  input_entry(a, i, j, c, scale);
  t = 0.0;
  // |ρ| near 1: near_parallel_kernel redoes the entry from the rows (a benign race: all write 1).
  if (a.near_flag && near_parallel(c, scale)) *a.near_flag = 1u;
  if (Series)  // series_math.hpp: the same loop, with the Series ops
    return series_program_entry<WithNtk, Fallback>(
        a.ops, a.n_ops, a.pool, s.data,
        SeriesRow{a.q1 + i, a.sq1 + i, a.rescale1 ? a.rescale1 + i : nullptr, s.table1 + i, a.stride1},
        SeriesRow{a.q2 + j, a.sq2 + j, a.rescale2 ? a.rescale2 + j : nullptr, s.table2 + j, a.stride2},
        c, t, tally);
  else
    for (int k = 0; k < a.n_ops; ++k) {
      const int64_t o1 = k * a.stride1 + i, o2 = k * a.stride2 + j;
      const PairStats<double> ps{a.q1[o1], a.q2[o2], a.sq1[o1], a.sq2[o2]};
      apply_op_entry<WithNtk>(a.ops[k], a.pool, ps, a.rescale1 ? a.rescale1[o1] : 0,
                              a.rescale2 ? a.rescale2[o2] : 0, c, t);
    }
  return true;
}

// A thread's tally into the report: the warp's largest bound by one atomicMax (a double >= 0
// orders as its bits), the fallback count by one atomicAdd. Every lane of the warp calls it.
__device__ __forceinline__ void report_series(const SeriesParams& s, SeriesTally tally) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const double other = __shfl_xor_sync(0xffffffffu, tally.bound, offset);
    tally.bound = other > tally.bound ? other : tally.bound;
    tally.fallbacks += __shfl_xor_sync(0xffffffffu, tally.fallbacks, offset);
  }
  if ((threadIdx.x & 31) != 0) return;
  if (tally.bound > 0.0)
    atomicMax(&s.report[0], (unsigned long long)__double_as_longlong(tally.bound));
  if (tally.fallbacks) atomicAdd(&s.report[1], tally.fallbacks);
}

// Series: the instantiation for programs with Series ops (s used), else s is not read.
template <class T, bool WithNtk, bool Series>
__global__ void __launch_bounds__(kTileDim * kBlockRows)
    tile_kernel(const TileParams<T> a, const SeriesParams s) {
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  // Below the diagonal of a diagonal tile: written by the mirror of block (bj, bi). Block-uniform,
  // so no thread of this block reaches the barrier below.
  if (a.diagonal && bj < bi) return;
  const bool mirror = a.nngp_mirror != nullptr || a.ntk_mirror != nullptr;  // grid-uniform
  __shared__ T s_nngp[kTileDim][kTileDim + 1];  // +1: no bank conflicts on the transposed read
  __shared__ T s_ntk[WithNtk ? kTileDim : 1][kTileDim + 1];
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  const int64_t j = bj * kTileDim + tx;
  SeriesTally tally;
  // Not unrolled: the body inlines the whole layer program (every op kind), and four copies of it
  // would only crowd the instruction cache.
#pragma unroll 1
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int li = ty + r * kBlockRows;
    const int64_t i = bi * kTileDim + li;
    if (i >= a.rows || j >= a.cols) continue;
    if (a.diagonal && j <= i) {
      if (j == i) {  // the per-row recursion: bit for bit what diagonal() returns
        if (a.nngp) a.nngp[i * a.ld_nngp + j] = T(a.diag_nngp[i]);
        if (WithNtk) a.ntk[i * a.ld_ntk + j] = T(a.diag_ntk[i]);
      }
      continue;
    }
    double c, t;
    if (!tile_entry<WithNtk, Series, false>(a, s, i, j, c, t, tally)) {
      // Marked for series_fallback_kernel, which overwrites what is written here.
      const int64_t idx = i * a.cols + j;
      atomicOr(&s.marks[idx >> 5], 1u << (idx & 31));
      *s.flag = 1u;  // a benign race: all write 1
    }
    const T c_out = T(c);
    if (a.nngp) a.nngp[i * a.ld_nngp + j] = c_out;
    if (WithNtk) a.ntk[i * a.ld_ntk + j] = T(t);
    if (mirror) {
      s_nngp[li][tx] = c_out;
      if (WithNtk) s_ntk[WithNtk ? li : 0][tx] = T(t);
    }
  }
  if (Series) report_series(s, tally);  // whole warps: only block-uniform returns above
  if (!mirror) return;
  __syncthreads();
  // Transposed write: entry (i, j) of the tile goes to row j, column i of the mirror; now the
  // threads of a warp run along i.
  const int64_t i = bi * kTileDim + tx;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int lj = ty + r * kBlockRows;
    const int64_t jj = bj * kTileDim + lj;
    if (i >= a.rows || jj >= a.cols || (a.diagonal && jj <= i)) continue;
    if (a.nngp_mirror) a.nngp_mirror[jj * a.ld_nngp_mirror + i] = s_nngp[tx][lj];
    if (WithNtk && a.ntk_mirror) a.ntk_mirror[jj * a.ld_ntk_mirror + i] = s_ntk[WithNtk ? tx : 0][lj];
  }
}

// The entries of a tile whose input |ρ| is near 1, again from the input rows (exact_pair.hpp, as
// the CPU engine), over what tile_kernel wrote there. A pass of its own, run after tile_kernel,
// so that the rare path costs the tile kernel no registers (called from it, it took 63 -> 80
// registers and spills); it returns at once unless tile_kernel flagged an entry of this tile.
template <class T, bool WithNtk>
__global__ void __launch_bounds__(256) near_parallel_kernel(const TileParams<T> a) {
  if (*a.near_flag == 0u) return;
  const int64_t total = a.rows * a.cols;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / a.cols, j = idx % a.cols;
    if (a.diagonal && j <= i) continue;
    double c, s, t = 0.0;
    input_entry(a, i, j, c, s);
    if (!near_parallel(c, s)) continue;
    if (!exact_pair_entry<WithNtk>(ProgramView{a.ops, a.n_ops, a.pool}, a.x1 + i * a.d,
                                   a.x2 + j * a.d, a.d, a.inv_d, a.q1 + i, a.sq1 + i,
                                   a.rescale1 ? a.rescale1 + i : nullptr, a.stride1, a.q2 + j,
                                   a.sq2 + j, a.rescale2 ? a.rescale2 + j : nullptr, a.stride2, c, t))
      continue;  // declined (identical rows, ...): tile_kernel's value stands
    if (a.nngp) a.nngp[i * a.ld_nngp + j] = T(c);
    if (a.nngp_mirror) a.nngp_mirror[j * a.ld_nngp_mirror + i] = T(c);
    if (WithNtk) {
      a.ntk[i * a.ld_ntk + j] = T(t);
      if (a.ntk_mirror) a.ntk_mirror[j * a.ld_ntk_mirror + i] = T(t);
    }
  }
}

// The entries of a tile that tile_kernel<T, WithNtk, true> marked: each again from its input,
// now with the 2-D quadrature where a Series op needs it, over what tile_kernel wrote there (and
// its mirror image). A kernel of its own because the quadrature (series_fallback.hpp) takes many
// registers and ~1.4 KB of local scratch per thread; it returns at once unless an entry of this
// tile was marked, and clears the marks it consumed.
template <class T, bool WithNtk>
__global__ void __launch_bounds__(128) series_fallback_kernel(const TileParams<T> a,
                                                              const SeriesParams s) {
  if (*s.flag == 0u) return;
  SeriesTally tally;
  const int64_t total = a.rows * a.cols;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t end = (total + stride - 1) / stride * stride;  // whole warps for report_series
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < end; idx += stride) {
    const unsigned bit = 1u << (idx & 31);
    if (idx >= total || !(s.marks[idx >> 5] & bit)) continue;
    atomicAnd(&s.marks[idx >> 5], ~bit);
    const int64_t i = idx / a.cols, j = idx % a.cols;
    double c, t;
    tile_entry<WithNtk, true, true>(a, s, i, j, c, t, tally);
    if (a.nngp) a.nngp[i * a.ld_nngp + j] = T(c);
    if (a.nngp_mirror) a.nngp_mirror[j * a.ld_nngp_mirror + i] = T(c);
    if (WithNtk) {
      a.ntk[i * a.ld_ntk + j] = T(t);
      if (a.ntk_mirror) a.ntk_mirror[j * a.ld_ntk_mirror + i] = T(t);
    }
  }
  report_series(s, tally);
}

// ------------------------------------------------------------------------------------------------
// Host side.

// Makes `device` current for this runtime: the caller's current CuPy device (the Python side
// enters it first), so in practice nothing changes. It is deliberately not restored afterwards:
// both runtimes in the process (this static one and CuPy's) act on the driver's per-thread current
// context, and switching it back to this runtime's idea of a "previous" device could move CuPy's.
void use_device(int device) {
  int current = -1;
  NTKFAST_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) NTKFAST_CUDA_CHECK(cudaSetDevice(device));
}

void require(bool condition, const char* message) {
  if (!condition) throw std::invalid_argument(message);
}

template <class P>
P* as_ptr(uintptr_t address) {
  return reinterpret_cast<P*>(address);
}

template <class T>
void launch_row_norms(uintptr_t x, int64_t n, int64_t d, int64_t ld, double inv_d, double* q,
                      double* sq, int32_t* scale_exp, unsigned long long* status,
                      cudaStream_t stream) {
  const int64_t rows_per_block = kNormThreads / 32;
  const int64_t blocks = (n + rows_per_block - 1) / rows_per_block;
  require(blocks <= INT_MAX, "row_stats: too many rows");
  row_norms_kernel<T><<<unsigned(blocks), kNormThreads, 0, stream>>>(as_ptr<const T>(x), n, d, ld,
                                                                      inv_d, q, sq, scale_exp, status);
  NTKFAST_CUDA_CHECK_LAUNCH("row_norms_kernel");
}

template <class T, bool WithNtk>
void launch_tile(const TileArgs& a, cudaStream_t stream) {
  TileParams<T> p;
  p.gram = as_ptr<const T>(a.gram);
  p.ld_gram = a.ld_gram;
  p.rows = a.rows;
  p.cols = a.cols;
  p.inv_d = a.inv_d;
  p.snap_tol = a.snap_tol;
  p.ops = as_ptr<const LayerOp>(a.prog.ops);
  p.n_ops = a.prog.n_ops;
  p.pool = as_ptr<const double>(a.prog.pool);
  p.q1 = as_ptr<const double>(a.q1);
  p.sq1 = as_ptr<const double>(a.sq1);
  p.stride1 = a.stride1;
  p.q2 = as_ptr<const double>(a.q2);
  p.sq2 = as_ptr<const double>(a.sq2);
  p.stride2 = a.stride2;
  p.nngp = as_ptr<T>(a.nngp);
  p.nngp_mirror = as_ptr<T>(a.nngp_mirror);
  p.ntk = as_ptr<T>(a.ntk);
  p.ntk_mirror = as_ptr<T>(a.ntk_mirror);
  p.ld_nngp = a.ld_nngp;
  p.ld_nngp_mirror = a.ld_nngp_mirror;
  p.ld_ntk = a.ld_ntk;
  p.ld_ntk_mirror = a.ld_ntk_mirror;
  p.diag_nngp = as_ptr<const double>(a.diag_nngp);
  p.diag_ntk = as_ptr<const double>(a.diag_ntk);
  p.scale_exp1 = as_ptr<const int32_t>(a.scale_exp1);
  p.scale_exp2 = as_ptr<const int32_t>(a.scale_exp2);
  p.rescale1 = as_ptr<const int32_t>(a.rescale1);
  p.rescale2 = as_ptr<const int32_t>(a.rescale2);
  p.x1 = as_ptr<const T>(a.x1);
  p.x2 = as_ptr<const T>(a.x2);
  p.d = a.d;
  p.near_flag = p.x1 ? as_ptr<unsigned>(a.near_flag) : nullptr;
  p.diagonal = a.diagonal;
  if (p.near_flag) NTKFAST_CUDA_CHECK(cudaMemsetAsync(p.near_flag, 0, sizeof(unsigned), stream));
  const TileArgs::Series& in = a.series;
  SeriesParams sp{};
  sp.table1 = as_ptr<const double>(in.table1);
  sp.table2 = as_ptr<const double>(in.table2);
  sp.data.profiles = as_ptr<const double>(in.profiles);
  sp.data.profile_len = in.profile_len;
  sp.data.fallbacks = as_ptr<const double>(in.fallbacks);
  sp.data.fallback_len = in.fallback_len;
  sp.data.fallback_above = in.fallback_above;
  sp.data.rules = as_ptr<const FallbackRules>(in.rules);
  sp.marks = as_ptr<unsigned>(in.marks);
  sp.report = as_ptr<unsigned long long>(in.report);
  sp.flag = in.report ? as_ptr<unsigned>(in.report + 2 * sizeof(unsigned long long)) : nullptr;
  const bool series = sp.table1 != nullptr;
  if (series && sp.data.fallbacks)
    NTKFAST_CUDA_CHECK(cudaMemsetAsync(sp.flag, 0, sizeof(unsigned), stream));
  const dim3 grid(unsigned((a.cols + kTileDim - 1) / kTileDim), unsigned((a.rows + kTileDim - 1) / kTileDim));
  const dim3 block(kTileDim, kBlockRows);
  if (series)
    tile_kernel<T, WithNtk, true><<<grid, block, 0, stream>>>(p, sp);
  else
    tile_kernel<T, WithNtk, false><<<grid, block, 0, stream>>>(p, sp);
  NTKFAST_CUDA_CHECK_LAUNCH("tile_kernel");
  if (series && sp.data.fallbacks) {
    const int64_t blocks = std::min<int64_t>((a.rows * a.cols + 127) / 128, 2048);
    series_fallback_kernel<T, WithNtk><<<unsigned(blocks), 128, 0, stream>>>(p, sp);
    NTKFAST_CUDA_CHECK_LAUNCH("series_fallback_kernel");
  }
  if (p.near_flag) {
    const int64_t blocks = std::min<int64_t>((a.rows * a.cols + 255) / 256, 1024);
    near_parallel_kernel<T, WithNtk><<<unsigned(blocks), 256, 0, stream>>>(p);
    NTKFAST_CUDA_CHECK_LAUNCH("near_parallel_kernel");
  }
}

std::string version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace

Dtype parse_dtype(const std::string& name) {
  if (name == "float32") return Dtype::kFloat32;
  if (name == "float64") return Dtype::kFloat64;
  throw std::invalid_argument("dtype must be 'float32' or 'float64', got '" + name + "'");
}

int64_t max_tile_rows() { return kMaxGridY * kTileDim; }

RowStatsFlags row_stats(Dtype dtype, uintptr_t x, int64_t n, int64_t d, int64_t ld_x,
                        const DeviceProgram& prog, const DeviceRowTables& tables, uintptr_t status,
                        int point_set, int device, uintptr_t stream) {
  require(n >= 0 && d >= 0, "row_stats: negative size");
  require(ld_x >= d, "row_stats: leading dimension smaller than the number of features");
  require(prog.n_ops >= 0 && (prog.n_ops == 0 || prog.ops != 0), "row_stats: no program");
  if (n == 0) return {};
  require(x != 0 || d == 0, "row_stats: null input");
  require(tables.q != 0 && tables.sq != 0 && status != 0, "row_stats: null table");
  require(tables.stride >= n, "row_stats: table stride smaller than the number of rows");
  use_device(device);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  double* q = as_ptr<double>(tables.q);
  double* sq = as_ptr<double>(tables.sq);
  double* ntk_diag = as_ptr<double>(tables.ntk_diag);
  int32_t* rescale = as_ptr<int32_t>(tables.rescale);
  const double* series = as_ptr<const double>(tables.series);  // the plan checked it is there
  auto* first = as_ptr<unsigned long long>(status);
  NTKFAST_CUDA_CHECK(cudaMemsetAsync(first, 0xFF, sizeof(unsigned long long), s));
  NTKFAST_CUDA_CHECK(cudaMemsetAsync(first + 1, 0, sizeof(unsigned long long), s));

  const double inv_d = d > 0 ? 1.0 / double(d) : 0.0;  // as the CPU engine
  if (dtype == Dtype::kFloat32)
    launch_row_norms<float>(x, n, d, ld_x, inv_d, q, sq, as_ptr<int32_t>(tables.scale_exp), first, s);
  else
    launch_row_norms<double>(x, n, d, ld_x, inv_d, q, sq, as_ptr<int32_t>(tables.scale_exp), first, s);

  const double storage_max = dtype == Dtype::kFloat32 ? double(FLT_MAX) : DBL_MAX;
  const int64_t blocks = (n + kRowPassThreads - 1) / kRowPassThreads;
  require(blocks <= INT_MAX, "row_stats: too many rows");
  const LayerOp* ops = as_ptr<const LayerOp>(prog.ops);
  const double* pool = as_ptr<const double>(prog.pool);
  if (ntk_diag) {
    row_pass_kernel<true><<<unsigned(blocks), kRowPassThreads, 0, s>>>(
        ops, prog.n_ops, pool, series, q, sq, tables.stride, ntk_diag, rescale, n, storage_max, first);
    NTKFAST_CUDA_CHECK_LAUNCH("row_pass_kernel<true>");
  } else {
    row_pass_kernel<false><<<unsigned(blocks), kRowPassThreads, 0, s>>>(
        ops, prog.n_ops, pool, series, q, sq, tables.stride, nullptr, rescale, n, storage_max, first);
    NTKFAST_CUDA_CHECK_LAUNCH("row_pass_kernel<false>");
  }

  // The one synchronisation of a Gram computation: non-finite rows raise before any tile.
  unsigned long long words[2] = {0, 0};
  NTKFAST_CUDA_CHECK(cudaMemcpyAsync(words, first, sizeof words, cudaMemcpyDeviceToHost, s));
  NTKFAST_CUDA_CHECK(cudaStreamSynchronize(s));
  const unsigned long long key = words[0];
  if (key == kNoFailure) {
    RowStatsFlags flags;
    flags.any_scaled = (words[1] & kAnyScaled) != 0;
    flags.any_rescaled = (words[1] & kAnyRescaled) != 0;
    return flags;
  }
  const int64_t category = int64_t(key / (unsigned long long)n);
  const int64_t row = int64_t(key % (unsigned long long)n);
  const bool is_ntk = category == int64_t(prog.n_ops) + 1;
  const double* where = is_ntk ? ntk_diag + row : q + category * tables.stride + row;
  double value = 0.0;
  NTKFAST_CUDA_CHECK(cudaMemcpyAsync(&value, where, sizeof value, cudaMemcpyDeviceToHost, s));
  NTKFAST_CUDA_CHECK(cudaStreamSynchronize(s));
  const int op = is_ntk ? prog.n_ops - 1 : int(category) - 1;
  // The only finite values this small that fail are underflows (row_step.hpp).
  throw NonFiniteKernel(point_set, row, op, value, is_ntk, !is_ntk && is_underflow_value(value));
}

void gram_tile(Dtype dtype, const TileArgs& a, int device, uintptr_t stream) {
  require(a.rows >= 0 && a.cols >= 0, "gram_tile: negative size");
  if (a.rows == 0 || a.cols == 0 || (a.nngp == 0 && a.ntk == 0)) return;
  require(a.rows <= max_tile_rows(), "gram_tile: tile has too many rows");
  require(a.gram != 0 && a.q1 != 0 && a.sq1 != 0 && a.q2 != 0 && a.sq2 != 0, "gram_tile: null input");
  require(a.ld_gram >= a.cols, "gram_tile: ld_gram < cols");
  require((a.scale_exp1 == 0) == (a.scale_exp2 == 0), "gram_tile: give both scale tables or neither");
  require((a.x1 == 0) == (a.x2 == 0) && (a.x1 == 0 || a.near_flag != 0),
          "gram_tile: give both input row sets and the flag word, or none of them");
  require(a.stride1 > 0 && a.stride2 > 0, "gram_tile: table strides must be positive");
  const TileArgs::Series& ser = a.series;
  require((ser.table1 == 0) == (ser.table2 == 0) &&
              (ser.table1 == 0 || (ser.profiles != 0 && ser.profile_len >= 2 && ser.report != 0 &&
                                   a.x1 == 0)),
          "gram_tile: Series tables need both sets, the profiles, the report and no input rows");
  require(ser.table1 == 0 || ser.fallbacks == 0 ||
              (ser.fallback_len >= 1 && ser.fallback_above >= 1.0 && ser.rules != 0 &&
               ser.marks != 0),
          "gram_tile: a Series fallback needs its records' length, fallback_above >= 1, the "
          "rules and the marks");
  require(a.prog.n_ops >= 0 && (a.prog.n_ops == 0 || a.prog.ops != 0), "gram_tile: no program");
  require(a.nngp == 0 || a.ld_nngp >= a.cols, "gram_tile: ld_nngp < cols");
  require(a.ntk == 0 || a.ld_ntk >= a.cols, "gram_tile: ld_ntk < cols");
  require(a.nngp_mirror == 0 || (a.nngp != 0 && a.ld_nngp_mirror >= a.rows),
          "gram_tile: bad nngp mirror");
  require(a.ntk_mirror == 0 || (a.ntk != 0 && a.ld_ntk_mirror >= a.rows), "gram_tile: bad ntk mirror");
  require(!a.diagonal || (a.rows == a.cols && (a.nngp == 0 || a.diag_nngp != 0) &&
                          (a.ntk == 0 || a.diag_ntk != 0)),
          "gram_tile: a diagonal tile needs rows == cols and the diagonal tables");
  use_device(device);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const bool with_ntk = a.ntk != 0;
  if (dtype == Dtype::kFloat32)
    with_ntk ? launch_tile<float, true>(a, s) : launch_tile<float, false>(a, s);
  else
    with_ntk ? launch_tile<double, true>(a, s) : launch_tile<double, false>(a, s);
}

void scale_rows(Dtype dtype, uintptr_t x, int64_t n, int64_t d, uintptr_t scale_exp, uintptr_t out,
                int device, uintptr_t stream) {
  require(n >= 0 && d >= 0, "scale_rows: negative size");
  if (n == 0 || d == 0) return;
  require(x != 0 && scale_exp != 0 && out != 0, "scale_rows: null pointer");
  use_device(device);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const unsigned blocks = unsigned(std::min<int64_t>((n * d + 255) / 256, 65535));
  if (dtype == Dtype::kFloat32)
    scale_rows_kernel<float><<<blocks, 256, 0, s>>>(as_ptr<const float>(x), n, d,
                                                    as_ptr<const int32_t>(scale_exp), as_ptr<float>(out));
  else
    scale_rows_kernel<double><<<blocks, 256, 0, s>>>(as_ptr<const double>(x), n, d,
                                                     as_ptr<const int32_t>(scale_exp), as_ptr<double>(out));
  NTKFAST_CUDA_CHECK_LAUNCH("scale_rows_kernel");
}

void store_row(Dtype dtype, uintptr_t src, int64_t n, uintptr_t out, int device, uintptr_t stream) {
  require(n >= 0, "store_row: negative size");
  if (n == 0) return;
  require(src != 0 && out != 0, "store_row: null pointer");
  use_device(device);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 65535));
  if (dtype == Dtype::kFloat32)
    store_row_kernel<float><<<blocks, 256, 0, s>>>(as_ptr<const double>(src), n, as_ptr<float>(out));
  else
    store_row_kernel<double><<<blocks, 256, 0, s>>>(as_ptr<const double>(src), n, as_ptr<double>(out));
  NTKFAST_CUDA_CHECK_LAUNCH("store_row_kernel");
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) v = 0;
  (void)cudaGetLastError();
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) v = 0;
  (void)cudaGetLastError();
  return v;
}

std::string probe(int device) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  (void)cudaGetLastError();
  if (err == cudaErrorInsufficientDriver) {
    const int driver = driver_version();
    const std::string built = version_string(runtime_version());
    if (driver == 0) return "no NVIDIA driver found (the CUDA engine, built with CUDA " + built + ", needs one)";
    return "the NVIDIA driver supports CUDA " + version_string(driver) + ", older than the CUDA " +
           built + " the engine was built with: update the driver";
  }
  if (err != cudaSuccess) return "no usable CUDA device: " + detail::describe(err);
  if (count == 0) return "no CUDA device";
  if (device < 0 || device >= count)
    return "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
           " device(s))";
  try {
    use_device(device);
    cudaFuncAttributes attributes;
    const cudaError_t image = cudaFuncGetAttributes(&attributes, tile_kernel<double, true, false>);
    (void)cudaGetLastError();
    if (image != cudaSuccess) {
      cudaDeviceProp prop;
      std::string cc = "unknown";
      if (cudaGetDeviceProperties(&prop, device) == cudaSuccess)
        cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
      (void)cudaGetLastError();
      return "the CUDA engine has no kernel for this GPU (compute capability " + cc +
             "; built for architectures " NTKFAST_CUDA_ARCHS "; rebuild with "
             "-Ccmake.define.NTKFAST_CUDA_ARCHITECTURES=...): " + detail::describe(image);
    }
  } catch (const CudaError& error) {
    return error.what();
  }
  return "";
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  const cudaError_t err = cudaGetDeviceProperties(&prop, device);
  (void)cudaGetLastError();
  if (err != cudaSuccess) return "unavailable: " + detail::describe(err);
  return std::string(prop.name) + " (compute capability " + std::to_string(prop.major) + "." +
         std::to_string(prop.minor) + ", " + std::to_string(prop.totalGlobalMem >> 20) + " MiB)";
}

std::string pack_ops(const std::vector<LayerOp>& ops) {
  std::string bytes(ops.size() * sizeof(LayerOp), '\0');
  if (!ops.empty()) std::memcpy(&bytes[0], ops.data(), bytes.size());
  return bytes;
}

}  // namespace cuda
}  // namespace ntkfast
