// band_product.hpp -- products with a stored kernel matrix, one band of rows at a time.
//
// A stored kernel (ntkfast.KernelOperator with storage 'memory' or 'file') is read once per
// product: the float32 or float64 entries are widened in registers and every sum runs in float64,
// so a float32 matrix costs half the memory traffic of a float64 one and no float64 copy.
// A symmetric matrix is stored as the bands of its upper triangle; each band then serves both
// its own rows and, mirrored, the rows of the columns right of its diagonal block.
#pragma once

#include <cstdint>

namespace ntkfast {

// k vectors stored transposed (k x n arrays with the given row strides, so each vector is
// contiguous). v_cols / out_cols point at the band's first column, v_rows / out_rows at its first
// row; out_rows == nullptr skips the row sums, and the mirrored updates need v_rows and out_cols.
struct BandVectors {
  int64_t k = 0;
  const double* v_cols = nullptr;
  int64_t ld_v_cols = 0;
  const double* v_rows = nullptr;
  int64_t ld_v_rows = 0;
  double* out_rows = nullptr;
  int64_t ld_out_rows = 0;
  double* out_cols = nullptr;
  int64_t ld_out_cols = 0;
};

// One band B (rows x cols, row-major, leading dimension ld) of a kernel matrix K:
//   if out_rows:    out_rows[j][r] += sum_c B[r][c] * v_cols[j][c]          r < rows
//   for c >= mirror: out_cols[j][c] += sum_r B[r][c] * v_rows[j][r]         (mirror < cols)
// The mirrored outputs must not overlap out_rows. Sums run in float64 whatever T is; threads
// split the columns, and the result does not depend on their timing (the mirrored outputs not
// even on their number).
template <class T>
void band_matmat(const T* band, int64_t rows, int64_t cols, int64_t ld, const BandVectors& vec,
                 int64_t mirror, int num_threads);

// One band of a symmetric K stored as upper bands: rows [r0, r0 + rows) and columns
// [r0, r0 + cols), cols >= rows, so that its first `rows` columns are its diagonal block, of
// which only the upper triangle is read (each entry once: K_rc v_c and, for c > r, K_rc v_r).
//   out[j][i] += (K V)[r0 + i][j] restricted to the band,   i < cols
// v and out hold k vectors transposed (k x n, row strides ld_v / ld_out), from index r0 on.
template <class T>
void symmetric_band_matmat(const T* band, int64_t rows, int64_t cols, int64_t ld, int64_t k,
                           const double* v, int64_t ld_v, double* out, int64_t ld_out,
                           int num_threads);

}  // namespace ntkfast
