// gram_plan.cu -- GramPlan (gram_plan.hpp): the workspace layout, the per-row pass of both point
// sets, and the tile loop's device side: per tile a cuBLAS GEMM of x_I · x_Jᵀ into the GEMM
// buffer, the epilogue (cuda_engine.cu's tile_kernel) into the outputs or a staging slot, and for
// host outputs the copy of that slot to pinned memory on a second stream, from where the host
// thread copies it into the outputs while the GPU computes the next tile. The loop itself (order,
// throttling, polling, cancellation) is tile_schedule.hpp's run_tile_loop, tested on the CPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "cublas_runtime.hpp"
#include "cuda_check.cuh"
#include "gram_plan.hpp"

namespace ntkfast {
namespace cuda {
namespace {

constexpr int64_t kAlign = 256;

int64_t align_up(int64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

void require(bool condition, const char* message) {
  if (!condition) throw std::invalid_argument(message);
}

void set_device(int device) {
  int current = -1;
  NTKFAST_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) NTKFAST_CUDA_CHECK(cudaSetDevice(device));
}

// The Series inputs of a plan against its program, as the CPU engine checks them (engine.cpp):
// every Series op's rows inside the tables, a profile of degree + 2 values, a well-formed
// fallback record where records are given. No CUDA call.
void check_series(const PlanSpec& s) {
  std::vector<LayerOp> ops(s.ops.size() / sizeof(LayerOp));
  if (!ops.empty()) std::memcpy(ops.data(), s.ops.data(), ops.size() * sizeof(LayerOp));
  require(s.series_rows >= 0 && s.profile_len >= 0 && s.fallback_len >= 0,
          "GramPlan: negative Series sizes");
  const int64_t profile_count =
      s.profile_len > 0 ? int64_t(s.profiles.size()) / s.profile_len : 0;
  const int64_t fallback_count =
      s.fallback_len > 0 ? int64_t(s.fallbacks.size()) / s.fallback_len : 0;
  require(s.profile_len == 0 || int64_t(s.profiles.size()) == profile_count * s.profile_len,
          "GramPlan: profiles must hold whole profiles of profile_len values");
  require(s.fallbacks.empty() ||
              (s.fallback_len > 0 && int64_t(s.fallbacks.size()) == fallback_count * s.fallback_len &&
               s.fallback_above >= 1.0),
          "GramPlan: fallbacks must hold whole records of fallback_len values, fallback_above >= 1");
  bool any = false;
  for (size_t k = 0; k < ops.size(); ++k) {
    const LayerOp& op = ops[k];
    if (op.kind != kSeries) continue;
    any = true;
    const std::string where = "GramPlan: Series op " + std::to_string(k) + ": ";
    const double row0 = op.p[0], index = op.p[1];
    require(op.degree >= 1 && row0 >= 0 && row0 == double(int64_t(row0)) &&
                int64_t(row0) + series_table_rows(op.degree) <= s.series_rows,
            (where + "its tables lie outside the series_rows").c_str());
    require(index >= 0 && index == double(int64_t(index)) && int64_t(index) < profile_count &&
                s.profile_len >= op.degree + 2,
            (where + "no tail profile of degree + 2 values").c_str());
    if (!s.fallbacks.empty())
      require(int64_t(index) < fallback_count &&
                  fallback_record_valid(s.fallbacks.data() + int64_t(index) * s.fallback_len,
                                        s.fallback_len),
              (where + "malformed fallback record").c_str());
  }
  require(any == (s.series_rows > 0),
          "GramPlan: series_rows must be given exactly for a program with Series ops");
}

int64_t plan_tile(const PlanSpec& s) {
  require(s.n1 >= 0 && s.n2 >= 0 && s.d >= 0, "GramPlan: negative size");
  const int n_outputs = (s.nngp ? 1 : 0) + (s.ntk ? 1 : 0);
  const int itemsize = s.dtype == Dtype::kFloat32 ? 4 : 8;
  const int64_t n2 = s.symmetric ? s.n1 : s.n2;
  return choose_tile(s.tile, s.n1, n2, itemsize, s.outputs, n_outputs, s.symmetric, s.free_bytes,
                     max_tile_rows());
}

// RAII owners of CUDA events and streams (destroying them with work pending is allowed: the
// resources go once the work is done).
class Event {
 public:
  Event() { NTKFAST_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~Event() { (void)cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

class OwnedStream {
 public:
  OwnedStream() { NTKFAST_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~OwnedStream() {
    (void)cudaStreamSynchronize(stream_);  // nothing may still write into the caller's memory
    (void)cudaStreamDestroy(stream_);
    (void)cudaGetLastError();
  }
  OwnedStream(const OwnedStream&) = delete;
  OwnedStream& operator=(const OwnedStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

void check_cublas(int status, const char* what) {
  if (status == 0) return;
  throw CudaError(std::string("cuBLAS error in the CUDA engine: ") + what + " returned status " +
                      std::to_string(status),
                  status);
}

// CuPy's cuBLAS handle, set up for the engine's GEMMs and restored afterwards (CuPy shares it):
// the caller's stream, host pointer mode, and CUBLAS_DEFAULT_MATH, so float32 GEMMs run in full
// FP32 (no TF32 tensor cores, no emulation) whatever math mode CuPy or the user set.
class CublasScope {
 public:
  CublasScope(const CublasApi& api, void* handle, void* stream) : api_(api), handle_(handle) {
    require(handle != nullptr, "GramPlan.run: no cuBLAS handle");
    check_cublas(api_.get_stream(handle_, &stream_), "cublasGetStream_v2");
    check_cublas(api_.get_math_mode(handle_, &math_), "cublasGetMathMode");
    check_cublas(api_.get_pointer_mode(handle_, &pointer_), "cublasGetPointerMode_v2");
    check_cublas(api_.set_stream(handle_, stream), "cublasSetStream_v2");
    active_ = true;
    check_cublas(api_.set_math_mode(handle_, CublasApi::kDefaultMath), "cublasSetMathMode");
    check_cublas(api_.set_pointer_mode(handle_, CublasApi::kPointerModeHost), "cublasSetPointerMode_v2");
  }
  ~CublasScope() {
    if (!active_) return;
    (void)api_.set_pointer_mode(handle_, pointer_);
    (void)api_.set_math_mode(handle_, math_);
    (void)api_.set_stream(handle_, stream_);
  }
  CublasScope(const CublasScope&) = delete;
  CublasScope& operator=(const CublasScope&) = delete;

 private:
  const CublasApi& api_;
  void* handle_;
  void* stream_ = nullptr;
  int math_ = 0, pointer_ = 0;
  bool active_ = false;
};

// The device side of run_tile_loop.
class DeviceExecutor final : public TileExecutor {
 public:
  DeviceExecutor(const GramPlan& plan, const RunArgs& args, const CublasApi& api, uintptr_t gemm_a,
                 uintptr_t gemm_b, const TileArgs& base)
      : plan_(plan), args_(args), api_(api), gemm_a_(gemm_a), gemm_b_(gemm_b), base_(base),
        stream_(reinterpret_cast<cudaStream_t>(args.stream)),
        host_(plan.schedule().kind() == OutputKind::kHost),
        itemsize_(plan.spec().dtype == Dtype::kFloat32 ? 4 : 8) {
    if (host_) copy_stream_.reset(new OwnedStream());
  }

  void enqueue(const TileStep& step) override {
    const GramPlan::Layout& L = plan_.layout();
    const TileSchedule& S = plan_.schedule();
    gemm(step);
    uintptr_t slot_base = 0;
    if (host_) {
      // Before the epilogue overwrites the slot, its previous tile must have left it.
      if (slot_used_[step.slot])
        NTKFAST_CUDA_CHECK(cudaStreamWaitEvent(stream_, copied_[step.slot].get(), 0));
      slot_base = args_.workspace + uintptr_t(L.staging) +
                  uintptr_t(step.slot) * uintptr_t(S.slot_elements()) * uintptr_t(itemsize_);
    }
    TileArgs a = base_;
    a.ld_gram = step.cols;
    a.rows = step.rows;
    a.cols = step.cols;
    const int64_t i0 = step.i0, j0 = step.j0;
    a.q1 += uintptr_t(8 * i0);
    a.sq1 += uintptr_t(8 * i0);
    a.q2 += uintptr_t(8 * j0);
    a.sq2 += uintptr_t(8 * j0);
    if (a.scale_exp1) a.scale_exp1 += uintptr_t(4 * i0);
    if (a.scale_exp2) a.scale_exp2 += uintptr_t(4 * j0);
    if (a.rescale1) a.rescale1 += uintptr_t(4 * i0);
    if (a.rescale2) a.rescale2 += uintptr_t(4 * j0);
    if (a.series.table1) {
      a.series.table1 += uintptr_t(8 * i0);
      a.series.table2 += uintptr_t(8 * j0);
    }
    if (a.x1) {
      a.x1 += uintptr_t(i0 * a.d * itemsize_);
      a.x2 += uintptr_t(j0 * a.d * itemsize_);
    }
    a.diagonal = step.diagonal;
    a.diag_nngp = a.diag_ntk = 0;
    const PlanSpec& spec = plan_.spec();
    int o = 0;
    for (int kernel = 0; kernel < 2; ++kernel) {
      if (kernel == 0 ? !spec.nngp : !spec.ntk) continue;
      const TileTarget& t = step.target[o];
      const uintptr_t base = host_ ? slot_base : args_.out[o];
      const uintptr_t direct = base + uintptr_t(t.offset * itemsize_);
      const uintptr_t mirror = t.mirror_offset >= 0 ? base + uintptr_t(t.mirror_offset * itemsize_) : 0;
      if (kernel == 0) {
        a.nngp = direct, a.ld_nngp = t.ld, a.nngp_mirror = mirror, a.ld_nngp_mirror = t.mirror_ld;
        a.diag_nngp = step.diagonal ? base_.diag_nngp + uintptr_t(8 * i0) : 0;
      } else {
        a.ntk = direct, a.ld_ntk = t.ld, a.ntk_mirror = mirror, a.ld_ntk_mirror = t.mirror_ld;
        a.diag_ntk = step.diagonal ? base_.diag_ntk + uintptr_t(8 * i0) : 0;
      }
      ++o;
    }
    gram_tile(spec.dtype, a, spec.device, args_.stream);
    if (!host_) {
      NTKFAST_CUDA_CHECK(cudaEventRecord(done_[step.index % 3].get(), stream_));
      return;
    }
    // Tile computed -> copy stream: the staged blocks to the same offsets of the pinned slot.
    const cudaStream_t copy = copy_stream_->get();
    NTKFAST_CUDA_CHECK(cudaEventRecord(computed_[step.slot].get(), stream_));
    NTKFAST_CUDA_CHECK(cudaStreamWaitEvent(copy, computed_[step.slot].get(), 0));
    const uintptr_t pinned_base =
        args_.pinned + uintptr_t(step.slot) * uintptr_t(S.slot_elements()) * uintptr_t(itemsize_);
    for (int out = 0; out < S.n_outputs(); ++out)
      for (int b = 0; b < step.n_staged; ++b) {
        const StagedBlock& blk = step.staged[out][b];
        const size_t off = size_t(blk.offset) * size_t(itemsize_);
        NTKFAST_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(pinned_base + off),
                                           reinterpret_cast<const void*>(slot_base + off),
                                           size_t(blk.rows * blk.cols) * size_t(itemsize_),
                                           cudaMemcpyDeviceToHost, copy));
      }
    NTKFAST_CUDA_CHECK(cudaEventRecord(copied_[step.slot].get(), copy));
    slot_used_[step.slot] = true;
  }

  void retire(const TileStep& step) override {
    if (!host_) {
      NTKFAST_CUDA_CHECK(cudaEventSynchronize(done_[step.index % 3].get()));
      return;
    }
    NTKFAST_CUDA_CHECK(cudaEventSynchronize(copied_[step.slot].get()));
    const TileSchedule& S = plan_.schedule();
    const char* pinned = reinterpret_cast<const char*>(args_.pinned) +
                         size_t(step.slot) * size_t(S.slot_elements()) * size_t(itemsize_);
    const size_t row_bytes_out = size_t(S.n2()) * size_t(itemsize_);
    for (int out = 0; out < S.n_outputs(); ++out) {
      char* dst = reinterpret_cast<char*>(args_.out[out]);
      for (int b = 0; b < step.n_staged; ++b) {
        const StagedBlock& blk = step.staged[out][b];
        const size_t width = size_t(blk.cols) * size_t(itemsize_);
        const char* src = pinned + size_t(blk.offset) * size_t(itemsize_);
        for (int64_t r = 0; r < blk.rows; ++r)
          std::memcpy(dst + size_t(blk.row0 + r) * row_bytes_out + size_t(blk.col0) * size_t(itemsize_),
                      src + size_t(r) * width, width);
      }
    }
  }

  void synchronize() noexcept override {
    (void)cudaStreamSynchronize(stream_);
    if (copy_stream_) (void)cudaStreamSynchronize(copy_stream_->get());
    (void)cudaGetLastError();
  }

 private:
  // The row-major tile G = A_I · B_Jᵀ (rows x cols, ld cols) is, column-major, Gᵀ = B_J · A_Iᵀ:
  // op(B_J rows as a d x cols column-major matrix) = T, A_I rows as d x rows column-major = N.
  void gemm(const TileStep& step) {
    const PlanSpec& spec = plan_.spec();
    const uintptr_t c = args_.workspace + uintptr_t(plan_.layout().gemm);
    if (spec.d == 0) {
      NTKFAST_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<void*>(c), 0,
                                         size_t(step.rows * step.cols) * size_t(itemsize_), stream_));
      return;
    }
    const int m = int(step.cols), n = int(step.rows), k = int(spec.d);
    void* handle = reinterpret_cast<void*>(args_.cublas);
    if (spec.dtype == Dtype::kFloat32) {
      const float one = 1.0f, zero = 0.0f;
      const float* a = reinterpret_cast<const float*>(gemm_b_) + step.j0 * spec.d;
      const float* b = reinterpret_cast<const float*>(gemm_a_) + step.i0 * spec.d;
      check_cublas(api_.sgemm(handle, CublasApi::kOpT, CublasApi::kOpN, m, n, k, &one, a, k, b, k,
                              &zero, reinterpret_cast<float*>(c), m),
                   "cublasSgemm_v2");
    } else {
      const double one = 1.0, zero = 0.0;
      const double* a = reinterpret_cast<const double*>(gemm_b_) + step.j0 * spec.d;
      const double* b = reinterpret_cast<const double*>(gemm_a_) + step.i0 * spec.d;
      check_cublas(api_.dgemm(handle, CublasApi::kOpT, CublasApi::kOpN, m, n, k, &one, a, k, b, k,
                              &zero, reinterpret_cast<double*>(c), m),
                   "cublasDgemm_v2");
    }
  }

  const GramPlan& plan_;
  const RunArgs& args_;
  const CublasApi& api_;
  uintptr_t gemm_a_, gemm_b_;
  TileArgs base_;
  cudaStream_t stream_;
  bool host_;
  int itemsize_;
  std::unique_ptr<OwnedStream> copy_stream_;
  Event done_[3];                 // device outputs: at most 3 tiles between enqueue and retire
  Event computed_[2], copied_[2]; // host outputs: per staging slot
  bool slot_used_[2] = {false, false};
};

}  // namespace

GramPlan::GramPlan(PlanSpec spec)
    : spec_(std::move(spec)),
      schedule_(spec_.n1, spec_.symmetric ? spec_.n1 : spec_.n2, plan_tile(spec_), spec_.symmetric,
                spec_.outputs, (spec_.nngp ? 1 : 0) + (spec_.ntk ? 1 : 0)),
      itemsize_(spec_.dtype == Dtype::kFloat32 ? 4 : 8),
      n_ops_(int32_t(spec_.ops.size() / sizeof(LayerOp))) {
  require(spec_.ops.size() % sizeof(LayerOp) == 0, "GramPlan: ops must be packed LayerOps");
  check_series(spec_);
  const bool series = spec_.series_rows > 0, fallbacks = series && !spec_.fallbacks.empty();
  if (fallbacks) rules_ = make_fallback_rules();
  require(spec_.nngp || spec_.ntk, "GramPlan: no kernel requested");
  require(spec_.d <= int64_t(INT32_MAX) && schedule_.n1() <= int64_t(INT32_MAX) &&
              schedule_.n2() <= int64_t(INT32_MAX),
          "GramPlan: sizes must fit cuBLAS's 32-bit interface");
  int64_t at = 0;
  auto take = [&at](int64_t bytes) {
    const int64_t offset = at;
    at += align_up(std::max<int64_t>(bytes, 1));
    return offset;
  };
  layout_.ops = take(int64_t(spec_.ops.size()));
  layout_.pool = take(int64_t(spec_.pool.size()) * 8);
  // row_stats's status words, then the tiles' near-parallel flag (cuda_engine.hpp)
  layout_.status = take(kRowStatsStatusBytes + 8);
  const int64_t n_max = std::max(schedule_.n1(), spec_.symmetric ? 0 : schedule_.n2());
  layout_.stride = std::max<int64_t>(32, (n_max + 31) / 32 * 32);
  const int64_t rows = int64_t(n_ops_) + 1, stride = layout_.stride;
  for (int set = 0; set < (spec_.symmetric ? 1 : 2); ++set) {
    SetLayout& t = layout_.set[set];
    t.q = take(8 * rows * stride);
    t.sq = take(8 * rows * stride);
    if (spec_.ntk) t.ntk = take(8 * stride);
    t.scale = take(4 * stride);
    t.rescale = take(4 * rows * stride);
    if (series) t.series = take(8 * spec_.series_rows * stride);
  }
  if (series) {
    layout_.profiles = take(int64_t(spec_.profiles.size()) * 8);
    if (fallbacks) {
      layout_.fallbacks = take(int64_t(spec_.fallbacks.size()) * 8);
      layout_.rules = take(int64_t(sizeof(FallbackRules)));
    }
    layout_.report = take(kSeriesReportBytes);
    if (fallbacks && spec_.outputs != OutputKind::kNone) {
      const int64_t tile = schedule_.tile();
      layout_.marks_bytes = 4 * ((tile * tile + 31) / 32);
      layout_.marks = take(layout_.marks_bytes);
    }
  }
  if (spec_.symmetric) layout_.set[1] = layout_.set[0];
  if (spec_.outputs != OutputKind::kNone) layout_.gemm = take(schedule_.gemm_elements() * itemsize_);
  if (spec_.outputs == OutputKind::kHost) {
    layout_.staging = take(2 * schedule_.slot_elements() * itemsize_);
    pinned_bytes_ = 2 * schedule_.slot_elements() * itemsize_;
  }
  workspace_bytes_ = at;
}

int64_t GramPlan::row_stats(uintptr_t x1, uintptr_t x2, uintptr_t workspace, uintptr_t stream,
                            HostSeriesTable series1, HostSeriesTable series2) {
  require(workspace != 0, "GramPlan.row_stats: no workspace");
  require(x1 != 0 || schedule_.n1() == 0 || spec_.d == 0, "GramPlan.row_stats: no x1");
  require(spec_.symmetric ? x2 == 0 : (x2 != 0 || schedule_.n2() == 0 || spec_.d == 0),
          "GramPlan.row_stats: x2 must be given exactly for a cross Gram");
  const HostSeriesTable tables[2] = {series1, series2};
  for (int set = 0; set < 2; ++set) {
    const bool wanted = spec_.series_rows > 0 && (set == 0 || !spec_.symmetric);
    const int64_t n = set == 0 ? schedule_.n1() : schedule_.n2();
    require(wanted ? tables[set].data != nullptr && tables[set].rows == spec_.series_rows &&
                         tables[set].cols >= n
                   : tables[set].data == nullptr,
            "GramPlan.row_stats: the Series tables must be given exactly for the plan's point sets, "
            "series_rows rows of at least n values each");
  }
  set_device(spec_.device);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  stats_workspace_ = 0;
  scaled_bytes_ = 0;
  const uintptr_t ops = workspace + uintptr_t(layout_.ops), pool = workspace + uintptr_t(layout_.pool);
  if (!spec_.ops.empty())
    NTKFAST_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(ops), spec_.ops.data(), spec_.ops.size(),
                                       cudaMemcpyHostToDevice, s));
  if (!spec_.pool.empty())
    NTKFAST_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(pool), spec_.pool.data(),
                                       spec_.pool.size() * 8, cudaMemcpyHostToDevice, s));
  const DeviceProgram prog{n_ops_ ? ops : 0, n_ops_, spec_.pool.empty() ? 0 : pool};
  if (spec_.series_rows > 0) upload_series(workspace, s);
  for (int set = 0; set < (spec_.symmetric ? 1 : 2); ++set) {
    const SetLayout& t = layout_.set[set];
    const int64_t n_rows = set == 0 ? schedule_.n1() : schedule_.n2();
    if (t.series >= 0 && n_rows > 0)  // into the layout of q (the padding is never read)
      NTKFAST_CUDA_CHECK(cudaMemcpy2DAsync(
          reinterpret_cast<void*>(workspace + uintptr_t(t.series)), size_t(8 * layout_.stride),
          tables[set].data, size_t(8 * tables[set].cols), size_t(8 * n_rows),
          size_t(spec_.series_rows), cudaMemcpyHostToDevice, s));
    DeviceRowTables tables;
    tables.q = workspace + uintptr_t(t.q);
    tables.sq = workspace + uintptr_t(t.sq);
    tables.stride = layout_.stride;
    tables.ntk_diag = t.ntk >= 0 ? workspace + uintptr_t(t.ntk) : 0;
    tables.scale_exp = workspace + uintptr_t(t.scale);
    tables.rescale = workspace + uintptr_t(t.rescale);
    if (t.series >= 0) tables.series = workspace + uintptr_t(t.series);
    const int64_t n = set == 0 ? schedule_.n1() : schedule_.n2();
    flags_[set] = cuda::row_stats(spec_.dtype, set == 0 ? x1 : x2, n, spec_.d, spec_.d, prog, tables,
                                  workspace + uintptr_t(layout_.status), set + 1, spec_.device, stream);
  }
  if (spec_.symmetric) flags_[1] = flags_[0];
  const int64_t n1 = schedule_.n1(), n2 = schedule_.n2();
  if (spec_.outputs != OutputKind::kNone) {
    if (flags_[0].any_scaled) scaled_bytes_ += align_up(n1 * spec_.d * itemsize_);
    if (!spec_.symmetric && flags_[1].any_scaled) scaled_bytes_ += align_up(n2 * spec_.d * itemsize_);
  }
  stats_workspace_ = workspace;
  return scaled_bytes_;
}

void GramPlan::run(const RunArgs& args) {
  require(schedule_.kind() != OutputKind::kNone, "GramPlan.run: a plan without outputs");
  require(args.workspace != 0 && args.workspace == stats_workspace_,
          "GramPlan.run: call row_stats with this workspace first");
  require(scaled_bytes_ == 0 || args.scaled != 0, "GramPlan.run: the scaled copies need memory");
  require(spec_.symmetric ? args.x2 == 0 : (args.x2 != 0 || spec_.d == 0), "GramPlan.run: x2 mismatch");
  for (int o = 0; o < schedule_.n_outputs(); ++o) require(args.out[o] != 0, "GramPlan.run: no output");
  require(schedule_.kind() != OutputKind::kHost || args.pinned != 0, "GramPlan.run: no pinned memory");
  if (schedule_.total() == 0) return;
  set_device(spec_.device);
  const CublasApi& api = cublas_api();
  const uintptr_t ws = args.workspace;

  // The GEMM operands: scaled copies of the point sets that have rows outside the safe range.
  uintptr_t a = args.x1, b = spec_.symmetric ? args.x1 : args.x2;
  uintptr_t next = args.scaled;
  const int64_t n1 = schedule_.n1(), n2 = schedule_.n2();
  if (flags_[0].any_scaled) {
    scale_rows(spec_.dtype, args.x1, n1, spec_.d, ws + uintptr_t(layout_.set[0].scale), next,
               spec_.device, args.stream);
    a = next;
    if (spec_.symmetric) b = next;
    next += uintptr_t(align_up(n1 * spec_.d * itemsize_));
  }
  if (!spec_.symmetric && flags_[1].any_scaled) {
    scale_rows(spec_.dtype, args.x2, n2, spec_.d, ws + uintptr_t(layout_.set[1].scale), next,
               spec_.device, args.stream);
    b = next;
  }
  const bool scaled = flags_[0].any_scaled || flags_[1].any_scaled;

  TileArgs base;
  base.gram = ws + uintptr_t(layout_.gemm);
  base.inv_d = spec_.d > 0 ? 1.0 / double(spec_.d) : 0.0;  // as the CPU engine
  base.snap_tol = spec_.snap_tol;
  base.prog = DeviceProgram{n_ops_ ? ws + uintptr_t(layout_.ops) : 0, n_ops_,
                            spec_.pool.empty() ? 0 : ws + uintptr_t(layout_.pool)};
  const SetLayout &t1 = layout_.set[0], &t2 = layout_.set[1];
  base.q1 = ws + uintptr_t(t1.q), base.sq1 = ws + uintptr_t(t1.sq), base.stride1 = layout_.stride;
  base.q2 = ws + uintptr_t(t2.q), base.sq2 = ws + uintptr_t(t2.sq), base.stride2 = layout_.stride;
  // diagonal tiles (symmetric only): NNGP from q[n_ops], NTK from the per-row diagonal
  base.diag_nngp = base.q1 + uintptr_t(8 * int64_t(n_ops_) * layout_.stride);
  base.diag_ntk = t1.ntk >= 0 ? ws + uintptr_t(t1.ntk) : 0;
  if (scaled) {
    base.scale_exp1 = ws + uintptr_t(t1.scale);
    base.scale_exp2 = ws + uintptr_t(t2.scale);
  }
  // Series ops: their tables, profiles, records; the report is reset for this run.
  if (spec_.series_rows > 0) {
    TileArgs::Series& ser = base.series;
    ser.table1 = ws + uintptr_t(t1.series);
    ser.table2 = ws + uintptr_t(t2.series);
    ser.profiles = ws + uintptr_t(layout_.profiles);
    ser.profile_len = spec_.profile_len;
    if (layout_.fallbacks >= 0) {
      ser.fallbacks = ws + uintptr_t(layout_.fallbacks);
      ser.fallback_len = spec_.fallback_len;
      ser.fallback_above = spec_.fallback_above;
      ser.rules = ws + uintptr_t(layout_.rules);
      ser.marks = ws + uintptr_t(layout_.marks);
    }
    ser.report = ws + uintptr_t(layout_.report);
    NTKFAST_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<void*>(ser.report), 0, kSeriesReportBytes,
                                       reinterpret_cast<cudaStream_t>(args.stream)));
  }
  // The unscaled rows, for the exact near-parallel path (exact_pair.hpp); not with Series ops,
  // which have no exact form (as on the CPU).
  if (spec_.d > 0 && spec_.series_rows == 0) {
    base.x1 = args.x1;
    base.x2 = spec_.symmetric ? args.x1 : args.x2;
    base.d = spec_.d;
    base.near_flag = ws + uintptr_t(layout_.status + kRowStatsStatusBytes);
  }
  if (flags_[0].any_rescaled) base.rescale1 = ws + uintptr_t(t1.rescale);
  if (flags_[1].any_rescaled) base.rescale2 = ws + uintptr_t(t2.rescale);

  CublasScope scope(api, reinterpret_cast<void*>(args.cublas), reinterpret_cast<void*>(args.stream));
  DeviceExecutor executor(*this, args, api, a, b, base);
  run_tile_loop(schedule_, executor, args.loop);
}

void GramPlan::write_diagonal(uintptr_t workspace, uintptr_t nngp, uintptr_t ntk, uintptr_t stream) const {
  require(workspace != 0 && workspace == stats_workspace_,
          "GramPlan.write_diagonal: call row_stats with this workspace first");
  require(ntk == 0 || spec_.ntk, "GramPlan.write_diagonal: the plan has no NTK");
  const SetLayout& t = layout_.set[0];
  const int64_t n = schedule_.n1();
  if (nngp)
    store_row(spec_.dtype, workspace + uintptr_t(t.q) + uintptr_t(8 * int64_t(n_ops_) * layout_.stride), n,
              nngp, spec_.device, stream);
  if (ntk) store_row(spec_.dtype, workspace + uintptr_t(t.ntk), n, ntk, spec_.device, stream);
}

void GramPlan::upload_series(uintptr_t workspace, void* stream) {
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  auto upload = [&](int64_t offset, const void* data, size_t bytes) {
    if (bytes)
      NTKFAST_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(workspace + uintptr_t(offset)),
                                         data, bytes, cudaMemcpyHostToDevice, s));
  };
  upload(layout_.profiles, spec_.profiles.data(), spec_.profiles.size() * 8);
  if (layout_.fallbacks >= 0) {
    upload(layout_.fallbacks, spec_.fallbacks.data(), spec_.fallbacks.size() * 8);
    upload(layout_.rules, &rules_, sizeof(FallbackRules));
  }
  NTKFAST_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<void*>(workspace + uintptr_t(layout_.report)),
                                     0, kSeriesReportBytes, s));
  if (layout_.marks >= 0)  // all clear between tiles from here on (series_fallback_kernel)
    NTKFAST_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<void*>(workspace + uintptr_t(layout_.marks)),
                                       0, size_t(layout_.marks_bytes), s));
}

GramPlan::SeriesReport GramPlan::series_report(uintptr_t workspace, uintptr_t stream) const {
  require(spec_.series_rows > 0, "GramPlan.series_report: the program has no Series op");
  require(workspace != 0 && workspace == stats_workspace_,
          "GramPlan.series_report: call row_stats with this workspace first");
  set_device(spec_.device);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  unsigned long long words[2] = {0, 0};
  NTKFAST_CUDA_CHECK(cudaMemcpyAsync(words, reinterpret_cast<const void*>(workspace + uintptr_t(layout_.report)),
                                     sizeof words, cudaMemcpyDeviceToHost, s));
  NTKFAST_CUDA_CHECK(cudaStreamSynchronize(s));
  SeriesReport report;
  std::memcpy(&report.max_tail_bound, &words[0], sizeof(double));
  report.fallback_pairs = int64_t(words[1]);
  return report;
}

}  // namespace cuda
}  // namespace ntkfast
