// cpu_kernels.hpp -- the interface of the per-instruction-set CPU kernels (cpu_kernels.cpp is
// compiled once per ISA; the engine picks one table at run time from the CPU's features).
#pragma once

#include <cstdint>

#include "program.hpp"

namespace ntkfast {

// Per-row variance tables: q[k * stride + i] = Σ(x_i, x_i) entering op k (k = 0..n_ops, the last
// being the NNGP diagonal), sq the square roots. Rows are padded to a multiple of kRowPad with
// harmless values so the kernels may read whole vectors past the last row.
struct RowTables {
  double* q;
  double* sq;
  int64_t stride;
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
};

struct CpuKernels {
  const char* name;
  int lanes;
  // Fills rows k = 1..n_ops of the tables from row 0, for n rows (a multiple of kRowPad);
  // ntk_diag (may be null) receives Θ(x_i, x_i).
  void (*row_pass)(ProgramView prog, int64_t n, RowTables tables, double* ntk_diag);
  void (*tile_f64)(const TileArgs<double>& args);
  void (*tile_f32)(const TileArgs<float>& args);
};

extern const CpuKernels kCpuKernelsGeneric;
#if defined(NTKFAST_HAVE_X86_DISPATCH)
extern const CpuKernels kCpuKernelsAvx2;
extern const CpuKernels kCpuKernelsAvx512;
#endif

}  // namespace ntkfast
