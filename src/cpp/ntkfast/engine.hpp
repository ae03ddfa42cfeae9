// engine.hpp -- the CPU Gram engine: tiled NNGP/NTK matrices and per-row variances.
//
// A C++17 library with no Python in it. The input Gram of each tile comes from a BLAS GEMM the
// caller supplies (Fortran ABI, e.g. SciPy's or NumPy's OpenBLAS), called single-threaded per tile
// from OpenMP threads; the layer program then runs on the tile while it is in cache (cpu_kernels).
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_kernels.hpp"
#include "ntkfast/errors.hpp"
#include "ntkfast/program.hpp"

namespace ntkfast {

// A validated, owned layer program.
// Most ops in one Program (ntkfast.MLP's depth limit follows from it, as _core.MAX_OPS).
constexpr int64_t kMaxOps = 1000000;

class Program {
 public:
  Program(std::vector<LayerOp> ops, std::vector<double> pool);
  ProgramView view() const { return {ops_.data(), int32_t(ops_.size()), pool_.data()}; }
  int32_t n_ops() const { return int32_t(ops_.size()); }

 private:
  std::vector<LayerOp> ops_;
  std::vector<double> pool_;
};

// Fortran BLAS ?gemm (LP64): C = alpha op(A) op(B) + beta C, column-major.
using DgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*,
                         const double*, const int*, const double*, const int*, const double*, double*,
                         const int*);
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*,
                         const int*);

struct Blas {
  DgemmFn dgemm = nullptr;
  SgemmFn sgemm = nullptr;
};

// Called by one thread between tiles, at most every poll_interval seconds (and once at the end);
// returning false stops the computation, which then throws Cancelled. No worker stores into the
// outputs while it runs, and none stores after it returned false, so the callback may invalidate
// the output buffers as long as it then returns false.
using PollFn = std::function<bool(int64_t tiles_done, int64_t tiles_total)>;

// Thread counts above this are rejected (std::invalid_argument): each thread owns tile buffers.
constexpr int kMaxThreads = 4096;

// The per-row coefficients of a program's Series ops for one point set (program.hpp): `rows` rows
// of n values each, row-major; op k's rows start at its p0, series_table_rows(degree) of them:
// E[φ(u)²] and E[φ'(u)²] at the row's variance (its exact diagonal), then the Hermite coefficients
// A_0..A_K of φ(√q z) and B_0..B_K of φ'(√q z) (normalised, He_k/√k!).
struct SeriesTables {
  const double* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;  // n, or row_stride(n): then used in place (its padding must be harmless:
                     // E[φ²] = E[φ'²] = 1, coefficients 0), else copied into that layout
};

// The padded row length of the per-row tables for n rows (multiples of the kernels' chunk, plus
// one chunk the vector loads may read past the last row).
int64_t row_stride(int64_t n);

// What the tiles need beyond the tables: per Series op (its p1), a tail profile of
// profile_len >= degree + 2 values, profile[k] a bound on the tail Σ_{m>=k} of both series
// (A and B) in units of the tolerated error, over the rows of both point sets. A tile sums,
// per chunk of entries, the fewest terms n whose bound |ρ|^n profile[n] is <= 1; where all
// degree + 1 terms leave more, the largest such bound is reported in max_tail_bound.
// Optionally, per Series op, a fallback record (series_fallback.hpp): an entry whose own bound
// exceeds fallback_above (>= 1) is then computed by 2-D quadrature instead, and its bound is not
// reported.
struct SeriesOptions {
  SeriesTables set1, set2;  // set2 unused for a symmetric Gram
  const double* profiles = nullptr;  // profile_count x profile_len, row-major
  int64_t profile_count = 0;
  int64_t profile_len = 0;
  const double* fallbacks = nullptr;  // fallback_count x fallback_len, row-major; may be null
  int64_t fallback_count = 0;
  int64_t fallback_len = 0;
  double fallback_above = 1.0;
  double* max_tail_bound = nullptr;  // out, may be null
  int64_t* fallback_pairs = nullptr;  // out, may be null: entries computed by the fallback
};

// A block of entries entering a Callback op (program.hpp), whose dual kernels the caller
// evaluates, in place: c <- K(c, q1, q2) and, where t is given, t <- t * dK/dc (c, q1, q2), with
// q1, q2 the variances of each entry's row and column. c and t are rows x cols, row-major with
// leading dimension ld; q1 has rows values and q2 cols values, or q2 is null: a column of the
// rows' own entries (cols == 1, c = q1 = q2 entry by entry: the diagonal). The engine calls it
// from its worker threads, one block at a time per thread (a tile, or all rows of a point set);
// what it throws stops the computation and is rethrown by compute_gram/compute_diagonal.
struct DualKernelBlock {
  int32_t index;  // the op's p0
  int64_t rows, cols, ld;
  double* c;
  double* t;  // null when the NTK is not computed
  const double* q1;
  const double* q2;
};
using DualKernelFn = std::function<void(const DualKernelBlock&)>;

struct GramOptions {
  int num_threads = 0;       // <= 0: OpenMP's default; in a forked child always 1
  int64_t tile = 0;          // <= 0: default_tile(n_features); larger than the problem: clamped
  PollFn poll;               // may be empty
  double poll_interval = 0.1;
  SeriesOptions series;      // required when the program has Series ops
  DualKernelFn dual_kernels; // required when the program has Callback ops
  // Write the outputs one row panel (a tile's rows, all columns) at a time, each row once and
  // in order, instead of tile by tile. For file-backed outputs (np.memmap): Linux then maps
  // their page cache a large folio per fault instead of a 4 KiB page per fault, and no page is
  // dirtied twice (benchmarks/large_gram.py). Costs a panel buffer per output (tile x n2) and,
  // for a symmetric Gram, a read of the rows above the panel; ignored where the buffers would
  // exceed kPanelBudget.
  bool panel_writes = false;
};

constexpr int64_t kPanelBudget = int64_t(1) << 30;

class Cancelled : public std::exception {
 public:
  const char* what() const noexcept override { return "computation cancelled"; }
};


// The output matrices are row-major n1 x n2 with the given leading dimensions; either may be null.
// x2 == nullptr computes the symmetric Gram of x1 (upper-triangle tiles, mirrored, exactly
// symmetric); the diagonal then equals diagonal() to the last bit.
template <class T>
void compute_gram(const Program& prog, const T* x1, int64_t n1, const T* x2, int64_t n2,
                  int64_t n_features, T* nngp, int64_t ld_nngp, T* ntk, int64_t ld_ntk,
                  const Blas& blas, const GramOptions& options);

// Per-row NNGP variance and NTK diagonal in O(n · (n_features + n_ops)).
template <class T>
void compute_diagonal(const Program& prog, const T* x, int64_t n, int64_t n_features, T* nngp,
                      T* ntk, int num_threads, SeriesTables series = {},
                      const DualKernelFn& dual_kernels = {});

// The tile edge used when GramOptions::tile is not set: large enough for GEMM efficiency, small
// enough that one tile's GEMM takes well under the poll interval.
int64_t default_tile(int64_t n_features);

// The relative tolerance of the input-correlation snap for a storage type (layer_math.hpp).
template <class T>
double snap_tolerance(int64_t n_features);

// CPU kernel dispatch: the best variant this CPU supports, or the one named by
// NTKFAST_CPU_DISPATCH / select_cpu_kernels ("generic", "avx2", "avx512").
const CpuKernels& cpu_kernels();
void select_cpu_kernels(const std::string& name);  // throws std::invalid_argument
std::vector<std::string> supported_cpu_kernels();
std::string cpu_features();

bool have_openmp();
int max_threads();

// True in a process forked from one that had started OpenMP threads: libgomp's thread pool does not
// survive fork(), so the engine then runs on the calling thread only, without entering a parallel
// region (a multi-threaded one would wait forever for the parent's threads).
bool in_forked_child();

// The thread count a parallel region of the engine uses: requested > 0 as given (at most
// kMaxThreads, else std::invalid_argument), otherwise OpenMP's default; 1 in a forked child.
// Every parallel region of the library goes through it, so that fork() is detected.
int resolve_threads(int requested);

}  // namespace ntkfast
