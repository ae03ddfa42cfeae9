// band_product.cpp -- see band_product.hpp.
//
// One vector product (k = 1) is memory-bound: each entry of the band is loaded once, widened
// to float64 in a register and used for both its row sum and its mirrored column update, so
// the band must stream at the memory's bandwidth. Each thread therefore takes one contiguous
// range of every band row (a long run the hardware prefetcher follows; strips of a few pages
// each, visited row after row, restart it at every page). Many vectors (k ~ 20) make it
// compute-bound (2 FMAs per entry and vector): a block of R rows against J vectors keeps R·J
// row sums in registers and loads each entry, vector element and output once per R·J FMAs,
// and the columns go in strips whose vectors and outputs (2 · k · width doubles) stay in L2.
//
// The strip kernel is compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time
// (GCC/Clang target_clones), like the engine's own kernels, without -march in what ships. This
// file alone is built with -ffp-contract=fast (CMakeLists.txt): its sums are plain dot
// products with no guard that depends on rounding, and contraction lets the AVX2/AVX-512 clones
// fuse each multiply-add.
#include "ntkfast/band_product.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "ntkfast/engine.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace ntkfast {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
#define NTKFAST_BAND_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NTKFAST_BAND_CLONES
#endif
#define NTKFAST_INLINE inline __attribute__((always_inline))

// Four float64 lanes: one AVX2 register (AVX-512 gets 32 of them, which the R x J blocks use;
// on Zen 4 a 512-bit FMA has the throughput of two 256-bit ones).
typedef double f64x4 __attribute__((vector_size(32)));
constexpr int64_t kLanes = 4;

NTKFAST_INLINE f64x4 load4(const double* p) {
  f64x4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// float32 entries widened in the register (GCC 12 turns this into one vcvtps2pd; from a
// __builtin_convertvector it makes two halves and an insert).
NTKFAST_INLINE f64x4 load4(const float* p) {
  return f64x4{double(p[0]), double(p[1]), double(p[2]), double(p[3])};
}
NTKFAST_INLINE void store4(double* p, f64x4 v) { std::memcpy(p, &v, sizeof v); }
NTKFAST_INLINE double sum4(f64x4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }

// Columns per strip: a strip's k vectors and k outputs take at most this many bytes, so they
// stay in L2 while the block's rows pass them J vectors at a time.
constexpr int64_t kStripBytes = 1 << 20;
// Columns a thread takes at least (fewer: fewer threads on the band).
constexpr int64_t kMinThreadColumns = 512;

// R rows x J vectors over columns [c0, c1) of one strip; the columns from `mirror` on also get
// the mirrored updates out[j][c] += sum_r B[r][c] w[j][r]. b points at the block's first row
// (column 0 of the band), v / o at the J vectors and outputs (column 0 of the band), w at the
// J vectors' entries for the block's rows; the R x J row sums (if Sums) are added to
// sums[r * k + j].
template <bool Sums, int R, int J, class T>
NTKFAST_INLINE void block(const T* b, int64_t ld, int64_t c0, int64_t mirror, int64_t c1,
                          const double* const* v, const double* const* w, double* const* o,
                          double* sums, int64_t k) {
  f64x4 acc[R][J] = {};
  double tail[R][J] = {};
  const int64_t split = std::clamp(mirror, c0, c1);
  // Row sums only (the diagonal block's own columns).
  int64_t c = Sums ? c0 : split;
  for (; c + kLanes <= split; c += kLanes) {
    f64x4 kv[R];
    for (int r = 0; r < R; ++r) kv[r] = load4(b + r * ld + c);
    for (int j = 0; j < J; ++j) {
      const f64x4 vv = load4(v[j] + c);
      for (int r = 0; r < R; ++r) acc[r][j] += kv[r] * vv;
    }
  }
  for (; c < split; ++c)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) tail[r][j] += double(b[r * ld + c]) * v[j][c];
  // Row sums and mirrored updates; the output's sum over the R rows runs in row order.
  for (; c + kLanes <= c1; c += kLanes) {
    f64x4 kv[R];
    for (int r = 0; r < R; ++r) kv[r] = load4(b + r * ld + c);
    for (int j = 0; j < J; ++j) {
      f64x4 out = load4(o[j] + c);
      for (int r = 0; r < R; ++r) out += kv[r] * w[j][r];
      if (Sums) {
        const f64x4 vv = load4(v[j] + c);
        for (int r = 0; r < R; ++r) acc[r][j] += kv[r] * vv;
      }
      store4(o[j] + c, out);
    }
  }
  for (; c < c1; ++c)
    for (int j = 0; j < J; ++j) {
      double out = o[j][c];
      for (int r = 0; r < R; ++r) {
        const double kr = double(b[r * ld + c]);
        if (Sums) tail[r][j] += kr * v[j][c];
        out += kr * w[j][r];
      }
      o[j][c] = out;
    }
  if (Sums)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) sums[r * k + j] += sum4(acc[r][j]) + tail[r][j];
}

// R rows from row r against vectors [j0, j0 + J).
template <bool Sums, int R, int J, class T>
NTKFAST_INLINE void rows_against(const T* band, int64_t ld, int64_t r, int64_t c0, int64_t mirror,
                                 int64_t c1, const BandVectors& vec, int64_t j0, double* sums) {
  const bool mirrored = mirror < c1;
  const double *v[J], *w[J];
  double* o[J];
  for (int j = 0; j < J; ++j) {
    v[j] = Sums ? vec.v_cols + (j0 + j) * vec.ld_v_cols : nullptr;
    w[j] = mirrored ? vec.v_rows + (j0 + j) * vec.ld_v_rows + r : nullptr;
    o[j] = mirrored ? vec.out_cols + (j0 + j) * vec.ld_out_cols : nullptr;
  }
  block<Sums, R, J>(band + r * ld, ld, c0, mirror, c1, v, w, o,
                    Sums ? sums + r * vec.k + j0 : nullptr, vec.k);
}

// R rows from row r against all vectors, two at a time: the rows' strip stays in cache while
// the vectors pass.
template <bool Sums, int R, class T>
NTKFAST_INLINE void rows_kernel(const T* band, int64_t ld, int64_t r, int64_t c0, int64_t mirror,
                                int64_t c1, const BandVectors& vec, double* sums) {
  int64_t j = 0;
  for (; j + 2 <= vec.k; j += 2)
    rows_against<Sums, R, 2>(band, ld, r, c0, mirror, c1, vec, j, sums);
  if (j < vec.k) rows_against<Sums, R, 1>(band, ld, r, c0, mirror, c1, vec, j, sums);
}

// The corner of R rows from row r of a triangular band (its first columns are its diagonal
// block): columns [c0, c1) within [r, r + R), where row r + i reads only columns c >= r + i
// (upper triangle) and mirrors only c > r + i.
template <int R, class T>
NTKFAST_INLINE void corner(const T* band, int64_t ld, int64_t r, int64_t c0, int64_t c1,
                           const BandVectors& vec, double* sums) {
  for (int64_t c = c0; c < c1; ++c)
    for (int i = 0; i < R && r + i <= c; ++i) {
      const double kc = double(band[(r + i) * ld + c]);
      for (int64_t j = 0; j < vec.k; ++j) {
        sums[(r + i) * vec.k + j] += kc * vec.v_cols[j * vec.ld_v_cols + c];
        if (r + i < c)
          vec.out_cols[j * vec.ld_out_cols + c] += kc * vec.v_rows[j * vec.ld_v_rows + r + i];
      }
    }
}

// R rows from row r over columns [c0, c1): a plain band's (mirrored from `mirror` on), or a
// triangular one's (the corner, then all R rows mirrored).
template <bool Sums, int R, class T>
NTKFAST_INLINE void rows_over(const T* band, int64_t ld, int64_t r, int64_t c0, int64_t mirror,
                              int64_t c1, bool triangular, const BandVectors& vec, double* sums) {
  if (triangular) {
    const int64_t full = std::clamp(r + R, c0, c1);  // where all R rows read and mirror
    corner<R>(band, ld, r, std::max(c0, r), full, vec, sums);
    c0 = mirror = full;
  }
  rows_kernel<Sums, R>(band, ld, r, c0, mirror, c1, vec, sums);
}

// Columns [c0, c1) of the band, all rows (R at a time, then four, then one by one) and all
// vectors; row sums into sums (rows x k).
template <bool Sums, int R, class T>
NTKFAST_INLINE void columns_kernel(const T* band, int64_t rows, int64_t ld, int64_t c0,
                                   int64_t mirror, int64_t c1, bool triangular,
                                   const BandVectors& vec, double* sums) {
  if (triangular) rows = std::min(rows, c1);  // rows below the columns read none of them
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    rows_over<Sums, R>(band, ld, r, c0, mirror, c1, triangular, vec, sums);
  if (R > 4 && r + 4 <= rows) {
    rows_over<Sums, 4>(band, ld, r, c0, mirror, c1, triangular, vec, sums);
    r += 4;
  }
  for (; r < rows; ++r) rows_over<Sums, 1>(band, ld, r, c0, mirror, c1, triangular, vec, sums);
}

// R: rows per block. 8 rows x 2 vectors keep 16 row sums in registers, which suits AVX-512's
// 32 vector registers; AVX2's 16 take 4 x 2.
template <int R, class T>
NTKFAST_BAND_CLONES void columns(const T* band, int64_t rows, int64_t ld, int64_t c0,
                                 int64_t mirror, int64_t c1, bool triangular,
                                 const BandVectors& vec, double* sums) {
  if (sums != nullptr)
    columns_kernel<true, R>(band, rows, ld, c0, mirror, c1, triangular, vec, sums);
  else
    columns_kernel<false, R>(band, rows, ld, c0, mirror, c1, triangular, vec, sums);
}

bool has_32_vector_registers() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  return avx512;
#else
  return false;
#endif
}

// Entries of columns [0, c) of a triangular band of the given rows: column c' holds
// min(c' + 1, rows) of them.
int64_t triangular_entries(int64_t rows, int64_t c) {
  const int64_t head = std::min(c, rows);
  return head * (head + 1) / 2 + (c - head) * rows;
}

// The product of both public entry points: a plain band (columns from `mirror` on mirrored),
// or a triangular one (symmetric_band_matmat).
template <class T>
void band_product(const T* band, int64_t rows, int64_t cols, int64_t ld, const BandVectors& vec,
                  int64_t mirror, bool triangular, int num_threads) {
  const int64_t k = vec.k;
  if (rows <= 0 || cols <= 0 || k <= 0) return;
  mirror = triangular ? 0 : std::clamp<int64_t>(mirror, 0, cols);
  const bool rows_product = vec.out_rows != nullptr;
  if (!rows_product && mirror == cols) return;
  // Without row sums only the mirrored columns are read.
  const int64_t first = rows_product ? 0 : mirror;
  const int threads = int(std::clamp<int64_t>((cols - first) / kMinThreadColumns, 1,
                                              resolve_threads(num_threads)));
  const int64_t strip = std::max<int64_t>(kStripBytes / (2 * k * int64_t(sizeof(double))), 64);
  const bool wide = has_32_vector_registers();
  // Each thread's row sums, added in thread order afterwards: the result does not depend on
  // which thread finished first.
  std::vector<double> sums(rows_product ? size_t(threads) * size_t(rows * k) : 0, 0.0);
  // Each thread's contiguous share of the columns, as many entries each (a triangular band's
  // first columns hold fewer), split at cache lines.
  std::vector<int64_t> bounds(size_t(threads) + 1, cols);
  bounds[0] = first;
  for (int t = 1; t < threads; ++t) {
    int64_t c = first + (cols - first) * t / threads;
    if (triangular) {
      const int64_t target = triangular_entries(rows, cols) * t / threads;
      int64_t lo = 0, hi = cols;  // the first c with at least `target` entries left of it
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (triangular_entries(rows, mid) < target) lo = mid + 1; else hi = mid;
      }
      c = lo;
    }
    bounds[size_t(t)] = std::clamp<int64_t>(c - c % 8, bounds[size_t(t) - 1], cols);
  }

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#if defined(_OPENMP)
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    const int64_t begin = bounds[size_t(t)], end = bounds[size_t(t) + 1];
    double* my_sums = rows_product ? sums.data() + size_t(t) * size_t(rows * k) : nullptr;
    for (int64_t c0 = begin; c0 < end; c0 += strip) {
      const int64_t c1 = std::min(c0 + strip, end);
      if (wide)
        columns<8>(band, rows, ld, c0, mirror, c1, triangular, vec, my_sums);
      else
        columns<4>(band, rows, ld, c0, mirror, c1, triangular, vec, my_sums);
    }
  }

  if (!rows_product) return;
  for (int t = 0; t < threads; ++t) {
    const double* a = sums.data() + size_t(t) * size_t(rows * k);
    for (int64_t j = 0; j < k; ++j)
      for (int64_t r = 0; r < rows; ++r) vec.out_rows[j * vec.ld_out_rows + r] += a[r * k + j];
  }
}

}  // namespace

template <class T>
void band_matmat(const T* band, int64_t rows, int64_t cols, int64_t ld, const BandVectors& vec,
                 int64_t mirror, int num_threads) {
  band_product(band, rows, cols, ld, vec, mirror, false, num_threads);
}

template <class T>
void symmetric_band_matmat(const T* band, int64_t rows, int64_t cols, int64_t ld, int64_t k,
                           const double* v, int64_t ld_v, double* out, int64_t ld_out,
                           int num_threads) {
  BandVectors vec;
  vec.k = k;
  vec.v_cols = vec.v_rows = v;
  vec.ld_v_cols = vec.ld_v_rows = ld_v;
  vec.out_rows = vec.out_cols = out;
  vec.ld_out_rows = vec.ld_out_cols = ld_out;
  band_product(band, std::min(rows, cols), cols, ld, vec, 0, true, num_threads);
}

template void band_matmat<float>(const float*, int64_t, int64_t, int64_t, const BandVectors&,
                                 int64_t, int);
template void band_matmat<double>(const double*, int64_t, int64_t, int64_t, const BandVectors&,
                                  int64_t, int);
template void symmetric_band_matmat<float>(const float*, int64_t, int64_t, int64_t, int64_t,
                                           const double*, int64_t, double*, int64_t, int);
template void symmetric_band_matmat<double>(const double*, int64_t, int64_t, int64_t, int64_t,
                                            const double*, int64_t, double*, int64_t, int);

}  // namespace ntkfast
