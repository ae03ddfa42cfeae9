// engine.cpp -- tiling, threads, BLAS calls and dispatch of the CPU Gram engine.
//
// Work: the per-row tables (cpu_kernels.hpp) are built once per point set; then each tile
// (I, J) gets its input Gram from one single-threaded GEMM into a per-thread buffer and the
// ISA kernel turns it into NNGP/NTK values written straight into the output. For a symmetric
// Gram only tiles with J >= I are computed; each is mirrored, so the result is exactly symmetric,
// and the diagonal is copied from the per-row recursion (= compute_diagonal, bit for bit).
// With GramOptions::panel_writes (file-backed outputs) the tiles of one tile row go to a panel
// buffer instead, and the panel, its mirrored left part read back from the rows above, is then
// written row by row: the same values, each output page written once and in order.
// Threads: OpenMP over tiles (dynamic schedule). Nothing thrown may leave a parallel region (that
// would terminate the process): the first exception, the per-thread buffers' bad_alloc included,
// stops the others and is rethrown after it. Thread 0 polls the caller between tiles, holding
// store_lock exclusively, so the callback never runs while a worker writes into the outputs.
// Ranges: the per-row variances pass the shared policy of row_step.hpp; rows whose norm is outside
// the GEMM type's safe range are GEMMed as exactly rescaled copies (gemm_scale_exponent).
#include "engine.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <thread>
#include <type_traits>

#include <pthread.h>

#include "ntkfast/row_step.hpp"
#include "ntkfast/series_fallback.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ntkfast {

// ------------------------------------------------------------------------------------------------
// Program validation: the binding builds programs from Python values, so nothing is trusted.

namespace {

int64_t polynomial_table_size(const std::vector<double>& pool, int64_t offset) {
  if (offset < 0 || offset >= int64_t(pool.size())) return -1;
  const double degree = pool[size_t(offset)];
  if (!(degree >= 0 && degree <= kMaxDegree) || degree != std::floor(degree)) return -1;
  int64_t pos = offset + 1;
  for (int l = 0; l <= int(degree); ++l) {
    if (pos + 1 >= int64_t(pool.size())) return -1;
    const double m = pool[size_t(pos)];
    if (!(m >= 1 && m <= kMaxDegree + 1) || m != std::floor(m)) return -1;
    pos += 2 + int64_t(m);
    if (pos > int64_t(pool.size())) return -1;
  }
  return pos - offset;
}

}  // namespace

Program::Program(std::vector<LayerOp> ops, std::vector<double> pool)
    : ops_(std::move(ops)), pool_(std::move(pool)) {
  if (int64_t(ops_.size()) > kMaxOps)
    throw std::invalid_argument("program: too many layers (at most " + std::to_string(kMaxOps) +
                                " ops)");
  for (size_t k = 0; k < ops_.size(); ++k) {
    const LayerOp& op = ops_[k];
    std::ostringstream where;
    where << "program op " << k << ": ";
    if (op.kind < 0 || op.kind >= kNumOpKinds)
      throw std::invalid_argument(where.str() + "unknown op kind " + std::to_string(op.kind));
    for (double p : op.p)
      if (!std::isfinite(p)) throw std::invalid_argument(where.str() + "non-finite parameter");
    // A Series op needs A_1 at least (its derivative kernel is F'(ρ)).
    const int min_degree = op.kind == kSeries ? 1 : 0;
    const int max_degree = op.kind == kSeries ? kMaxSeriesDegree : kMaxDegree;
    if (op.degree < min_degree || op.degree > max_degree)
      throw std::invalid_argument(where.str() + "degree out of range [" +
                                  std::to_string(min_degree) + ", " + std::to_string(max_degree) +
                                  "]");
    if (op.kind == kCallback && !(op.p[0] >= 0 && op.p[0] <= 1e9 && op.p[0] == std::floor(op.p[0])))
      throw std::invalid_argument(where.str() + "malformed callback op");
    if (op.kind == kSeries)
      for (int m = 0; m < 2; ++m)
        if (!(op.p[m] >= 0 && op.p[m] <= 1e9 && op.p[m] == std::floor(op.p[m])))
          throw std::invalid_argument(where.str() + "malformed series op");
    if (op.kind == kPolynomial) {
      if (polynomial_table_size(pool_, op.offset) < 0 ||
          polynomial_table_size(pool_, int64_t(op.p[0])) < 0)
        throw std::invalid_argument(where.str() + "malformed polynomial table");
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Dispatch.

namespace {

bool cpu_has(const char* feature) {
#if defined(NTKFAST_HAVE_X86_DISPATCH)
  __builtin_cpu_init();
  if (std::string(feature) == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::string(feature) == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  (void)feature;
  return false;
}

const CpuKernels* kernels_by_name(const std::string& name) {
  if (name == "generic") return &kCpuKernelsGeneric;
#if defined(NTKFAST_HAVE_X86_DISPATCH)
  if (name == "avx2" && cpu_has("avx2")) return &kCpuKernelsAvx2;
  if (name == "avx512" && cpu_has("avx512")) return &kCpuKernelsAvx512;
#endif
  return nullptr;
}

const CpuKernels* best_kernels() {
  for (const char* name : {"avx512", "avx2", "generic"})
    if (const CpuKernels* k = kernels_by_name(name)) return k;
  return &kCpuKernelsGeneric;
}

std::atomic<const CpuKernels*> g_kernels{nullptr};

}  // namespace

const CpuKernels& cpu_kernels() {
  const CpuKernels* k = g_kernels.load();
  if (!k) {
    k = best_kernels();
    g_kernels.store(k);
  }
  return *k;
}

void select_cpu_kernels(const std::string& name) {
  const CpuKernels* k = kernels_by_name(name);
  if (!k) {
    std::string msg = "CPU kernels '" + name + "' are not available on this CPU; supported:";
    for (const auto& s : supported_cpu_kernels()) msg += " " + s;
    throw std::invalid_argument(msg);
  }
  g_kernels.store(k);
}

std::vector<std::string> supported_cpu_kernels() {
  std::vector<std::string> out;
  for (const char* name : {"avx512", "avx2", "generic"})
    if (kernels_by_name(name)) out.push_back(name);
  return out;
}

std::string cpu_features() {
  std::string out;
#if defined(NTKFAST_HAVE_X86_DISPATCH)
  __builtin_cpu_init();
  const char* names[] = {"sse4.2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512vl"};
  const bool have[] = {bool(__builtin_cpu_supports("sse4.2")), bool(__builtin_cpu_supports("avx")),
                       bool(__builtin_cpu_supports("avx2")),   bool(__builtin_cpu_supports("fma")),
                       bool(__builtin_cpu_supports("avx512f")), bool(__builtin_cpu_supports("avx512dq")),
                       bool(__builtin_cpu_supports("avx512vl"))};
  for (size_t i = 0; i < sizeof(have) / sizeof(have[0]); ++i)
    if (have[i]) out += (out.empty() ? "" : " ") + std::string(names[i]);
#endif
  return out.empty() ? "baseline" : out;
}

bool have_openmp() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace {

std::atomic<bool> g_started_threads{false};
std::atomic<bool> g_forked_child{false};

// Only a child of a process whose OpenMP pool exists needs the single-threaded fallback.
void mark_forked_child() {
  if (g_started_threads.load()) g_forked_child.store(true);
}

const int g_fork_handler = pthread_atfork(nullptr, nullptr, &mark_forked_child);

}  // namespace

bool in_forked_child() {
  (void)g_fork_handler;
  return g_forked_child.load();
}

int64_t default_tile(int64_t n_features) {
  // 384: the tile GEMM runs nearer the BLAS's large-matrix rate than at 256 (N = 8000,
  // d = 784, 2 cores: depth 3 float64 1.28 s vs 1.40 s, best of 5), while a tile's two
  // kernels (2.4 MB in float64) still sit in L3 for the layer epilogue. Shrunk for very wide
  // inputs so that one tile stays under ~0.1 s (a timely Ctrl-C and progress).
  const double budget = 4e9;
  int64_t tile = int64_t(std::sqrt(budget / double(std::max<int64_t>(n_features, 1))));
  tile = std::min<int64_t>(384, std::max<int64_t>(32, tile));
  return tile / 16 * 16;
}

template <class T>
double snap_tolerance(int64_t n_features) {
  return 4.0 * std::sqrt(double(std::max<int64_t>(n_features, 1))) *
         double(std::numeric_limits<T>::epsilon());
}

// ------------------------------------------------------------------------------------------------
// Per-row tables.

int resolve_threads(int requested) {
  if (requested > kMaxThreads)
    throw std::invalid_argument("num_threads must be at most " + std::to_string(kMaxThreads) +
                                ", got " + std::to_string(requested));
  if (in_forked_child()) return 1;
  const int threads = requested > 0 ? requested : max_threads();
  if (threads > 1) g_started_threads.store(true);
  return threads;
}

int64_t row_stride(int64_t n) { return (n + kRowPad - 1) / kRowPad * kRowPad + kRowPad; }

namespace {

struct RowStats {
  int64_t n = 0, stride = 0;
  std::vector<double> q, sq, ntk_diag;
  std::vector<int32_t> scale_exp;  // per row, for the GEMM (gemm_scale_exponent); empty: all 0
  std::vector<int32_t> rescale;    // per op and row (RowTables::rescale)
  bool any_rescaled = false;       // else the tiles get no rescale table: the fast path
  std::vector<uint8_t> input_underflow;  // per row (input_variance_underflows); empty: none
  std::vector<double> series_copy;       // the Series tables, where the caller's needed a copy
  const double* series = nullptr;        // the Series tables in the stride layout; null: none
  RowTables tables(int64_t first_row = 0) {
    return {q.data() + first_row, sq.data() + first_row, stride,
            any_rescaled ? rescale.data() + first_row : nullptr,
            series ? series + first_row : nullptr};
  }
};

// A program with Callback ops runs in segments: ops [begin, end), then the callback ops[end]
// (end == n_ops for the last segment). Without callbacks, one segment.
struct Segment {
  int32_t begin, end;
};

std::vector<Segment> program_segments(const ProgramView& prog) {
  std::vector<Segment> out;
  int32_t begin = 0;
  for (int32_t k = 0; k < prog.n_ops; ++k)
    if (prog.ops[k].kind == kCallback) {
      out.push_back({begin, k});
      begin = k + 1;
    }
  out.push_back({begin, prog.n_ops});
  return out;
}

ProgramView segment_view(const ProgramView& prog, Segment segment) {
  return {prog.ops + segment.begin, segment.end - segment.begin, prog.pool};
}

// The Series tables of a point set (engine.hpp) copied into the row tables' stride layout, with
// padding rows that are harmless (E[φ²] = E[φ'²] = 1, coefficients 0); null for a program without
// Series ops. Checks that the tables cover every Series op's rows.
const double* copy_series_tables(const ProgramView& prog, const SeriesTables& series, int64_t n,
                                 int64_t stride, std::vector<double>& out) {
  int64_t needed = 0;
  for (int k = 0; k < prog.n_ops; ++k)
    if (prog.ops[k].kind == kSeries)
      needed = std::max(needed, int64_t(prog.ops[k].p[0]) + series_table_rows(prog.ops[k].degree));
  if (needed == 0) return nullptr;
  if (!series.data || series.rows < needed)
    throw std::invalid_argument("series: the program needs " + std::to_string(needed) +
                                " rows of series tables, got " + std::to_string(series.rows));
  if (series.cols == stride) return series.data;  // already in the layout, padded by the caller
  if (series.cols != n) throw std::invalid_argument("series: tables of the wrong width");
  out.assign(size_t(series.rows) * size_t(stride), 0.0);  // padding: coefficients 0
  for (int64_t r = 0; r < series.rows; ++r)
    std::copy(series.data + r * n, series.data + (r + 1) * n, out.begin() + r * stride);
  for (int k = 0; k < prog.n_ops; ++k)
    if (prog.ops[k].kind == kSeries)
      for (int64_t r = 0; r < 2; ++r) {
        const int64_t row = int64_t(prog.ops[k].p[0]) + r;
        std::fill(out.begin() + row * stride + n, out.begin() + (row + 1) * stride, 1.0);
      }
  return out.data();
}

// The range policy of row_step.hpp on the tabulated variances entering ops first..last (n_ops:
// the NNGP diagonal), the input one (k = 0) included, in (op, row) order with the NTK diagonal
// last (the CUDA engine reports in the same order).
template <class T>
void check_row_stats(const ProgramView& prog, const RowStats& st, int point_set, int first,
                     int last) {
  const double storage_max = double(std::numeric_limits<T>::max());
  for (int k = first; k <= last; ++k) {
    const LayerOp* next_op = k < prog.n_ops ? &prog.ops[k] : nullptr;
    const double* q = st.q.data() + size_t(k) * size_t(st.stride);
    for (int64_t i = 0; i < st.n; ++i) {
      if (k == 0 && !st.input_underflow.empty() && st.input_underflow[size_t(i)])
        throw NonFiniteKernel(point_set, i, -1, q[i], false, /*underflow=*/true);
      const RowRange range = check_row_variance(q[i], next_op, storage_max, /*rescaling=*/true);
      if (range != kRowInRange)
        throw NonFiniteKernel(point_set, i, k - 1, q[i], false, range == kRowUnderflow);
    }
  }
  if (!st.ntk_diag.empty() && last == prog.n_ops)
    for (int64_t i = 0; i < st.n; ++i)
      if (check_ntk_diagonal(st.ntk_diag[size_t(i)], storage_max) != kRowInRange)
        throw NonFiniteKernel(point_set, i, prog.n_ops - 1, st.ntk_diag[size_t(i)], true);
}

template <class T>
RowStats row_stats(const ProgramView& prog, const T* x, int64_t n, int64_t d, bool with_ntk,
                   int threads, int point_set, SeriesTables series,
                   const DualKernelFn& dual_kernels) {
  const std::vector<Segment> segments = program_segments(prog);
  if (segments.size() > 1 && !dual_kernels)
    throw std::invalid_argument("the program has callback ops but no dual kernels were given");
  RowStats st;
  st.n = n;
  st.stride = row_stride(n);
  const size_t size = size_t(prog.n_ops + 1) * size_t(st.stride);
  st.q.assign(size, 1.0);  // padding rows: unit variance, harmless
  st.sq.assign(size, 1.0);
  st.rescale.assign(size, 0);
  if (with_ntk) st.ntk_diag.assign(size_t(st.stride), 0.0);
  const double inv_d = d > 0 ? 1.0 / double(d) : 0.0;
  const CpuKernels& kernels = cpu_kernels();
  const int64_t blocks = (n + kRowPad - 1) / kRowPad;
  double* q = st.q.data();
  double* sq = st.sq.data();
  double* ntk_diag = with_ntk ? st.ntk_diag.data() : nullptr;
  const int64_t stride = st.stride;
  std::vector<int32_t> scale_exp(size_t(n), 0);
  std::atomic<bool> any_scaled{false}, any_rescaled{false}, any_input_underflow{false};
  std::vector<uint8_t> input_underflow(size_t(n), 0);
  int32_t* rescale = st.rescale.data();
  const double* series_rows = copy_series_tables(prog, series, n, stride, st.series_copy);
  st.series = series_rows;
#pragma omp parallel for schedule(static) num_threads(std::min<int64_t>(threads, blocks)) \
    if (threads > 1 && blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i0 = b * kRowPad, i1 = std::min(n, i0 + kRowPad);
    for (int64_t i = i0; i < i1; ++i) {
      const T* row = x + i * d;
      double sum = 0.0;
      for (int64_t k = 0; k < d; ++k) sum += double(row[k]) * double(row[k]);
      q[i] = sum * inv_d;
      sq[i] = std::sqrt(q[i]);
      if (q[i] < kDoubleMinNormal) {  // rare: is the row really (near) zero?
        bool nonzero = false;
        for (int64_t k = 0; k < d; ++k) nonzero = nonzero || row[k] != T(0);
        if (input_variance_underflows(q[i], nonzero)) {
          input_underflow[size_t(i)] = 1;
          any_input_underflow.store(true, std::memory_order_relaxed);
        }
      }
      scale_exp[size_t(i)] = gemm_scale_exponent<T>(sum);
      if (scale_exp[size_t(i)] != 0) any_scaled.store(true, std::memory_order_relaxed);
    }
  }
  if (any_input_underflow.load()) st.input_underflow = std::move(input_underflow);
  // Segment by segment (program_segments): the rows' variances entering a callback op go through
  // the caller's dual kernels as one column (c = q1 = q2).
  for (size_t s = 0; s < segments.size(); ++s) {
    const Segment segment = segments[s];
    if (s > 0) {
      const int64_t k = segments[s - 1].end;
      // The caller's functions only see variances in range: the rows up to here are checked.
      check_row_stats<T>(prog, st, point_set, s > 1 ? segments[s - 2].end + 1 : 0, int(k));
      std::copy(q + k * stride, q + k * stride + n, q + (k + 1) * stride);
      dual_kernels(DualKernelBlock{int32_t(prog.ops[k].p[0]), n, 1, 1, q + (k + 1) * stride,
                                   ntk_diag, q + k * stride, nullptr});
      for (int64_t i = 0; i < n; ++i) sq[(k + 1) * stride + i] = std::sqrt(q[(k + 1) * stride + i]);
    }
    const ProgramView view = segment_view(prog, segment);
#pragma omp parallel for schedule(static) num_threads(std::min<int64_t>(threads, blocks)) \
    if (threads > 1 && blocks > 1)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * kRowPad;
      const RowTables tables{q + i0, sq + i0, stride, rescale + i0,
                             series_rows ? series_rows + i0 : nullptr};
      if (kernels.row_pass(view, kRowPad, tables.from_op(segment.begin),
                           ntk_diag ? ntk_diag + i0 : nullptr))
        any_rescaled.store(true, std::memory_order_relaxed);
    }
  }
  check_row_stats<T>(prog, st, point_set, segments.size() > 1 ? segments.end()[-2].end + 1 : 0,
                     prog.n_ops);
  if (any_scaled.load()) st.scale_exp = std::move(scale_exp);
  st.any_rescaled = any_rescaled.load();
  return st;
}

// x_i 2^-e_i for every row. Exact: a power of two only moves the exponent; scaled rows end up with
// norm ~1, so nothing overflows, and only entries below the type's smallest normal number times
// their row's norm (far below the dot product's rounding) can lose bits.
template <class T>
std::vector<T> scaled_rows(const T* x, int64_t n, int64_t d, const std::vector<int32_t>& exps,
                           int threads) {
  std::vector<T> out(size_t(n) * size_t(d));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n > 256)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d; ++k)
      out[size_t(i * d + k)] = std::ldexp(x[i * d + k], -exps[size_t(i)]);
  return out;
}

// Copies of finished tiles into the output. Outputs larger than the caches are written with
// non-temporal (streaming) stores: they bypass the cache and skip the read-for-ownership of every
// output line, which roughly doubles the write bandwidth; small outputs use plain stores so they
// stay in cache for the caller.
void copy_row(double* dst, const double* src, int64_t n, bool nontemporal) {
#if defined(__SSE2__)
  if (nontemporal) {
    int64_t j = 0;
    if ((reinterpret_cast<uintptr_t>(dst) & 15) && n > 0) {
      long long bits;
      std::memcpy(&bits, src, 8);
      _mm_stream_si64(reinterpret_cast<long long*>(dst), bits);
      j = 1;
    }
    for (; j + 2 <= n; j += 2) _mm_stream_pd(dst + j, _mm_loadu_pd(src + j));
    if (j < n) {
      long long bits;
      std::memcpy(&bits, src + j, 8);
      _mm_stream_si64(reinterpret_cast<long long*>(dst + j), bits);
    }
    return;
  }
#endif
  (void)nontemporal;
  std::memcpy(dst, src, size_t(n) * sizeof(double));
}

void copy_row(float* dst, const float* src, int64_t n, bool nontemporal) {
#if defined(__SSE2__)
  if (nontemporal) {
    int64_t j = 0;
    for (; j < n && (reinterpret_cast<uintptr_t>(dst + j) & 15); ++j) {
      int bits;
      std::memcpy(&bits, src + j, 4);
      _mm_stream_si32(reinterpret_cast<int*>(dst + j), bits);
    }
    for (; j + 4 <= n; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
    for (; j < n; ++j) {
      int bits;
      std::memcpy(&bits, src + j, 4);
      _mm_stream_si32(reinterpret_cast<int*>(dst + j), bits);
    }
    return;
  }
#endif
  (void)nontemporal;
  std::memcpy(dst, src, size_t(n) * sizeof(float));
}

void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// out[r0 + i][c0 + j] = tile[i][j] for a rows x cols tile (leading dimension ld_tile).
template <class T>
void store_tile(const T* tile, int64_t ld_tile, int64_t rows, int64_t cols, T* out, int64_t ld,
                int64_t r0, int64_t c0, bool nontemporal) {
  for (int64_t i = 0; i < rows; ++i) copy_row(out + (r0 + i) * ld + c0, tile + i * ld_tile, cols, nontemporal);
}

// out[c0 + j][r0 + i] = tile[i][j]: the mirror of a tile, transposed through a small L1 buffer so
// that the output is still written row by row.
template <class T>
void store_tile_transposed(const T* tile, int64_t ld_tile, int64_t rows, int64_t cols, T* out,
                           int64_t ld, int64_t r0, int64_t c0, bool nontemporal, T* scratch) {
  constexpr int64_t kBlock = 8;
  for (int64_t jb = 0; jb < cols; jb += kBlock) {
    const int64_t nb = std::min(kBlock, cols - jb);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < nb; ++j) scratch[j * rows + i] = tile[i * ld_tile + jb + j];
    for (int64_t j = 0; j < nb; ++j)
      copy_row(out + (c0 + jb + j) * ld + r0, scratch + j * rows, rows, nontemporal);
  }
}

// panel[r][c] = out[c][i0 + r] for r < rows, c in [c_begin, c_end): the part of a symmetric
// Gram's row panel left of its diagonal tile, read from the rows the earlier panels wrote, in
// blocks of 64 x 64 so that both sides stay in L1. The output may be misaligned (np.memmap at an
// odd offset): its runs are copied out bytewise, as copy_row writes them.
template <class T>
void panel_left_from_output(const T* out, int64_t ld, int64_t i0, int64_t rows, T* panel,
                            int64_t ld_panel, int64_t c_begin, int64_t c_end) {
  constexpr int64_t kBlock = 64;
  T run[kBlock];
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t nr = std::min(kBlock, rows - r0);
    for (int64_t c = c_begin; c < c_end; ++c) {
      std::memcpy(run, out + c * ld + i0 + r0, size_t(nr) * sizeof(T));
      for (int64_t r = 0; r < nr; ++r) panel[(r0 + r) * ld_panel + c] = run[r];
    }
  }
}

// tile[j][i] = tile[i][j] below the diagonal of a square tile whose strict upper part is set.
template <class T>
void mirror_upper_to_lower(T* tile, int64_t ld, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) tile[j * ld + i] = tile[i * ld + j];
}

template <class T>
void gemm_tile(const Blas& blas, const T* a_rows, int64_t rows, const T* b_rows, int64_t cols,
               int64_t d, T* c) {
  // Row-major C (rows x cols) = A Bᵀ is column-major Cᵀ = B Aᵀ, i.e. ?gemm('T', 'N') on the
  // column-major views (d x cols, d x rows) of the row-major point sets.
  if (d == 0) {
    std::fill(c, c + rows * cols, T(0));
    return;
  }
  const char ta = 'T', tb = 'N';
  const int m = int(cols), n = int(rows), k = int(d), ld = int(d), ldc = int(cols);
  const T one = 1, zero = 0;
  if constexpr (std::is_same<T, double>::value)
    blas.dgemm(&ta, &tb, &m, &n, &k, &one, b_rows, &ld, a_rows, &ld, &zero, c, &ldc);
  else
    blas.sgemm(&ta, &tb, &m, &n, &k, &one, b_rows, &ld, a_rows, &ld, &zero, c, &ldc);
}

// A tile of the work list: its first row and column, and its extent (the last ones are ragged).
struct TileSpan {
  int64_t i0, j0, rows, cols;
};

template <class T>
void run_tile(const CpuKernels& kernels, const TileArgs<T>& args) {
  if constexpr (std::is_same<T, double>::value)
    kernels.tile_f64(args);
  else
    kernels.tile_f32(args);
}

// A tile of a program with callback ops (program_segments): each segment but the last leaves
// (c, t) in the thread's state buffers (leading dimension ld), the caller's dual kernels turn
// them into the next segment's input, and the last segment writes the tile's outputs. q1, q2: the
// variance tables of the tile's first row and column (row stride stride1, stride2). The first
// segment starts from the input Gram, so its near-parallel entries are recomputed exactly from
// the input rows (exact_pair.hpp, for its ops only); after a callback they cannot be.
template <class T>
void tile_in_segments(const CpuKernels& kernels, TileArgs<T> args,
                      const std::vector<Segment>& segments, const double* q1, int64_t stride1,
                      const double* q2, int64_t stride2, double* c_state, double* t_state,
                      int64_t ld, const DualKernelFn& dual_kernels) {
  const TileArgs<T> whole = args;
  for (size_t s = 0; s < segments.size(); ++s) {
    const Segment segment = segments[s];
    const bool last = s + 1 == segments.size();
    args.prog = segment_view(whole.prog, segment);
    args.rows1 = whole.rows1.from_op(segment.begin);
    args.rows2 = whole.rows2.from_op(segment.begin);
    args.c_in = s > 0 ? c_state : nullptr;
    args.t_in = s > 0 ? t_state : nullptr;
    args.c_out = last ? nullptr : c_state;
    args.t_out = last ? nullptr : t_state;
    args.ld_state = ld;
    args.nngp = last ? whole.nngp : nullptr;
    args.ntk = last ? whole.ntk : nullptr;
    run_tile(kernels, args);
    if (last) break;
    const int64_t k = segment.end, rows = args.rows, cols = args.cols;
    if (args.strictly_upper)  // the entries not computed: mirrored, the diagonal its rows' own
      for (int64_t i = 0; i < rows; ++i) {
        c_state[i * ld + i] = q1[k * stride1 + i];
        if (t_state) t_state[i * ld + i] = 0.0;
        for (int64_t j = 0; j < i; ++j) {
          c_state[i * ld + j] = c_state[j * ld + i];
          if (t_state) t_state[i * ld + j] = t_state[j * ld + i];
        }
      }
    dual_kernels(DualKernelBlock{int32_t(whole.prog.ops[k].p[0]), rows, cols, ld, c_state,
                                 t_state, q1 + k * stride1, q2 + k * stride2});
  }
}

// Outputs at least this large are written with streaming stores (see copy_row).
constexpr int64_t kStreamingThreshold = int64_t(64) << 20;

}  // namespace

template <class T>
void compute_gram(const Program& prog, const T* x1, int64_t n1, const T* x2, int64_t n2,
                  int64_t n_features, T* nngp, int64_t ld_nngp, T* ntk, int64_t ld_ntk,
                  const Blas& blas, const GramOptions& options) {
  const bool symmetric = x2 == nullptr;
  if (symmetric) n2 = n1;
  if (n1 < 0 || n2 < 0 || n_features < 0) throw std::invalid_argument("negative size");
  if (n_features > INT_MAX || n1 > INT_MAX || n2 > INT_MAX)
    throw std::invalid_argument("sizes must fit the 32-bit BLAS interface");
  if ((nngp && ld_nngp < n2) || (ntk && ld_ntk < n2))
    throw std::invalid_argument("leading dimension smaller than the number of columns");
  if (std::is_same<T, double>::value ? !blas.dgemm : !blas.sgemm)
    throw std::invalid_argument("no BLAS gemm was provided for this dtype");
  if (n1 == 0 || n2 == 0 || (!nngp && !ntk)) return;

  const ProgramView pv = prog.view();
  const int threads = resolve_threads(options.num_threads);
  const bool with_ntk = ntk != nullptr;
  RowStats stats1 = row_stats(pv, x1, n1, n_features, with_ntk, threads, 1, options.series.set1,
                              options.dual_kernels);
  RowStats stats2_own;
  if (!symmetric)
    stats2_own = row_stats(pv, x2, n2, n_features, with_ntk, threads, 2, options.series.set2,
                           options.dual_kernels);
  const std::vector<Segment> segments = program_segments(pv);
  const bool has_callbacks = segments.size() > 1;
  const bool has_series = stats1.series != nullptr;
  if (has_series && (!options.series.profiles || options.series.profile_len < 2))
    throw std::invalid_argument("series: tail profiles required");
  if (has_series && options.series.fallbacks && !(options.series.fallback_above >= 1.0))
    throw std::invalid_argument("series: fallback_above must be >= 1");
  for (int k = 0; k < pv.n_ops; ++k)
    if (pv.ops[k].kind == kSeries) {
      if (options.series.profile_len < pv.ops[k].degree + 2)
        throw std::invalid_argument("series: tail profile shorter than degree + 2");
      if (int64_t(pv.ops[k].p[1]) >= options.series.profile_count)
        throw std::invalid_argument("series: no tail profile for op " + std::to_string(k));
      if (options.series.fallbacks) {
        const int64_t index = int64_t(pv.ops[k].p[1]);
        if (index >= options.series.fallback_count ||
            !fallback_record_valid(options.series.fallbacks + index * options.series.fallback_len,
                                   options.series.fallback_len))
          throw std::invalid_argument("series: malformed fallback record for op " +
                                      std::to_string(k));
      }
    }
  double series_bound = 0.0;
  int64_t fallback_pairs = 0;
  RowStats& stats2 = symmetric ? stats1 : stats2_own;
  const T* xb = symmetric ? x1 : x2;

  // The GEMM sees rescaled copies of the point sets that have rows outside its safe range.
  std::vector<T> x1_scaled, x2_scaled;
  const bool scaled = !stats1.scale_exp.empty() || !stats2.scale_exp.empty();
  if (scaled) {
    if (stats1.scale_exp.empty()) stats1.scale_exp.assign(size_t(n1), 0);
    if (stats2.scale_exp.empty()) stats2.scale_exp.assign(size_t(n2), 0);
    x1_scaled = scaled_rows(x1, n1, n_features, stats1.scale_exp, threads);
    if (!symmetric) x2_scaled = scaled_rows(x2, n2, n_features, stats2.scale_exp, threads);
  }
  const T* gemm_a = scaled ? x1_scaled.data() : x1;
  const T* gemm_b = scaled ? (symmetric ? x1_scaled.data() : x2_scaled.data()) : xb;

  // A tile larger than the problem would only allocate: clamp it (the same tiles, same results).
  const int64_t tile_needed = (std::max(n1, n2) + 15) / 16 * 16;
  const int64_t tile = std::min(options.tile > 0 ? options.tile : default_tile(n_features), tile_needed);
  const int64_t tiles1 = (n1 + tile - 1) / tile, tiles2 = (n2 + tile - 1) / tile;
  std::vector<TileSpan> work;
  work.reserve(size_t(symmetric ? tiles1 * (tiles1 + 1) / 2 : tiles1 * tiles2));
  for (int64_t i = 0; i < tiles1; ++i)
    for (int64_t j = symmetric ? i : 0; j < tiles2; ++j)
      work.push_back({i * tile, j * tile, std::min(tile, n1 - i * tile),
                      std::min(tile, n2 - j * tile)});
  const int64_t total = int64_t(work.size());

  const CpuKernels& kernels = cpu_kernels();
  const double inv_d = n_features > 0 ? 1.0 / double(n_features) : 0.0;
  const double snap_tol = snap_tolerance<T>(n_features);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> done{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  bool cancelled = false;
  auto last_poll = std::chrono::steady_clock::now();
  std::atomic<int> working{0};  // threads still taking tiles

  // Streaming stores need element-aligned destinations (a misaligned out=, e.g. np.memmap with an
  // odd offset, gets plain copies).
  const bool aligned = reinterpret_cast<uintptr_t>(nngp) % alignof(T) == 0 &&
                       reinterpret_cast<uintptr_t>(ntk) % alignof(T) == 0;
  const bool nontemporal = aligned &&
                           double(n1) * double(n2) * sizeof(T) * ((nngp ? 1 : 0) + (ntk ? 1 : 0)) >=
                               double(kStreamingThreshold);
  // Workers store finished tiles under a shared lock; the poll takes it exclusively.
  std::shared_mutex store_lock;
  const double* q_final = stats1.q.data() + size_t(pv.n_ops) * size_t(stats1.stride);

  auto record_error = [&]() {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!error) error = std::current_exception();
    stop.store(true);
  };
  // The poll, on the polling thread, when one is due: between tiles, and inside a tile before
  // each series-fallback entry (SeriesTails::interrupt). Returns whether the computation stops.
  auto poll_if_due = [&]() {
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_poll).count() < options.poll_interval)
      return false;
    last_poll = now;
    std::unique_lock<std::shared_mutex> polling(store_lock);
    if (options.poll(done.load(), total)) return false;
    cancelled = true;
    stop.store(true);
    return true;
  };

  // Row panels (GramOptions::panel_writes): the tiles of one tile row are computed into these
  // buffers (row-major, rows x n2), then the panel goes to the outputs row by row.
  const int64_t outputs = (nngp ? 1 : 0) + (ntk ? 1 : 0);
  const bool panels = options.panel_writes &&
                      double(tile) * double(n2) * double(sizeof(T)) * double(outputs) <=
                          double(kPanelBudget);
  std::vector<T> nngp_panel, ntk_panel;
  std::vector<int64_t> panel_first;  // work index of each tile row's first tile, then total
  if (panels) {
    if (nngp) nngp_panel.resize(size_t(tile * n2));
    if (ntk) ntk_panel.resize(size_t(tile * n2));
    for (int64_t w = 0; w < total; ++w)
      if (w == 0 || work[size_t(w)].i0 != work[size_t(w - 1)].i0) panel_first.push_back(w);
    panel_first.push_back(total);
  }

  // No more threads than tiles: each allocates its tile buffers (~3.5 MB at the default tile),
  // and an oversized team (num_threads=1024 on a small Gram) cost seconds and gigabytes.
  const int team_size = int(std::min<int64_t>(threads, std::max<int64_t>(total, 1)));
#pragma omp parallel num_threads(team_size) if (team_size > 1)
  {
    // Per thread: the tile's input Gram, its finished NNGP/NTK (tile by tile), a transpose
    // scratch, and with callback ops the (c, t) between segments.
    std::vector<T> gram, nngp_tile, ntk_tile, scratch;
    std::vector<double> c_state, t_state;
    SeriesTails tails{options.series.profiles, options.series.profile_len, 0.0,
                      options.series.fallbacks, options.series.fallback_len,
                      options.series.fallback_above, 0};
    try {
      gram.resize(size_t(tile * tile));
      if (nngp && !panels) nngp_tile.resize(size_t(tile * tile));
      if (ntk && !panels) ntk_tile.resize(size_t(tile * tile));
      if (!panels) scratch.resize(size_t(8 * tile));
      if (has_callbacks) c_state.resize(size_t(tile * tile));
      if (has_callbacks && with_ntk) t_state.resize(size_t(tile * tile));
    } catch (...) {
      record_error();
    }
#if defined(_OPENMP)
    const bool poller = omp_get_thread_num() == 0;
    const int team = omp_get_num_threads();
#else
    const bool poller = true;
    const int team = 1;
#endif
    using PollIfDue = decltype(poll_if_due);
    struct Interrupt {
      const std::atomic<bool>* stop;
      bool poll;
      PollIfDue* poll_when_due;
      static bool check(void* context) {
        auto* self = static_cast<Interrupt*>(context);
        return self->stop->load(std::memory_order_relaxed) ||
               (self->poll && (*self->poll_when_due)());
      }
    } interrupt{&stop, poller && bool(options.poll), &poll_if_due};
    tails.interrupt = &Interrupt::check;
    tails.interrupt_context = &interrupt;

    // Tile w of the work list into the given outputs (leading dimension ld_out), mirrored and
    // with its rows' own diagonal where it is a diagonal tile.
    auto compute_tile = [&](int64_t w, T* nngp_out, T* ntk_out, int64_t ld_out) {
      const auto [i0, j0, rows, cols] = work[size_t(w)];
      const bool diagonal_tile = symmetric && i0 == j0;
      gemm_tile(blas, gemm_a + i0 * n_features, rows, gemm_b + j0 * n_features, cols, n_features,
                gram.data());
      TileArgs<T> args{pv,
                       rows,
                       cols,
                       gram.data(),
                       cols,
                       inv_d,
                       snap_tol,
                       stats1.tables(i0),
                       stats2.tables(j0),
                       nngp_out,
                       ld_out,
                       ntk_out,
                       ld_out,
                       diagonal_tile,
                       scaled ? stats1.scale_exp.data() + i0 : nullptr,
                       scaled ? stats2.scale_exp.data() + j0 : nullptr,
                       // Series ops have no exact-pair form (exact_pair.hpp): not
                       // recomputed; with callbacks, only up to the first (tile_in_segments).
                       has_series ? nullptr : x1 + i0 * n_features,
                       has_series ? nullptr : xb + j0 * n_features,
                       n_features,
                       has_series ? &tails : nullptr};
      if (has_callbacks)
        tile_in_segments(kernels, args, segments, stats1.q.data() + i0, stats1.stride,
                         stats2.q.data() + j0, stats2.stride, c_state.data(),
                         with_ntk ? t_state.data() : nullptr, tile, options.dual_kernels);
      else
        run_tile(kernels, args);
      if (!diagonal_tile) return;
      for (int k = 0; k < 2; ++k) {
        T* finished = k == 0 ? nngp_out : ntk_out;
        if (!finished) continue;
        mirror_upper_to_lower(finished, ld_out, rows);
        for (int64_t i = 0; i < rows; ++i)
          finished[i * ld_out + i] = T(k == 0 ? q_final[i0 + i] : stats1.ntk_diag[size_t(i0 + i)]);
      }
    };

    // Tiles [first, last) of the work list, shared out dynamically; then, out of tiles, the
    // polling thread (the caller's, where Ctrl-C is seen) keeps polling until the others finish
    // theirs, which may be long (series-fallback entries).
    auto tile_loop = [&](int64_t first, int64_t last) {
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t w = first; w < last; ++w) {
        if (stop.load(std::memory_order_relaxed)) continue;
        try {
          if (panels) {
            const int64_t j0 = work[size_t(w)].j0;
            compute_tile(w, nngp ? nngp_panel.data() + j0 : nullptr,
                         ntk ? ntk_panel.data() + j0 : nullptr, n2);
          } else {
            compute_tile(w, nngp ? nngp_tile.data() : nullptr, ntk ? ntk_tile.data() : nullptr,
                         tile);
            const auto [i0, j0, rows, cols] = work[size_t(w)];
            std::shared_lock<std::shared_mutex> storing(store_lock);
            if (stop.load()) continue;  // the poll may have invalidated the outputs
            for (int k = 0; k < 2; ++k) {
              T* out = k == 0 ? nngp : ntk;
              if (!out) continue;
              const T* finished = (k == 0 ? nngp_tile : ntk_tile).data();
              const int64_t ld = k == 0 ? ld_nngp : ld_ntk;
              store_tile(finished, tile, rows, cols, out, ld, i0, j0, nontemporal);
              if (symmetric && i0 != j0)
                store_tile_transposed(finished, tile, rows, cols, out, ld, i0, j0, nontemporal,
                                      scratch.data());
            }
            if (nontemporal) store_fence();
          }
          done.fetch_add(1, std::memory_order_relaxed);
          if (poller && options.poll) poll_if_due();
        } catch (const TileStopped&) {
          // stop is set: by the poll (cancelled) or by another thread's error
        } catch (...) {
          record_error();
        }
      }
      working.fetch_sub(1);
      while (poller && options.poll && working.load() > 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        if (!stop.load()) poll_if_due();
      }
    };

    if (!panels) {
      working.fetch_add(1);
#pragma omp barrier
      tile_loop(0, total);
    } else {
      for (size_t p = 0; p + 1 < panel_first.size(); ++p) {
#pragma omp single
        working.store(team);
        tile_loop(panel_first[p], panel_first[p + 1]);
#pragma omp barrier
        // Every thread sees the same stop here: it is only set inside the tile loop.
        if (stop.load()) continue;
        const int64_t i0 = work[size_t(panel_first[p])].i0;
        const int64_t rows = work[size_t(panel_first[p])].rows;
        if (symmetric && i0 > 0) {
#pragma omp for schedule(static)
          for (int64_t c = 0; c < i0; c += 64) {
            if (nngp)
              panel_left_from_output(nngp, ld_nngp, i0, rows, nngp_panel.data(), n2, c,
                                     std::min(c + 64, i0));
            if (ntk)
              panel_left_from_output(ntk, ld_ntk, i0, rows, ntk_panel.data(), n2, c,
                                     std::min(c + 64, i0));
          }
        }
        // The threads take alternate rows, so that the output's pages are first touched in
        // order (the kernel then maps a large folio per fault); the next panels read them back.
#pragma omp for schedule(static, 1) nowait
        for (int64_t r = 0; r < rows; ++r) {
          if (nngp)
            copy_row(nngp + (i0 + r) * ld_nngp, nngp_panel.data() + r * n2, n2, nontemporal);
          if (ntk) copy_row(ntk + (i0 + r) * ld_ntk, ntk_panel.data() + r * n2, n2, nontemporal);
        }
        if (nontemporal) store_fence();
#pragma omp barrier
      }
    }
    if (has_series) {
      std::lock_guard<std::mutex> lock(error_mutex);
      series_bound = std::max(series_bound, tails.max_bound);
      fallback_pairs += tails.fallback_pairs;
    }
  }
  if (options.series.max_tail_bound) *options.series.max_tail_bound = series_bound;
  if (options.series.fallback_pairs) *options.series.fallback_pairs = fallback_pairs;
  if (error) std::rethrow_exception(error);
  if (cancelled) throw Cancelled();
  if (options.poll && !options.poll(total, total)) throw Cancelled();
}

template <class T>
void compute_diagonal(const Program& prog, const T* x, int64_t n, int64_t n_features, T* nngp,
                      T* ntk, int num_threads, SeriesTables series,
                      const DualKernelFn& dual_kernels) {
  if (n < 0 || n_features < 0) throw std::invalid_argument("negative size");
  if (n == 0 || (!nngp && !ntk)) return;
  const ProgramView pv = prog.view();
  RowStats st = row_stats(pv, x, n, n_features, ntk != nullptr, resolve_threads(num_threads), 1,
                          series, dual_kernels);
  const double* q_final = st.q.data() + size_t(pv.n_ops) * size_t(st.stride);
  for (int64_t i = 0; i < n; ++i) {
    if (nngp) nngp[i] = T(q_final[i]);
    if (ntk) ntk[i] = T(st.ntk_diag[size_t(i)]);
  }
}

template void compute_gram<double>(const Program&, const double*, int64_t, const double*, int64_t,
                                   int64_t, double*, int64_t, double*, int64_t, const Blas&,
                                   const GramOptions&);
template void compute_gram<float>(const Program&, const float*, int64_t, const float*, int64_t,
                                  int64_t, float*, int64_t, float*, int64_t, const Blas&,
                                  const GramOptions&);
template void compute_diagonal<double>(const Program&, const double*, int64_t, int64_t, double*,
                                       double*, int, SeriesTables, const DualKernelFn&);
template void compute_diagonal<float>(const Program&, const float*, int64_t, int64_t, float*, float*,
                                      int, SeriesTables, const DualKernelFn&);
template double snap_tolerance<double>(int64_t);
template double snap_tolerance<float>(int64_t);

}  // namespace ntkfast
