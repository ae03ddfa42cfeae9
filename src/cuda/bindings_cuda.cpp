// bindings_cuda.cpp -- the pybind11 binding of the CUDA engine (module ntkfast._cuda).
//
// A separate extension module so that `import ntkfast` works where CUDA is missing; it is imported
// only when the CUDA backend is asked for. Like the CPU binding it only unpacks arguments, releases
// the GIL around the engine and turns C++ failures into Python exceptions. The engine's Python face
// is one class, GramPlan (gram_plan.hpp): device memory is CuPy's and arrives as raw addresses
// (ints) with the caller's cudaStream_t and CuPy's cuBLAS handle; host outputs arrive as NumPy
// arrays. _schedule and _simulate are test hooks: the tile schedule and the tile loop
// (tile_schedule.hpp) run on the CPU against an emulation of the kernels' contract.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cublas_runtime.hpp"
#include "cuda_engine.hpp"
#include "gram_plan.hpp"
#include "ntkfast/layer_math.hpp"
#include "ntkfast/row_step.hpp"
#include "ntkfast/series_math.hpp"
#include "python_poll.hpp"
#include "tile_schedule.hpp"

namespace py = pybind11;
namespace nc = ntkfast::cuda;

#ifndef NTKFAST_CUDA_ARCHS
#define NTKFAST_CUDA_ARCHS "unknown"
#endif
#ifndef NTKFAST_CUDA_TOOLKIT
#define NTKFAST_CUDA_TOOLKIT "unknown"
#endif

namespace {

using OpTuple = std::tuple<int, int, int, std::vector<double>>;

// The ops in the CPU binding's format, (kind, degree, offset, params), validated by the caller
// through ntkfast._core.Program (the pool offsets of polynomial tables included) before they
// reach the device; only what keeps this packing well-formed is checked here.
std::string pack(const std::vector<OpTuple>& ops) {
  std::vector<ntkfast::LayerOp> out;
  out.reserve(ops.size());
  for (const auto& [kind, degree, offset, params] : ops) {
    if (params.size() > 6) throw std::invalid_argument("program op: at most 6 parameters");
    if (kind < 0 || kind >= ntkfast::kNumOpKinds) throw std::invalid_argument("program op: unknown kind");
    const int max_degree = kind == ntkfast::kSeries ? ntkfast::kMaxSeriesDegree : ntkfast::kMaxDegree;
    if (degree < 0 || degree > max_degree) throw std::invalid_argument("program op: bad degree");
    ntkfast::LayerOp op{};
    op.kind = kind;
    op.degree = degree;
    op.offset = offset;
    for (size_t k = 0; k < params.size(); ++k) op.p[k] = params[k];
    out.push_back(op);
  }
  return nc::pack_ops(out);
}

nc::OutputKind parse_outputs(const std::string& name) {
  if (name == "device") return nc::OutputKind::kDevice;
  if (name == "host") return nc::OutputKind::kHost;
  if (name == "none") return nc::OutputKind::kNone;
  throw std::invalid_argument("outputs must be 'device', 'host' or 'none', got '" + name + "'");
}

// A writable, C-contiguous n1 x n2 NumPy array (np.memmap included) of the storage type.
py::array host_output(const py::object& obj, int64_t n1, int64_t n2, int itemsize, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw std::invalid_argument(std::string(name) + ": host outputs must be NumPy arrays");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  const int want = itemsize == 4 ? py::dtype::of<float>().normalized_num()
                                 : py::dtype::of<double>().normalized_num();
  if (a.ndim() != 2 || a.shape(0) != n1 || a.shape(1) != n2 || a.dtype().normalized_num() != want ||
      a.dtype().byteorder() == '>' || !(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) +
                                ": must be a C-contiguous native array of the plan's shape and dtype");
  a.mutable_data();  // raises if read-only
  return a;
}

using ntkfast::python::PythonPoll;  // the CPU binding's poll (src/cpp/python_poll.hpp)

using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

// A 2-D float64 array (None: empty) as (values, row length).
std::pair<std::vector<double>, int64_t> matrix_values(const std::optional<F64Array>& a,
                                                      const char* name) {
  if (!a) return {{}, 0};
  if (a->ndim() != 2) throw std::invalid_argument(std::string(name) + " must be 2-D");
  return {std::vector<double>(a->data(), a->data() + a->size()), int64_t(a->shape(1))};
}

nc::HostSeriesTable host_table(const std::optional<F64Array>& a, const char* name) {
  if (!a) return {};
  if (a->ndim() != 2) throw std::invalid_argument(std::string(name) + " must be 2-D");
  return {a->data(), int64_t(a->shape(0)), int64_t(a->shape(1))};
}

// row_stats with the Series tables (NumPy arrays, read with the GIL held; the copy is done when
// row_stats returns).
int64_t plan_row_stats(nc::GramPlan& plan, uintptr_t x1, uintptr_t x2, uintptr_t workspace,
                       uintptr_t stream, const std::optional<F64Array>& series1,
                       const std::optional<F64Array>& series2) {
  const nc::HostSeriesTable t1 = host_table(series1, "series1"), t2 = host_table(series2, "series2");
  py::gil_scoped_release release;
  return plan.row_stats(x1, x2, workspace, stream, t1, t2);
}

std::unique_ptr<nc::GramPlan> make_plan(const std::vector<OpTuple>& ops, std::vector<double> pool,
                                        const std::string& dtype, int64_t n1, int64_t n2, int64_t d,
                                        bool symmetric, bool nngp, bool ntk, int64_t tile,
                                        const std::string& outputs, int device, int64_t free_bytes,
                                        double snap_tol, int64_t series_rows,
                                        const std::optional<F64Array>& profiles,
                                        const std::optional<F64Array>& fallbacks,
                                        double fallback_above) {
  nc::PlanSpec spec;
  spec.ops = pack(ops);
  spec.pool = std::move(pool);
  spec.dtype = nc::parse_dtype(dtype);
  spec.n1 = n1;
  spec.n2 = n2;
  spec.d = d;
  spec.symmetric = symmetric;
  spec.nngp = nngp;
  spec.ntk = ntk;
  spec.tile = tile;
  spec.outputs = parse_outputs(outputs);
  spec.device = device;
  spec.free_bytes = free_bytes;
  spec.snap_tol = snap_tol;
  spec.series_rows = series_rows;
  std::tie(spec.profiles, spec.profile_len) = matrix_values(profiles, "profiles");
  std::tie(spec.fallbacks, spec.fallback_len) = matrix_values(fallbacks, "fallbacks");
  spec.fallback_above = fallback_above;
  return std::make_unique<nc::GramPlan>(std::move(spec));
}

void plan_run(nc::GramPlan& plan, uintptr_t x1, uintptr_t x2, uintptr_t workspace, uintptr_t scaled,
              const py::object& nngp, const py::object& ntk, uintptr_t pinned, uintptr_t stream,
              uintptr_t cublas, std::optional<py::function> progress) {
  const nc::PlanSpec& spec = plan.spec();
  const bool host = plan.schedule().kind() == nc::OutputKind::kHost;
  const int itemsize = spec.dtype == nc::Dtype::kFloat32 ? 4 : 8;
  nc::RunArgs args;
  args.x1 = x1;
  args.x2 = x2;
  args.workspace = workspace;
  args.scaled = scaled;
  args.pinned = pinned;
  args.stream = stream;
  args.cublas = cublas;
  std::vector<py::array> host_outputs;
  int o = 0;
  const std::tuple<bool, const py::object*, const char*> outs[] = {{spec.nngp, &nngp, "nngp"},
                                                                   {spec.ntk, &ntk, "ntk"}};
  for (const auto& [wanted, obj, name] : outs) {
    if (!wanted) {
      if (!obj->is_none()) throw std::invalid_argument(std::string(name) + ": not part of the plan");
      continue;
    }
    if (host) {
      py::array a = host_output(*obj, plan.schedule().n1(), plan.schedule().n2(), itemsize, name);
      args.out[o] = reinterpret_cast<uintptr_t>(a.mutable_data());
      host_outputs.push_back(a);
    } else {
      args.out[o] = obj->cast<uintptr_t>();
    }
    ++o;
  }
  PythonPoll poll(std::move(progress), std::move(host_outputs));
  args.loop.wait_at_end = poll.has_progress();
  args.loop.poll = poll.callback();
  poll.run_released<nc::Cancelled>([&] { plan.run(args); });
}

// ------------------------------------------------------------------------------------------------
// Test hooks.

py::dict step_record(const nc::TileStep& s, int n_outputs) {
  py::dict r;
  r["index"] = s.index;
  r["ti"] = s.ti;
  r["tj"] = s.tj;
  r["i0"] = s.i0;
  r["j0"] = s.j0;
  r["rows"] = s.rows;
  r["cols"] = s.cols;
  r["diagonal"] = s.diagonal;
  r["slot"] = s.slot;
  py::list targets, staged;
  for (int o = 0; o < n_outputs; ++o) {
    const nc::TileTarget& t = s.target[o];
    targets.append(py::make_tuple(t.offset, t.ld, t.mirror_offset, t.mirror_ld));
    py::list blocks;
    for (int b = 0; b < s.n_staged; ++b) {
      const nc::StagedBlock& k = s.staged[o][b];
      blocks.append(py::make_tuple(k.offset, k.rows, k.cols, k.row0, k.col0));
    }
    staged.append(blocks);
  }
  r["targets"] = targets;
  r["staged"] = staged;
  return r;
}

py::list schedule_records(int64_t n1, int64_t n2, int64_t tile, bool symmetric,
                          const std::string& outputs, int n_outputs) {
  const nc::TileSchedule s(n1, n2, tile, symmetric, parse_outputs(outputs), n_outputs);
  py::list out;
  s.for_each([&](const nc::TileStep& step) { out.append(step_record(step, n_outputs)); });
  return out;
}

// An executor that emulates the device side in host memory, eagerly: the "kernel" writes code(i, j)
// = sign · (1 + i·n2 + j) (sign + for output 0, - for output 1) where cuda_engine.hpp's contract
// puts entry (i, j) (direct and mirror writes, a diagonal tile's j > i only and j == i from the
// "per-row table"), the "D2H copy" moves the staged blocks to the pinned slot at once, and retire
// copies the pinned blocks into the outputs. Every write is bounds-checked and counted, so a wrong
// offset, a slot reused too early or a tile written twice shows in the outputs or the counts.
class SimulatedExecutor final : public nc::TileExecutor {
 public:
  SimulatedExecutor(const nc::TileSchedule& s, std::vector<double*> out, std::vector<int32_t*> writes)
      : s_(s), out_(std::move(out)), writes_(std::move(writes)),
        host_(s.kind() == nc::OutputKind::kHost) {
    for (int slot = 0; slot < 2; ++slot) {
      staging_[slot].assign(size_t(s.slot_elements()), std::nan(""));
      pinned_[slot].assign(size_t(s.slot_elements()), std::nan(""));
    }
  }

  void enqueue(const nc::TileStep& step) override {
    log.push_back({"enqueue", step.index});
    if (step.index != enqueued_) throw std::logic_error("tiles enqueued out of order");
    ++enqueued_;
    if (host_) {
      if (last_in_slot_[step.slot] >= 0 && last_in_slot_[step.slot] >= retired_)
        throw std::logic_error("a staging slot was reused before its previous tile was retired");
      last_in_slot_[step.slot] = step.index;
    }
    max_queued = std::max(max_queued, enqueued_ - retired_);
    const int64_t n2 = s_.n2();
    for (int o = 0; o < s_.n_outputs(); ++o) {
      const nc::TileTarget& t = step.target[o];
      const double sign = o == 0 ? 1.0 : -1.0;
      for (int64_t i = 0; i < step.rows; ++i)
        for (int64_t j = 0; j < step.cols; ++j) {
          if (step.diagonal && j < i) continue;
          const int64_t gi = step.i0 + i, gj = step.j0 + j;
          const double v = sign * double(1 + gi * n2 + gj);
          put(o, step, t.offset + i * t.ld + j, v);
          if (t.mirror_offset >= 0 && !(step.diagonal && j == i))
            put(o, step, t.mirror_offset + j * t.mirror_ld + i, v);
        }
      if (host_)
        for (int b = 0; b < step.n_staged; ++b) {
          const nc::StagedBlock& k = step.staged[o][b];
          check_range(k.offset, k.rows * k.cols, s_.slot_elements(), "staged block");
          std::copy_n(staging_[step.slot].begin() + k.offset, k.rows * k.cols,
                      pinned_[step.slot].begin() + k.offset);
        }
    }
  }

  void retire(const nc::TileStep& step) override {
    log.push_back({"retire", step.index});
    if (step.index != retired_) throw std::logic_error("tiles retired out of order");
    ++retired_;
    if (!host_) return;
    const int64_t n1 = s_.n1(), n2 = s_.n2();
    for (int o = 0; o < s_.n_outputs(); ++o)
      for (int b = 0; b < step.n_staged; ++b) {
        const nc::StagedBlock& k = step.staged[o][b];
        for (int64_t r = 0; r < k.rows; ++r)
          for (int64_t c = 0; c < k.cols; ++c) {
            const int64_t row = k.row0 + r, col = k.col0 + c;
            if (row < 0 || row >= n1 || col < 0 || col >= n2)
              throw std::logic_error("a staged block lands outside the output");
            out_[o][row * n2 + col] = pinned_[step.slot][size_t(k.offset + r * k.cols + c)];
            ++writes_[o][row * n2 + col];
          }
      }
  }

  void synchronize() noexcept override { log.push_back({"synchronize", -1}); }

  std::vector<std::pair<std::string, int64_t>> log;
  int64_t max_queued = 0;

 private:
  static void check_range(int64_t offset, int64_t count, int64_t size, const char* what) {
    if (offset < 0 || count < 0 || offset + count > size)
      throw std::logic_error(std::string(what) + " outside its buffer");
  }

  void put(int o, const nc::TileStep& step, int64_t offset, double v) {
    if (host_) {
      check_range(offset, 1, s_.slot_elements(), "a write into the staging slot");
      staging_[step.slot][size_t(offset)] = v;
    } else {
      check_range(offset, 1, s_.n1() * s_.n2(), "a write into the output");
      out_[o][offset] = v;
      ++writes_[o][offset];
    }
  }

  const nc::TileSchedule& s_;
  std::vector<double*> out_;
  std::vector<int32_t*> writes_;
  bool host_;
  std::vector<double> staging_[2], pinned_[2];
  int64_t last_in_slot_[2] = {-1, -1};
  int64_t enqueued_ = 0, retired_ = 0;
};

py::dict simulate(int64_t n1, int64_t n2, int64_t tile, bool symmetric, const std::string& outputs,
                  const std::vector<py::object>& out,
                  std::optional<py::function> progress, double poll_interval) {
  const nc::TileSchedule s(n1, n2, tile, symmetric, parse_outputs(outputs), int(out.size()));
  std::vector<double*> ptrs;
  std::vector<py::array_t<int32_t>> writes;
  std::vector<int32_t*> write_ptrs;
  std::vector<py::array> host_outputs;
  for (const auto& a : out) {
    py::array arr = host_output(a, s.n1(), s.n2(), 8, "out");
    ptrs.push_back(static_cast<double*>(arr.mutable_data()));
    if (s.kind() == nc::OutputKind::kHost) host_outputs.push_back(arr);
    py::array_t<int32_t> w({s.n1(), s.n2()});
    std::fill_n(w.mutable_data(), s.n1() * s.n2(), 0);
    write_ptrs.push_back(w.mutable_data());
    writes.push_back(w);
  }
  SimulatedExecutor executor(s, ptrs, write_ptrs);
  nc::LoopOptions options;
  options.poll_interval = poll_interval;
  PythonPoll poll(std::move(progress), std::move(host_outputs));
  options.wait_at_end = poll.has_progress();
  options.poll = poll.callback();
  py::dict result;
  result["total"] = s.total();
  result["writes"] = writes;
  auto finish = [&] {
    py::list log;
    for (const auto& [what, index] : executor.log) log.append(py::make_tuple(what, index));
    result["log"] = log;
    result["max_queued"] = executor.max_queued;
  };
  // An exception (a cancellation by the poll, a logic error of the loop) is returned as
  // result["error"], with the log up to it.
  result["error"] = py::none();
  try {
    poll.run_released<nc::Cancelled>([&] { nc::run_tile_loop(s, executor, options); });
  } catch (py::error_already_set& e) {
    result["error"] = e.value();
  } catch (const nc::Cancelled&) {
    result["error"] = py::str("Cancelled");
  } catch (const std::logic_error& e) {
    result["error"] = py::str(std::string("logic error: ") + e.what());
  }
  finish();
  return result;
}

}  // namespace

// Test hook: a Gram of a program with Series ops computed on the host by the CUDA engine's own
// per-entry code (series_math.hpp's series_program_entry, which tile_kernel<T, WithNtk, true> and
// series_fallback_kernel run), one entry at a time: the rows' variances ||x||²/d summed in order,
// the row recursion as row_pass_kernel runs it (no rescaling: variances in range), the input
// Gram summed in order and snapped, every entry with the fallback where it needs it, the diagonal
// of a symmetric Gram from the row recursion. Float64 only; N small. Returns (nngp, ntk, largest
// tail bound, fallback entries), the bound and count as the plan's series_report (a symmetric
// Gram's strictly upper triangle).
py::tuple series_gram_host(const std::vector<OpTuple>& op_tuples, const std::vector<double>& pool,
                           const F64Array& x1, const std::optional<F64Array>& x2_given,
                           const F64Array& tables1, const std::optional<F64Array>& tables2_given,
                           const F64Array& profiles, const std::optional<F64Array>& fallbacks,
                           double fallback_above, double snap_tol) {
  namespace nt = ntkfast;
  const std::string packed = pack(op_tuples);
  std::vector<nt::LayerOp> ops(packed.size() / sizeof(nt::LayerOp));
  if (!ops.empty()) std::memcpy(ops.data(), packed.data(), packed.size());
  const int n_ops = int(ops.size());
  const bool symmetric = !x2_given;
  const F64Array& x2 = symmetric ? x1 : *x2_given;
  const F64Array& tables2 = symmetric ? tables1 : *tables2_given;
  if (x1.ndim() != 2 || x2.ndim() != 2 || x1.shape(1) != x2.shape(1) || tables1.ndim() != 2 ||
      tables2.ndim() != 2 || tables1.shape(1) < x1.shape(0) || tables2.shape(1) < x2.shape(0) ||
      profiles.ndim() != 2)
    throw std::invalid_argument("_series_gram_host: inconsistent shapes");
  const int64_t d = x1.shape(1);
  const double inv_d = d > 0 ? 1.0 / double(d) : 0.0;
  const nt::FallbackRules rules = nt::make_fallback_rules();
  const nt::SeriesData data{profiles.data(), int64_t(profiles.shape(1)),
                            fallbacks ? fallbacks->data() : nullptr,
                            fallbacks ? int64_t(fallbacks->shape(1)) : 0, fallback_above, &rules};
  struct Set {
    int64_t n, stride;
    const double* x;
    const double* table;
    std::vector<double> q, sq, ntk;
  };
  Set sets[2] = {{x1.shape(0), int64_t(tables1.shape(1)), x1.data(), tables1.data(), {}, {}, {}},
                 {x2.shape(0), int64_t(tables2.shape(1)), x2.data(), tables2.data(), {}, {}, {}}};
  for (Set& st : sets) {  // row_norms_kernel and row_pass_kernel, one row at a time
    st.q.assign(size_t((n_ops + 1) * st.stride), 1.0);
    st.sq.assign(st.q.size(), 1.0);
    st.ntk.assign(size_t(st.n), 0.0);
    for (int64_t i = 0; i < st.n; ++i) {
      double sum = 0.0;
      for (int64_t k = 0; k < d; ++k) sum = sum + st.x[i * d + k] * st.x[i * d + k];
      st.q[size_t(i)] = sum * inv_d;
      st.sq[size_t(i)] = std::sqrt(st.q[size_t(i)]);
      double t = 0.0;
      for (int k = 0; k < n_ops; ++k) {
        const size_t at = size_t(k * st.stride + i), next = at + size_t(st.stride);
        if (ops[size_t(k)].kind == nt::kSeries) {
          const double* m = st.table + int64_t(ops[size_t(k)].p[0]) * st.stride + i;
          nt::series_row_step<true>(m[0], m[st.stride], t, st.q[next], st.sq[next]);
        } else {
          nt::row_step<true>(ops[size_t(k)], pool.data(), st.q[at], st.sq[at], t, st.q[next],
                             st.sq[next]);
        }
      }
      st.ntk[size_t(i)] = t;
    }
  }
  const int64_t n1 = sets[0].n, n2 = sets[1].n;
  py::array_t<double> nngp({n1, n2}), ntk({n1, n2});
  double* kn = nngp.mutable_data();
  double* kt = ntk.mutable_data();
  nt::SeriesTally tally;
  for (int64_t i = 0; i < n1; ++i)
    for (int64_t j = symmetric ? i : 0; j < n2; ++j) {
      if (symmetric && j == i) {
        kn[i * n2 + i] = sets[0].q[size_t(n_ops * sets[0].stride + i)];
        kt[i * n2 + i] = sets[0].ntk[size_t(i)];
        continue;
      }
      double dot = 0.0;
      for (int64_t k = 0; k < d; ++k) dot = dot + sets[0].x[i * d + k] * sets[1].x[j * d + k];
      const double scale = nt::pair_scale(sets[0].q[size_t(i)], sets[1].q[size_t(j)],
                                          sets[0].sq[size_t(i)], sets[1].sq[size_t(j)]);
      double c = nt::snap_input_correlation(dot * inv_d, scale, snap_tol), t = 0.0;
      const nt::SeriesRow r1{sets[0].q.data() + i, sets[0].sq.data() + i, nullptr,
                             sets[0].table + i, sets[0].stride};
      const nt::SeriesRow r2{sets[1].q.data() + j, sets[1].sq.data() + j, nullptr,
                             sets[1].table + j, sets[1].stride};
      nt::SeriesTally scratch;  // the first pass: as tile_kernel, which only marks fallbacks
      double c0 = c, t0 = t;
      if (!nt::series_program_entry<true, false>(ops.data(), n_ops, pool.data(), data, r1, r2, c0,
                                                  t0, scratch))
        nt::series_program_entry<true, true>(ops.data(), n_ops, pool.data(), data, r1, r2, c, t,
                                             scratch);
      else
        c = c0, t = t0;
      tally.bound = std::max(tally.bound, scratch.bound);
      tally.fallbacks += scratch.fallbacks;
      kn[i * n2 + j] = c;
      kt[i * n2 + j] = t;
      if (symmetric) {
        kn[j * n2 + i] = c;
        kt[j * n2 + i] = t;
      }
    }
  return py::make_tuple(nngp, ntk, tally.bound, tally.fallbacks);
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "ntkfast's compiled CUDA engine (private; use ntkfast.gram(..., backend='cuda')).";

  m.def("probe", &nc::probe, py::arg("device"), py::call_guard<py::gil_scoped_release>(),
        "An empty string if the kernels can run on this device, else why not.");
  m.def("device_name", &nc::device_name, py::arg("device"), py::call_guard<py::gil_scoped_release>());
  m.def("max_tile_rows", &nc::max_tile_rows);
  m.def("build_info", []() {
    py::dict info;
    info["architectures"] = std::string(NTKFAST_CUDA_ARCHS);
    info["toolkit"] = std::string(NTKFAST_CUDA_TOOLKIT);
    info["runtime_version"] = nc::runtime_version();
    info["runtime"] = "static";
    info["cublas"] = nc::cublas_soname() + " (resolved at run time)";
    return info;
  });
  m.def("driver_version", &nc::driver_version, py::call_guard<py::gil_scoped_release>());
  m.def("pack_program", [](const std::vector<OpTuple>& ops) { return py::bytes(pack(ops)); },
        py::arg("ops"), "The LayerOp array (program.hpp layout, 64 bytes per op) of a lowered program.");

  py::class_<nc::GramPlan>(m, "GramPlan",
                           "One Gram (or per-row) computation on one device: the workspace layout, "
                           "the per-row pass and the tile loop (src/cuda/gram_plan.hpp).")
      .def(py::init(&make_plan), py::kw_only(), py::arg("ops"), py::arg("pool"), py::arg("dtype"),
           py::arg("n1"), py::arg("n2"), py::arg("d"), py::arg("symmetric"), py::arg("nngp"),
           py::arg("ntk"), py::arg("tile"), py::arg("outputs"), py::arg("device"),
           py::arg("free_bytes"), py::arg("snap_tol"), py::arg("series_rows") = 0,
           py::arg("profiles") = py::none(), py::arg("fallbacks") = py::none(),
           py::arg("fallback_above") = 1.0)
      .def_property_readonly("tile", &nc::GramPlan::tile)
      .def_property_readonly("tiles_total", [](const nc::GramPlan& p) { return p.schedule().total(); })
      .def_property_readonly("workspace_bytes", &nc::GramPlan::workspace_bytes)
      .def_property_readonly("pinned_bytes", &nc::GramPlan::pinned_bytes)
      .def_property_readonly("scaled_bytes", &nc::GramPlan::scaled_bytes)
      .def("row_stats", &plan_row_stats, py::kw_only(), py::arg("x1"), py::arg("x2"),
           py::arg("workspace"), py::arg("stream"), py::arg("series1") = py::none(),
           py::arg("series2") = py::none(),
           "Per-row tables of both point sets (with Series ops from their tables series1, "
           "series2: (series_rows, >= n) float64); synchronizes the stream; raises "
           "EngineNonFinite. Returns the bytes of device memory the scaled GEMM copies need "
           "(usually 0).")
      .def_property_readonly("has_series", &nc::GramPlan::has_series)
      .def(
          "series_report",
          [](const nc::GramPlan& plan, uintptr_t workspace, uintptr_t stream) {
            const nc::GramPlan::SeriesReport r = plan.series_report(workspace, stream);
            return std::make_tuple(r.max_tail_bound, r.fallback_pairs);
          },
          py::kw_only(), py::arg("workspace"), py::arg("stream"),
          py::call_guard<py::gil_scoped_release>(),
          "After run, with Series ops: (the largest tail bound left, the entries the fallback "
          "computed); synchronizes the stream.")
      .def("run", &plan_run, py::kw_only(), py::arg("x1"), py::arg("x2"), py::arg("workspace"),
           py::arg("scaled"), py::arg("nngp"), py::arg("ntk"), py::arg("pinned"), py::arg("stream"),
           py::arg("cublas"), py::arg("progress"),
           "Every tile. Outputs: device addresses (outputs='device') or NumPy arrays ('host').")
      .def("write_diagonal", &nc::GramPlan::write_diagonal, py::kw_only(), py::arg("workspace"),
           py::arg("nngp"), py::arg("ntk"), py::arg("stream"),
           py::call_guard<py::gil_scoped_release>());

  m.def("choose_tile",
        [](int64_t requested, int64_t n1, int64_t n2, int itemsize, const std::string& outputs,
           int n_outputs, bool symmetric, int64_t free_bytes) {
          return nc::choose_tile(requested, n1, n2, itemsize, parse_outputs(outputs), n_outputs,
                                 symmetric, free_bytes, nc::max_tile_rows());
        },
        py::arg("requested"), py::arg("n1"), py::arg("n2"), py::arg("itemsize"), py::arg("outputs"),
        py::arg("n_outputs"), py::arg("symmetric"), py::arg("free_bytes"),
        "The tile edge a GramPlan uses (tile_schedule.hpp): `requested` if > 0, else the default "
        "for the output kind ('device' or 'host') and the free device memory (0: unknown).");
  m.def("_schedule", &schedule_records, py::arg("n1"), py::arg("n2"), py::arg("tile"),
        py::arg("symmetric"), py::arg("outputs"), py::arg("n_outputs"),
        "Test hook: the tile records of a schedule (tile_schedule.hpp), in order.");
  m.def("_simulate", &simulate, py::arg("n1"), py::arg("n2"), py::arg("tile"), py::arg("symmetric"),
        py::arg("outputs"), py::arg("out"), py::arg("progress") = py::none(),
        py::arg("poll_interval") = 0.0,
        "Test hook: the tile loop on the CPU with an emulated device (bindings_cuda.cpp).");
  m.def("_series_gram_host", &series_gram_host, py::arg("ops"), py::arg("pool"), py::arg("x1"),
        py::arg("x2"), py::arg("tables1"), py::arg("tables2"), py::arg("profiles"),
        py::arg("fallbacks"), py::arg("fallback_above"), py::arg("snap_tol"),
        "Test hook: a float64 Gram of a program with Series ops by the CUDA engine's per-entry "
        "code, run on the host.");
  m.def("_load_cublas", []() { return nc::cublas_api().library; },
        "Test hook: the file cuBLAS is resolved from (RuntimeError if it cannot be).");
  m.attr("DEVICE_TILE") = nc::kDeviceTile;
  m.attr("STAGING_SLOT_BYTES") = nc::kStagingSlotBytes;

  py::register_exception<nc::Cancelled>(m, "Cancelled", PyExc_KeyboardInterrupt);
  // CUDA failures: RuntimeError (the default for std::runtime_error) with the call and file:line;
  // out of device memory: MemoryError. Non-finite per-row variances: the CPU engine's
  // ntkfast._errors.EngineNonFinite, which the Python layer turns into NonFiniteKernelError.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const nc::CudaOutOfMemory& e) {
      const std::string message =
          std::string("out of GPU memory in the CUDA engine: ") + e.what() +
          "; pass out= host arrays (e.g. np.memmap) to stream the result tile by tile, or a smaller "
          "tile_size";
      py::set_error(PyExc_MemoryError, message.c_str());
    } catch (const ntkfast::NonFiniteKernel& e) {
      py::object cls = py::module_::import("ntkfast._errors").attr("EngineNonFinite");
      py::set_error(cls, cls(e.point_set, e.row, e.op, e.value, e.is_ntk, e.underflow));
    }
  });
}
