// cpu_kernels.hpp -- the interface of the per-instruction-set CPU kernels (cpu_kernels.cpp is
// compiled once per ISA; the engine picks one table at run time from the CPU's features).
#pragma once

#include <cstdint>

#include "ntkfast/program.hpp"

namespace ntkfast {

// Per-row variance tables: q[k * stride + i] = Σ(x_i, x_i) entering op k (k = 0..n_ops, the last
// being the NNGP diagonal), sq the square roots. Rows are padded to a multiple of kRowPad with
// harmless values so the kernels may read whole vectors past the last row.
struct RowTables {
  double* q;
  double* sq;
  int64_t stride;
  // rescale[k * stride + i]: row_step.hpp's rescale_exponent of row i entering op k where op k is
  // homogeneous, else 0. Null in a tile: no row of this point set needs rescaling (the fast path).
  int32_t* rescale = nullptr;
  // series[r * stride + i]: row r of the Series ops' tables (engine.hpp SeriesTables), padded
  // like q; null when the program has no Series op.
  const double* series = nullptr;
  // The tables from op k on, for a program segment that starts at op k (engine.cpp).
  RowTables from_op(int64_t k) const {
    return {q + k * stride, sq + k * stride, stride, rescale ? rescale + k * stride : nullptr,
            series};
  }
};

// A Series op's tail profiles and fallback records (engine.hpp SeriesOptions), and the largest
// bound a tile left.
struct SeriesTails {
  const double* profiles;
  int64_t profile_len;
  double max_bound;
  const double* fallbacks;  // null: none
  int64_t fallback_len;
  double fallback_above;
  int64_t fallback_pairs;  // entries the fallback computed (a diagonal tile's mirror not counted)
};

constexpr int64_t kRowPad = 64;

// One tile of the Gram matrix: rows [0, rows) of the first point set against cols [0, cols) of
// the second, given their input Gram. Writes the final NNGP and NTK of each entry once.
template <class T>
struct TileArgs {
  ProgramView prog;
  int64_t rows, cols;
  const T* gram;          // x_i · x'_j, row-major with leading dimension ld_gram
  int64_t ld_gram;
  double inv_d;           // 1 / n_features
  double snap_tol;        // |ρ| within snap_tol of 1 is set to ±1 (layer_math.hpp)
  RowTables rows1, rows2; // tables offset to the tile's first row / first column
  T* nngp;                // may be null
  int64_t ld_nngp;
  T* ntk;                 // may be null
  int64_t ld_ntk;
  bool strictly_upper;    // a diagonal tile of a symmetric Gram: only j > i is computed
  // When set, gram holds (x_i 2^-e1[i]) · (x'_j 2^-e2[j]) (engine.cpp, rows outside the GEMM's
  // safe range): entry (i, j) is multiplied back by 2^(e1[i] + e2[j]). Offset like rows1/rows2.
  const int32_t* scale_exp1 = nullptr;
  const int32_t* scale_exp2 = nullptr;
  // The input rows (row-major, n_features each), offset like rows1/rows2: entries whose input |ρ|
  // is near 1 are recomputed from them (exact_pair.hpp). Null: no such recomputation.
  const T* x1 = nullptr;
  const T* x2 = nullptr;
  int64_t n_features = 0;
  SeriesTails* series_tails = nullptr;  // per thread; null without Series ops
  // A program with Callback ops runs in segments (engine.cpp). A later segment starts from the
  // (c, t) an earlier one left in c_in, t_in instead of the input Gram; a segment that ends at a
  // callback leaves them in c_out, t_out instead of writing nngp, ntk (the WithNtk pass: t_out
  // set). Row-major with leading dimension ld_state, offset like the outputs; may alias.
  const double* c_in = nullptr;
  const double* t_in = nullptr;
  double* c_out = nullptr;
  double* t_out = nullptr;
  int64_t ld_state = 0;
};

struct CpuKernels {
  const char* name;
  int lanes;
  // Fills rows k = 1..n_ops of the tables from row 0, for n rows (a multiple of kRowPad), and the
  // rescale table (which must be there, zeroed); ntk_diag (may be null) holds the NTK diagonal
  // entering the program (0 for a whole one) and receives Θ(x_i, x_i).
  // Returns whether any row was rescaled.
  bool (*row_pass)(ProgramView prog, int64_t n, RowTables tables, double* ntk_diag);
  void (*tile_f64)(const TileArgs<double>& args);
  void (*tile_f32)(const TileArgs<float>& args);
};

extern const CpuKernels kCpuKernelsGeneric;
#if defined(NTKFAST_HAVE_X86_DISPATCH)
extern const CpuKernels kCpuKernelsAvx2;
extern const CpuKernels kCpuKernelsAvx512;
#endif

}  // namespace ntkfast
