// tile_schedule.hpp -- which tiles a Gram computation runs, in which order, and where each tile's
// values go; and the host-side tile loop that drives an executor through them.
//
// Pure host C++ (no CUDA header, no CUDA call): the CUDA engine's GramPlan (gram_plan.cu) runs this
// loop with an executor that enqueues GEMMs, epilogues and copies on streams, and the binding's
// test hooks (_cuda._schedule, _cuda._simulate) run the very same code on the CPU with an executor
// that emulates the kernels' contract in host memory, so the arithmetic below and the loop's
// ordering (slot reuse, throttling, polling, cancellation) are tested without a GPU
// (tests/test_cuda_driver.py).
//
// Offsets and leading dimensions are in elements. Outputs are row-major n1 x n2 (ld = n2).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <stdexcept>

namespace ntkfast {
namespace cuda {

// Where the tiles are written: CuPy arrays (device memory), host arrays (NumPy, np.memmap: through
// device staging slots and pinned host memory), or nowhere (a plan for the per-row tables only).
enum class OutputKind { kDevice, kHost, kNone };

// Default tile edge with device outputs: an 8192 x 8192 x d GEMM is well past cuBLAS's efficient
// size; capped so that the GEMM buffer takes at most a quarter of the free device memory.
constexpr int64_t kDeviceTile = 8192;
// Bytes of one staging slot (device and pinned host; two of each) with host outputs, at most.
constexpr int64_t kStagingSlotBytes = int64_t(256) << 20;
// Default tiles are multiples of this (and at least this).
constexpr int64_t kTileGranule = 256;
// The loop's poll interval (seconds), as the CPU engine's GramOptions::poll_interval.
constexpr double kPollInterval = 0.1;

inline int64_t isqrt64(int64_t v) {
  if (v <= 0) return 0;
  int64_t r = 0;
  for (int64_t bit = int64_t(1) << 31; bit > 0; bit >>= 1)
    if ((r + bit) <= v / (r + bit)) r += bit;
  return r;
}

// The tile edge: `requested` if > 0, else the default for the output kind; never more than the
// larger side of the Gram (a bigger tile would only allocate) nor than max_rows (grid limits).
inline int64_t choose_tile(int64_t requested, int64_t n1, int64_t n2, int itemsize, OutputKind kind,
                           int n_outputs, bool symmetric, int64_t free_bytes, int64_t max_rows) {
  int64_t tile = requested;
  if (tile <= 0) {
    if (kind == OutputKind::kHost) {
      const int64_t per_entry = int64_t(std::max(n_outputs, 1)) * (symmetric ? 2 : 1) * itemsize;
      int64_t fitting = kStagingSlotBytes / per_entry;
      // free_bytes > 0 (known): the two staging slots and the GEMM buffer take at most half of it,
      // so a nearly full GPU (another process, a CuPy pool limit) still streams, in smaller tiles.
      if (free_bytes > 0) fitting = std::min(fitting, free_bytes / 2 / (2 * per_entry + itemsize));
      tile = std::max(kTileGranule, isqrt64(fitting) / kTileGranule * kTileGranule);
    } else {
      const int64_t budget = std::max<int64_t>(free_bytes / 4, 1);
      tile = std::min(kDeviceTile,
                      std::max(kTileGranule, isqrt64(budget / itemsize) / kTileGranule * kTileGranule));
    }
  }
  return std::max<int64_t>(1, std::min({tile, std::max(n1, n2), max_rows}));
}

// One output's destination for a tile: entry (i, j) of the tile (0 <= i < rows, 0 <= j < cols)
// goes to base[offset + i * ld + j] and, when mirror_offset >= 0, also to
// base[mirror_offset + j * mirror_ld + i], where base is the output (device outputs) or the tile's
// staging slot (host outputs). A diagonal tile (symmetric Gram, ti == tj) writes only j > i
// through both (and j == i from the per-row tables): its mirror is the same square.
struct TileTarget {
  int64_t offset = 0, ld = 0;
  int64_t mirror_offset = -1, mirror_ld = 0;
};

// A block of a staging slot, rows x cols with leading dimension cols (contiguous), that lands in
// out[row0 : row0 + rows, col0 : col0 + cols] (host outputs only). The device-to-host copy moves
// it to the same offset of the pinned slot.
struct StagedBlock {
  int64_t offset = 0, rows = 0, cols = 0, row0 = 0, col0 = 0;
};

constexpr int kMaxOutputs = 2;

struct TileStep {
  int64_t index = 0;                 // position in the schedule
  int64_t ti = 0, tj = 0;            // tile coordinates
  int64_t i0 = 0, j0 = 0;            // first row / column
  int64_t rows = 0, cols = 0;
  bool diagonal = false;
  int slot = -1;                     // staging slot (host outputs), else -1
  TileTarget target[kMaxOutputs];    // per output, in the plan's order (nngp before ntk)
  StagedBlock staged[kMaxOutputs][2];  // host outputs: per output, the tile then (off-diagonal
  int n_staged = 0;                    // tiles of a symmetric Gram) its mirror image
};

class TileSchedule {
 public:
  TileSchedule(int64_t n1, int64_t n2, int64_t tile, bool symmetric, OutputKind kind, int n_outputs)
      : n1_(n1), n2_(symmetric ? n1 : n2), tile_(tile), symmetric_(symmetric), kind_(kind),
        n_outputs_(n_outputs) {
    if (n1 < 0 || n2_ < 0) throw std::invalid_argument("tile schedule: negative size");
    if (tile <= 0) throw std::invalid_argument("tile schedule: the tile edge must be positive");
    if (n_outputs < 0 || n_outputs > kMaxOutputs)
      throw std::invalid_argument("tile schedule: 0 to 2 outputs");
    tiles1_ = (n1_ + tile - 1) / tile;
    tiles2_ = (n2_ + tile - 1) / tile;
    total_ = symmetric ? tiles1_ * (tiles1_ + 1) / 2 : tiles1_ * tiles2_;
    if (n_outputs == 0 || kind == OutputKind::kNone) total_ = 0;
    const int64_t edge1 = std::min(tile, n1_), edge2 = std::min(tile, n2_);
    area_ = edge1 * edge2;  // the largest tile
    per_output_ = area_ * (symmetric ? 2 : 1);
  }

  int64_t n1() const { return n1_; }
  int64_t n2() const { return n2_; }
  int64_t tile() const { return tile_; }
  bool symmetric() const { return symmetric_; }
  OutputKind kind() const { return kind_; }
  int n_outputs() const { return n_outputs_; }
  int64_t total() const { return total_; }
  // Elements of the GEMM buffer: the largest tile.
  int64_t gemm_elements() const { return area_; }
  // Elements of one staging slot (host outputs): per output the tile and room for its mirror.
  int64_t slot_elements() const { return kind_ == OutputKind::kHost ? per_output_ * n_outputs_ : 0; }
  // Tiles queued on the device ahead of the host: with host outputs tile k computes while tile
  // k - 1 is copied out (two staging slots); with device outputs two tiles may be queued.
  int in_flight() const { return kind_ == OutputKind::kHost ? 1 : 2; }

  TileStep step(int64_t ti, int64_t tj, int64_t index) const {
    TileStep s;
    s.index = index;
    s.ti = ti;
    s.tj = tj;
    s.i0 = ti * tile_;
    s.j0 = tj * tile_;
    s.rows = std::min(tile_, n1_ - s.i0);
    s.cols = std::min(tile_, n2_ - s.j0);
    s.diagonal = symmetric_ && ti == tj;
    const bool mirrored = symmetric_ && !s.diagonal;
    if (kind_ == OutputKind::kHost) {
      s.slot = int(index % 2);
      s.n_staged = mirrored ? 2 : 1;
      for (int o = 0; o < n_outputs_; ++o) {
        TileTarget& t = s.target[o];
        t.offset = o * per_output_;
        t.ld = s.cols;
        if (s.diagonal) {
          t.mirror_offset = t.offset;
          t.mirror_ld = s.cols;
        } else if (mirrored) {
          t.mirror_offset = t.offset + area_;
          t.mirror_ld = s.rows;
        }
        s.staged[o][0] = {t.offset, s.rows, s.cols, s.i0, s.j0};
        if (mirrored) s.staged[o][1] = {t.mirror_offset, s.cols, s.rows, s.j0, s.i0};
      }
    } else {
      for (int o = 0; o < n_outputs_; ++o) {
        TileTarget& t = s.target[o];
        t.offset = s.i0 * n2_ + s.j0;
        t.ld = n2_;
        if (s.diagonal) {
          t.mirror_offset = t.offset;
          t.mirror_ld = n2_;
        } else if (mirrored) {
          t.mirror_offset = s.j0 * n2_ + s.i0;
          t.mirror_ld = n2_;
        }
      }
    }
    return s;
  }

  // Every tile in order: row of tiles by row of tiles, only tj >= ti for a symmetric Gram.
  template <class F>
  void for_each(F&& f) const {
    if (total_ == 0) return;
    int64_t index = 0;
    for (int64_t ti = 0; ti < tiles1_; ++ti)
      for (int64_t tj = symmetric_ ? ti : 0; tj < tiles2_; ++tj) f(step(ti, tj, index++));
  }

 private:
  int64_t n1_, n2_, tile_;
  bool symmetric_;
  OutputKind kind_;
  int n_outputs_;
  int64_t tiles1_ = 0, tiles2_ = 0, total_ = 0, area_ = 0, per_output_ = 0;
};

// Called by the host thread between tiles, at most every poll_interval seconds (and once at the
// end when LoopOptions::wait_at_end); returning false stops the computation, which then throws
// Cancelled. The semantics of the CPU engine's GramOptions::poll (src/cpp/ntkfast/engine.hpp):
// nothing is written into host outputs while it runs, nor after it returned false.
using PollFn = std::function<bool(int64_t tiles_done, int64_t tiles_total)>;

class Cancelled : public std::exception {
 public:
  const char* what() const noexcept override { return "computation cancelled"; }
};

// What the tile loop asks of the device side.
class TileExecutor {
 public:
  virtual ~TileExecutor() = default;
  // Enqueues a tile: its GEMM and epilogue and, with host outputs, the copy of its staging slot to
  // pinned memory, after the previous tile of the same slot has left the device staging slot.
  virtual void enqueue(const TileStep& step) = 0;
  // Waits until the tile is complete; with host outputs, then copies it from pinned memory into
  // the outputs. Tiles are retired in schedule order.
  virtual void retire(const TileStep& step) = 0;
  // Waits for everything enqueued (before an exception leaves the loop: no queued work may still
  // use buffers that go back to their pools). Must not throw.
  virtual void synchronize() noexcept = 0;
};

struct LoopOptions {
  PollFn poll;                    // may be empty
  double poll_interval = kPollInterval;
  // Retire every tile before returning and poll (total, total) at the end; with host outputs the
  // loop always retires every tile. Without it, device-output tiles may still be queued on return
  // (as any CuPy operation).
  bool wait_at_end = false;
};

// Runs every tile of the schedule through the executor, keeping at most schedule.in_flight()
// tiles queued after each enqueue, so that the poll is served within about a tile's time.
inline void run_tile_loop(const TileSchedule& schedule, TileExecutor& executor,
                          const LoopOptions& options) {
  using Clock = std::chrono::steady_clock;
  const int64_t total = schedule.total();
  const size_t keep = size_t(schedule.in_flight());
  const bool drain_all = options.wait_at_end || schedule.kind() == OutputKind::kHost;
  std::deque<TileStep> pending;
  int64_t done = 0;
  auto last_poll = Clock::now();
  try {
    schedule.for_each([&](const TileStep& step) {
      executor.enqueue(step);
      pending.push_back(step);
      while (pending.size() > keep) {
        executor.retire(pending.front());
        pending.pop_front();
        ++done;
      }
      if (options.poll) {
        const auto now = Clock::now();
        if (std::chrono::duration<double>(now - last_poll).count() >= options.poll_interval) {
          last_poll = now;
          if (!options.poll(done, total)) throw Cancelled();
        }
      }
    });
    if (drain_all) {
      while (!pending.empty()) {
        executor.retire(pending.front());
        pending.pop_front();
        ++done;
      }
    }
    if (options.poll && options.wait_at_end && !options.poll(total, total)) throw Cancelled();
  } catch (...) {
    executor.synchronize();
    throw;
  }
}

}  // namespace cuda
}  // namespace ntkfast
