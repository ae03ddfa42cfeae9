// band_product.cpp -- see band_product.hpp.
//
// Memory-bound by design: each entry of the band is loaded once, widened to float64 and used for
// both its row sum and its mirrored column update. The per-strip kernel is compiled for AVX-512,
// AVX2 and baseline x86-64 and picked at load time (GCC/Clang target_clones), like the engine's
// own kernels, without -march in what ships.
#include "ntkfast/band_product.hpp"

#include <algorithm>
#include <vector>

#include "ntkfast/engine.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace ntkfast {
namespace {

// Columns per task: a strip of k vectors and their outputs (2 · k · 512 doubles) stays in L2
// while the band's rows stream past.
constexpr int64_t kStrip = 512;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
#define NTKFAST_BAND_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NTKFAST_BAND_CLONES
#endif

// One strip of `width` columns: row sums into acc (rows x k) and, from column `mirror` on, the
// mirrored column updates. Pointers are at the strip's first column. Rows go four at a time, so
// that each load and store of a mirrored output serves four entries of the band.
template <class T>
inline __attribute__((always_inline)) void strip_kernel(const T* band, int64_t rows, int64_t ld,
                                                        int64_t width, int64_t mirror,
                                                        const BandVectors& vec, double* acc) {
  const int64_t k = vec.k;
  const bool mirrored = mirror < width;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T* b0 = band + r * ld;
    const T* b1 = b0 + ld;
    const T* b2 = b1 + ld;
    const T* b3 = b2 + ld;
    for (int64_t j = 0; j < k; ++j) {
      double* o = mirrored ? vec.out_cols + j * vec.ld_out_cols : nullptr;
      const double* w = mirrored ? vec.v_rows + j * vec.ld_v_rows + r : nullptr;
      const double w0 = w ? w[0] : 0.0, w1 = w ? w[1] : 0.0, w2 = w ? w[2] : 0.0,
                   w3 = w ? w[3] : 0.0;
      if (acc == nullptr) {
#pragma omp simd
        for (int64_t c = mirror; c < width; ++c)
          o[c] += (double(b0[c]) * w0 + double(b1[c]) * w1) +
                  (double(b2[c]) * w2 + double(b3[c]) * w3);
        continue;
      }
      const double* v = vec.v_cols + j * vec.ld_v_cols;
      double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t c = 0; c < mirror; ++c) {
        const double vc = v[c];
        s0 += double(b0[c]) * vc;
        s1 += double(b1[c]) * vc;
        s2 += double(b2[c]) * vc;
        s3 += double(b3[c]) * vc;
      }
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t c = mirror; c < width; ++c) {
        const double k0 = double(b0[c]), k1 = double(b1[c]), k2 = double(b2[c]),
                     k3 = double(b3[c]), vc = v[c];
        s0 += k0 * vc;
        s1 += k1 * vc;
        s2 += k2 * vc;
        s3 += k3 * vc;
        o[c] += (k0 * w0 + k1 * w1) + (k2 * w2 + k3 * w3);
      }
      double* a = acc + r * k + j;
      a[0] += s0, a[k] += s1, a[2 * k] += s2, a[3 * k] += s3;
    }
  }
  for (; r < rows; ++r) {  // the last rows of a band, one at a time
    const T* b = band + r * ld;
    for (int64_t j = 0; j < k; ++j) {
      double* o = mirrored ? vec.out_cols + j * vec.ld_out_cols : nullptr;
      const double wr = mirrored ? vec.v_rows[j * vec.ld_v_rows + r] : 0.0;
      if (acc == nullptr) {
#pragma omp simd
        for (int64_t c = mirror; c < width; ++c) o[c] += double(b[c]) * wr;
        continue;
      }
      const double* v = vec.v_cols + j * vec.ld_v_cols;
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < width; ++c) s += double(b[c]) * v[c];
      if (mirrored) {
#pragma omp simd
        for (int64_t c = mirror; c < width; ++c) o[c] += double(b[c]) * wr;
      }
      acc[r * k + j] += s;
    }
  }
}

// float32: eight rows at a time are widened into a float64 buffer in L1 first (a plain loop
// that vectorises), then run through the float64 kernel -- mixing the widening into the
// reductions keeps the compiler from vectorising them.
NTKFAST_BAND_CLONES void strip(const float* band, int64_t rows, int64_t ld, int64_t width,
                               int64_t mirror, const BandVectors& vec, double* acc) {
  constexpr int64_t kChunk = 8;
  alignas(64) double wide[kChunk * kStrip];
  for (int64_t r0 = 0; r0 < rows; r0 += kChunk) {
    const int64_t n = std::min(kChunk, rows - r0);
    for (int64_t r = 0; r < n; ++r) {
      const float* from = band + (r0 + r) * ld;
      double* to = wide + r * kStrip;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) to[c] = double(from[c]);
    }
    BandVectors at = vec;
    if (at.v_rows != nullptr) at.v_rows += r0;
    strip_kernel(wide, n, kStrip, width, mirror, at, acc != nullptr ? acc + r0 * vec.k : nullptr);
  }
}

NTKFAST_BAND_CLONES void strip(const double* band, int64_t rows, int64_t ld, int64_t width,
                               int64_t mirror, const BandVectors& vec, double* acc) {
  strip_kernel(band, rows, ld, width, mirror, vec, acc);
}

}  // namespace

template <class T>
void band_matmat(const T* band, int64_t rows, int64_t cols, int64_t ld, const BandVectors& vec,
                 int64_t mirror, int num_threads) {
  const bool rows_product = vec.out_rows != nullptr;
  const int64_t k = vec.k;
  if (rows <= 0 || cols <= 0 || k <= 0) return;
  mirror = std::clamp<int64_t>(mirror, 0, cols);
  if (!rows_product && mirror == cols) return;
  const int64_t strips = (cols + kStrip - 1) / kStrip;
  const int threads = int(std::min<int64_t>(resolve_threads(num_threads), strips));
  // Each thread's row sums, added in thread order afterwards: the result does not depend on
  // which thread finished first.
  std::vector<double> acc(rows_product ? size_t(threads) * size_t(rows * k) : 0, 0.0);

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#if defined(_OPENMP)
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    double* my_acc = rows_product ? acc.data() + size_t(t) * size_t(rows * k) : nullptr;
#pragma omp for schedule(static)
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t c0 = s * kStrip;
      const int64_t width = std::min(kStrip, cols - c0);
      const int64_t strip_mirror = std::clamp<int64_t>(mirror - c0, 0, width);
      BandVectors at = vec;  // the strip's columns
      if (rows_product) at.v_cols += c0;
      if (strip_mirror < width) at.out_cols += c0;
      strip(band + c0, rows, ld, width, strip_mirror, at, my_acc);
    }
  }

  if (!rows_product) return;
  for (int t = 0; t < threads; ++t) {
    const double* a = acc.data() + size_t(t) * size_t(rows * k);
    for (int64_t j = 0; j < k; ++j)
      for (int64_t r = 0; r < rows; ++r) vec.out_rows[j * vec.ld_out_rows + r] += a[r * k + j];
  }
}

template void band_matmat<float>(const float*, int64_t, int64_t, int64_t, const BandVectors&,
                                 int64_t, int);
template void band_matmat<double>(const double*, int64_t, int64_t, int64_t, const BandVectors&,
                                  int64_t, int);

}  // namespace ntkfast
