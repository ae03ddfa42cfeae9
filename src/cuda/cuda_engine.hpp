// cuda_engine.hpp -- the host interface of the CUDA Gram engine (cuda_engine.cu).
//
// Plain C++ with no CUDA header, so the host code that drives it (gram_plan.cu's GramPlan, the
// pybind11 binding) needs no CUDA header either. Device memory is never allocated here: every
// buffer is passed as a raw device address, with a device ordinal and a cudaStream_t (all as
// integers). All work is enqueued on that stream; only row_stats waits for it (it must report
// non-finite variances before any tile is computed).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "ntkfast/errors.hpp"
#include "ntkfast/program.hpp"

namespace ntkfast {
namespace cuda {

// A failed CUDA call; the message names the call, the CUDA error and file:line.
class CudaError : public std::runtime_error {
 public:
  CudaError(const std::string& message, int code) : std::runtime_error(message), code(code) {}
  int code;
};

// cudaErrorMemoryAllocation (the binding raises MemoryError).
class CudaOutOfMemory : public CudaError {
 public:
  using CudaError::CudaError;
};


enum class Dtype { kFloat32, kFloat64 };
Dtype parse_dtype(const std::string& name);  // "float32" | "float64", else std::invalid_argument

// A program in device memory: n_ops LayerOps (program.hpp layout) and the pool of their tables.
struct DeviceProgram {
  uintptr_t ops = 0;
  int32_t n_ops = 0;
  uintptr_t pool = 0;
};

// Per-row tables in device memory, as on the CPU (cpu_kernels.hpp): q[k * stride + i] is the
// variance of row i entering op k (k = 0..n_ops, the last being the NNGP diagonal), sq its square
// root, ntk_diag[i] = Θ(x_i, x_i) (0 when the NTK is not needed).
struct DeviceRowTables {
  uintptr_t q = 0;
  uintptr_t sq = 0;
  int64_t stride = 0;
  uintptr_t ntk_diag = 0;
  // Optional int32[n] (0: not wanted): row_step.hpp's gemm_scale_exponent of each row, 0 for rows
  // inside the GEMM's safe range. Where any is nonzero, GEMM x_i·2^-e_i and pass these to gram_tile.
  uintptr_t scale_exp = 0;
  // Optional int32[(n_ops + 1) * stride] (0: not given), the layout of q: filled with row_step.hpp's
  // rescale exponents. Given, homogeneous ops (ReLU & co.) take any normal variance exactly, as in
  // the CPU engine; not given, variances entering them must lie in [2^-500, 2^500] or raise.
  // Pass it to gram_tile (rescale1/rescale2) for every tile of this point set.
  uintptr_t rescale = 0;
  // Required where the program has Series ops: their per-row tables (engine.hpp SeriesTables) in
  // the layout of q (table row r of row i at r * stride + i); the row pass takes the rows' own
  // E[φ²], E[φ'²] from them (series_math.hpp's series_row_step).
  uintptr_t series = 0;
};

// What row_stats found besides failures.
struct RowStatsFlags {
  bool any_scaled = false;    // some scale_exp[i] != 0: GEMM scaled copies of the rows
  bool any_rescaled = false;  // some rescale entry != 0: pass the rescale table to the tiles
};

// Fills the tables for rows x[i * ld_x + 0 .. d) (dtype float32/float64): the layer-0 variance
// ||x_i||² / d summed in double, then row_step.hpp's row_step for every op (the CPU engine's).
// status: two uint64 of device scratch (kRowStatsStatusBytes). Synchronizes `stream`, then throws
// NonFiniteKernel (with `underflow` set for a too-small nonzero variance) for the first row outside
// row_step.hpp's range policy in the CPU engine's order (op-major from the input variance, then
// row; NTK diagonal last).
constexpr int64_t kRowStatsStatusBytes = 16;
RowStatsFlags row_stats(Dtype dtype, uintptr_t x, int64_t n, int64_t d, int64_t ld_x,
                        const DeviceProgram& prog, const DeviceRowTables& tables, uintptr_t status,
                        int point_set, int device, uintptr_t stream);

// out[i * d + k] = x[i * d + k] · 2^-scale_exp[i] (exact: a power of two), the GEMM's copy of a
// point set with rows outside its safe range (as the CPU engine's scaled_rows). Enqueued.
void scale_rows(Dtype dtype, uintptr_t x, int64_t n, int64_t d, uintptr_t scale_exp, uintptr_t out,
                int device, uintptr_t stream);

// out[i] = T(src[i]) for i < n (a float64 table row to an output of the storage type). Enqueued.
void store_row(Dtype dtype, uintptr_t src, int64_t n, uintptr_t out, int device, uintptr_t stream);

// One tile of a Gram matrix (row-major, element type = dtype): rows [0, rows) of point set 1
// against columns [0, cols) of point set 2, given their input Gram (x_i · x'_j, not yet / d).
// Every output pointer may be 0. Entry (i, j) goes to nngp[i * ld_nngp + j] and, when
// nngp_mirror != 0, also to nngp_mirror[j * ld_nngp_mirror + i] (likewise for the NTK).
// diagonal: a diagonal tile of a symmetric Gram (rows == cols): only j > i is computed (and
// mirrored), j == i is copied from diag_nngp / diag_ntk (the per-row recursion), j < i is left to
// the mirror. Enqueued on `stream`; does not wait.
struct TileArgs {
  uintptr_t gram = 0;
  int64_t ld_gram = 0;
  int64_t rows = 0, cols = 0;
  double inv_d = 0.0, snap_tol = 0.0;
  DeviceProgram prog;
  uintptr_t q1 = 0, sq1 = 0;  // tables of point set 1, offset to the tile's first row
  int64_t stride1 = 0;
  uintptr_t q2 = 0, sq2 = 0;  // tables of point set 2, offset to the tile's first column
  int64_t stride2 = 0;
  uintptr_t nngp = 0, nngp_mirror = 0, ntk = 0, ntk_mirror = 0;
  int64_t ld_nngp = 0, ld_nngp_mirror = 0, ld_ntk = 0, ld_ntk_mirror = 0;
  bool diagonal = false;
  uintptr_t diag_nngp = 0, diag_ntk = 0;  // offset to the tile's first row
  // Optional (both or neither) int32 scale exponents (DeviceRowTables::scale_exp) offset to the
  // tile's first row / column: gram then holds (x_i 2^-e1[i]) · (x'_j 2^-e2[j]).
  uintptr_t scale_exp1 = 0, scale_exp2 = 0;
  // Optional rescale tables (DeviceRowTables::rescale, either may be 0) offset to the tile's first
  // row / column, with the strides stride1 / stride2.
  uintptr_t rescale1 = 0, rescale2 = 0;
  // Optional (both or neither) input rows, C-contiguous with d features, offset to the tile's
  // first row / column: entries whose input |ρ| is near 1 are recomputed from them
  // (exact_pair.hpp, as the CPU engine). 0: the ordinary path only.
  uintptr_t x1 = 0, x2 = 0;
  int64_t d = 0;
  uintptr_t near_flag = 0;  // with x1, x2: 4 bytes of device scratch for the tile's kernels
  // Programs with Series ops (series_math.hpp): the kernels for them run instead (never with
  // x1, x2: as on the CPU, Series ops have no exact near-parallel form).
  struct Series {
    uintptr_t table1 = 0, table2 = 0;  // DeviceRowTables::series, offset to the tile's first
                                       // row / column (strides stride1 / stride2); 0: no Series op
    uintptr_t profiles = 0;            // per op (its p1): profile_len doubles (engine.hpp)
    int64_t profile_len = 0;
    uintptr_t fallbacks = 0;           // per op: a fallback record (series_fallback.hpp); 0: none
    int64_t fallback_len = 0;
    double fallback_above = 1.0;
    uintptr_t rules = 0;               // with fallbacks: the FallbackRules (series_fallback.hpp)
    // With fallbacks: one bit per entry of the largest tile (u32 words), all 0 before the call
    // and left so; the entries to redo by quadrature are marked there.
    uintptr_t marks = 0;
    // kSeriesReportBytes of device memory: u64 [0] the largest tail bound left (the bits of a
    // double >= 0, combined by atomicMax), [1] the entries the fallback computed (summed over the
    // tiles until reset), then the tile's u32 "some entry marked" flag.
    uintptr_t report = 0;
  } series;
};
constexpr int64_t kSeriesReportBytes = 24;
void gram_tile(Dtype dtype, const TileArgs& args, int device, uintptr_t stream);

// The largest tile edge gram_tile accepts (grid limits).
int64_t max_tile_rows();

// An empty string if this build's kernels can run on `device`, else why not.
std::string probe(int device);

// CUDA runtime (linked statically) and driver versions as 1000 * major + 10 * minor; the driver
// version is 0 where no driver is installed.
int runtime_version();
int driver_version();

// "name (compute capability X.Y, N MiB)" of a device, or a description of the error.
std::string device_name(int device);

// The bytes of a LayerOp array (program.hpp layout), to be copied to the device by the caller.
std::string pack_ops(const std::vector<LayerOp>& ops);

}  // namespace cuda
}  // namespace ntkfast
