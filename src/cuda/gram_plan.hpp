// gram_plan.hpp -- the CUDA engine's Gram computation: a plan owning the device workspace layout,
// the per-row pass and the tile loop (GEMM, epilogue, streaming to host outputs).
//
// Plain C++, no CUDA header (the binding is compiled by the host compiler alone). Memory comes from
// the caller (CuPy's pools, python/ntkfast/_cuda_backend.py): the plan says how many bytes it needs
// (workspace_bytes: device; pinned_bytes: page-locked host; scaled_bytes after row_stats: device),
// the caller allocates them and passes their addresses, and the plan places everything inside:
//
//   workspace   program ops | program pool | status (2 x u64)
//               per point set (one for a symmetric Gram): q, sq (f64, (n_ops+1) x stride),
//               NTK diagonal (f64, stride), GEMM scale exponents (i32, stride),
//               rescale exponents (i32, (n_ops+1) x stride),
//               Series tables (f64, series_rows x stride)                 Series ops only
//               Series: tail profiles, fallback records, FallbackRules,  Series ops only
//               report (kSeriesReportBytes), fallback marks (a bit per entry of a tile)
//               GEMM buffer (storage type, tile x tile)            unless OutputKind::kNone
//               2 device staging slots (slot_elements each)         host outputs only
//   scaled      x_i · 2^-e_i copies of the point sets that have rows outside the GEMM's safe range
//   pinned      2 pinned staging slots (slot_elements each)         host outputs only
//
// Each region starts at a multiple of 256 bytes. Everything runs on the caller's stream (a
// cudaStream_t), plus, for host outputs, a copy stream the plan creates and destroys per run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuda_engine.hpp"
#include "ntkfast/series_fallback.hpp"
#include "tile_schedule.hpp"

namespace ntkfast {
namespace cuda {

struct PlanSpec {
  std::string ops;            // the packed LayerOp array (pack_ops), validated by the caller
  std::vector<double> pool;   // the program's table pool
  Dtype dtype = Dtype::kFloat64;
  int64_t n1 = 0, n2 = 0, d = 0;  // n2 is ignored (= n1) for a symmetric Gram
  bool symmetric = true;
  bool nngp = true, ntk = true;
  int64_t tile = 0;           // <= 0: choose_tile's default
  OutputKind outputs = OutputKind::kDevice;
  int device = 0;
  int64_t free_bytes = 0;     // free device memory, for the default tile (0: unknown)
  double snap_tol = 0.0;      // the input-correlation snap tolerance (the CPU engine's)
  // Programs with Series ops (series_math.hpp; engine.hpp SeriesOptions): the rows of each point
  // set's tables (0: no Series op), given to row_stats; the tail profiles, profile_count x
  // profile_len row-major; the fallback records, fallback_count x fallback_len (none: empty),
  // and the bound above which an entry takes the fallback.
  int64_t series_rows = 0;
  std::vector<double> profiles;
  int64_t profile_len = 0;
  std::vector<double> fallbacks;
  int64_t fallback_len = 0;
  double fallback_above = 1.0;
};

// A Series table of one point set on the host: rows x cols doubles, row-major, cols >= n (the
// CPU engine's padded layout is accepted as is).
struct HostSeriesTable {
  const double* data = nullptr;
  int64_t rows = 0, cols = 0;
};

struct RunArgs {
  uintptr_t x1 = 0, x2 = 0;   // device rows, C-contiguous, the storage type; x2 = 0: symmetric
  uintptr_t workspace = 0;    // the one given to row_stats
  uintptr_t scaled = 0;       // scaled_bytes() of device memory (0 when scaled_bytes() is 0)
  // Per output in the plan's order (nngp before ntk): device addresses (device outputs) or host
  // addresses (host outputs) of row-major n1 x n2 arrays of the storage type.
  uintptr_t out[kMaxOutputs] = {0, 0};
  uintptr_t pinned = 0;       // pinned_bytes() of page-locked host memory (host outputs)
  uintptr_t stream = 0;       // cudaStream_t
  uintptr_t cublas = 0;       // cublasHandle_t of this device (CuPy's); its stream, math mode and
                              // pointer mode are set for the run and restored afterwards
  LoopOptions loop;
};

class GramPlan {
 public:
  explicit GramPlan(PlanSpec spec);

  const PlanSpec& spec() const { return spec_; }
  const TileSchedule& schedule() const { return schedule_; }
  int64_t tile() const { return schedule_.tile(); }
  int n_outputs() const { return schedule_.n_outputs(); }
  int64_t workspace_bytes() const { return workspace_bytes_; }
  int64_t pinned_bytes() const { return pinned_bytes_; }
  // Bytes of the scaled copies, known after row_stats (almost always 0).
  int64_t scaled_bytes() const { return scaled_bytes_; }

  // The per-row pass of both point sets into `workspace` (copying the program there first):
  // synchronizes `stream`, throws NonFiniteKernel for the first row outside the range policy
  // (point set 1 before 2, as the CPU engine), and returns scaled_bytes().
  // With Series ops, series1 / series2 (series2 for a cross Gram only) are copied to the
  // workspace first (the series_rows of PlanSpec, checked before any CUDA call).
  int64_t row_stats(uintptr_t x1, uintptr_t x2, uintptr_t workspace, uintptr_t stream,
                    HostSeriesTable series1 = {}, HostSeriesTable series2 = {});

  // Programs with Series ops, after run: the largest tail bound the tiles left and the number of
  // entries the fallback computed (engine.hpp SeriesOptions). Synchronizes `stream`.
  struct SeriesReport {
    double max_tail_bound = 0.0;
    int64_t fallback_pairs = 0;
  };
  SeriesReport series_report(uintptr_t workspace, uintptr_t stream) const;
  bool has_series() const { return spec_.series_rows > 0; }

  // Every tile (after row_stats on the same workspace). Throws Cancelled when the poll returns
  // false; on any exception every queued kernel and copy has finished.
  void run(const RunArgs& args);

  // Per-row outputs (after row_stats): nngp[i] = q[n_ops][i], ntk[i] = Θ(x_i, x_i), either address
  // may be 0; device arrays of the storage type. Enqueued on `stream`.
  void write_diagonal(uintptr_t workspace, uintptr_t nngp, uintptr_t ntk, uintptr_t stream) const;

  // Byte offsets in the workspace (-1: absent), for the layout above.
  struct SetLayout {
    int64_t q = -1, sq = -1, ntk = -1, scale = -1, rescale = -1, series = -1;
  };
  struct Layout {
    int64_t ops = -1, pool = -1, status = -1, gemm = -1, staging = -1;
    int64_t profiles = -1, fallbacks = -1, rules = -1, report = -1, marks = -1;  // Series ops
    int64_t marks_bytes = 0;
    int64_t stride = 0;  // rows of a table
    SetLayout set[2];
  };
  const Layout& layout() const { return layout_; }

 private:
  PlanSpec spec_;
  TileSchedule schedule_;
  Layout layout_;
  int itemsize_;
  int32_t n_ops_;
  int64_t workspace_bytes_ = 0, pinned_bytes_ = 0, scaled_bytes_ = 0;
  uintptr_t stats_workspace_ = 0;  // the workspace row_stats filled (0: not yet)
  RowStatsFlags flags_[2];
  void upload_series(uintptr_t workspace, void* stream);  // profiles, records, rules; clears
  FallbackRules rules_{};  // for the fallback records (Series ops), made once per plan
};

}  // namespace cuda
}  // namespace ntkfast
