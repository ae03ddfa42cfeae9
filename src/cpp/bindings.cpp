// bindings.cpp -- the one pybind11 binding of the CPU engine (module ntkfast._core).
//
// It only unpacks buffers, releases the GIL around the compute and turns C++ failures into Python
// exceptions; validation and dtype policy live in python/ntkfast. Arrays must already have the
// exact dtype and be C-contiguous (noconvert), so no hidden copy can happen here.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "ntkfast/band_product.hpp"
#include "ntkfast/engine.hpp"
#include "ntkfast/series_fallback.hpp"
#include "python_poll.hpp"

namespace py = pybind11;
using ntkfast::LayerOp;
using ntkfast::Program;

namespace {

ntkfast::Blas g_blas;

template <class T>
using CArray = py::array_t<T, py::array::c_style>;

Program make_program(const std::vector<std::tuple<int, int, int, std::vector<double>>>& ops,
                     std::vector<double> pool) {
  std::vector<LayerOp> out;
  out.reserve(ops.size());
  for (const auto& [kind, degree, offset, params] : ops) {
    if (params.size() > 6) throw std::invalid_argument("program op: at most 6 parameters");
    LayerOp op{};
    op.kind = kind;
    op.degree = degree;
    op.offset = offset;
    for (size_t k = 0; k < params.size(); ++k) op.p[k] = params[k];
    out.push_back(op);
  }
  return Program(std::move(out), std::move(pool));
}

void set_blas(py::capsule dgemm, py::capsule sgemm) {
  g_blas.dgemm = reinterpret_cast<ntkfast::DgemmFn>(dgemm.get_pointer());
  g_blas.sgemm = reinterpret_cast<ntkfast::SgemmFn>(sgemm.get_pointer());
}

template <class T>
T* output_ptr(std::optional<CArray<T>>& out, py::ssize_t rows, py::ssize_t cols, const char* name) {
  if (!out) return nullptr;
  if (out->ndim() != 2 || out->shape(0) != rows || out->shape(1) != cols)
    throw std::invalid_argument(std::string(name) + ": wrong shape");
  return out->mutable_data();  // raises if the array is read-only
}

// A point set's Series tables (engine.hpp): a (rows, n) float64 array, or none.
ntkfast::SeriesTables series_tables(const std::optional<CArray<double>>& tables, py::ssize_t n,
                                    const char* name) {
  if (!tables) return {};
  if (tables->ndim() != 2 || (tables->shape(1) != n && tables->shape(1) != ntkfast::row_stride(n)))
    throw std::invalid_argument(std::string(name) + ": wrong shape");
  return {tables->data(), int64_t(tables->shape(0)), int64_t(tables->shape(1))};
}

// The Callback ops' dual kernels (engine.hpp DualKernelFn), in Python: evaluate(index, c, t, q1,
// q2) gets float64 copies of a block -- c (rows, cols), t alike or None, q1 (rows,), q2 (cols,),
// or None for a diagonal column -- and returns the new (c, t), arrays of c's shape (t None when it
// was). It runs on the engine's threads with the GIL taken; the first Python error is kept, stops
// the engine, and is re-raised by run().
class PythonDualKernels {
 public:
  explicit PythonDualKernels(std::optional<py::function> evaluate)
      : evaluate_(std::move(evaluate)) {}

  ntkfast::DualKernelFn callback() {
    if (!evaluate_) return {};
    return [this](const ntkfast::DualKernelBlock& block) { apply(block); };
  }

  template <class F>
  void run(F&& body) {
    try {
      body();
    } catch (const Failed&) {
      if (pending_) throw *pending_;
      throw;
    }
  }

 private:
  struct Failed : std::runtime_error {
    Failed() : std::runtime_error("dual kernel callback failed") {}
  };

  static CArray<double> copy_block(const double* data, int64_t rows, int64_t cols, int64_t ld) {
    CArray<double> out({py::ssize_t(rows), py::ssize_t(cols)});
    for (int64_t i = 0; i < rows; ++i)
      std::copy(data + i * ld, data + i * ld + cols, out.mutable_data() + i * cols);
    return out;
  }

  static void copy_back(const py::handle& result, const ntkfast::DualKernelBlock& b, double* to) {
    const auto array = py::cast<CArray<double>>(result);
    if (array.ndim() != 2 || array.shape(0) != b.rows || array.shape(1) != b.cols)
      throw std::invalid_argument("dual kernels: the callback returned an array of the wrong shape");
    for (int64_t i = 0; i < b.rows; ++i)
      std::copy(array.data() + i * b.cols, array.data() + (i + 1) * b.cols, to + i * b.ld);
  }

  void apply(const ntkfast::DualKernelBlock& b) {
    py::gil_scoped_acquire gil;
    if (pending_) throw Failed();  // another thread's call failed: the engine is stopping
    try {
      py::object t = b.t ? py::object(copy_block(b.t, b.rows, b.cols, b.ld)) : py::none();
      // 1-D copies (no base given: pybind11 copies the data).
      py::object q2 = b.q2 ? py::object(CArray<double>(py::ssize_t(b.cols), b.q2)) : py::none();
      const py::tuple result = (*evaluate_)(b.index, copy_block(b.c, b.rows, b.cols, b.ld), t,
                                            CArray<double>(py::ssize_t(b.rows), b.q1), q2);
      if (result.size() != 2) throw std::invalid_argument("dual kernels: expected (c, t)");
      copy_back(result[0], b, b.c);
      if (b.t) copy_back(result[1], b, b.t);
    } catch (py::error_already_set& e) {
      pending_ = std::make_shared<py::error_already_set>(std::move(e));
      throw Failed();
    }
  }

  std::optional<py::function> evaluate_;
  std::shared_ptr<py::error_already_set> pending_;
};

// Returns (the largest tail bound the Series ops left, the entries their fallback computed); 0
// without them (engine.hpp SeriesOptions).
template <class T>
py::tuple gram(const Program& prog, const CArray<T>& x1, std::optional<CArray<T>> x2,
            std::optional<CArray<T>> nngp, std::optional<CArray<T>> ntk, int num_threads,
            int64_t tile, std::optional<py::function> progress,
            std::optional<CArray<double>> series1, std::optional<CArray<double>> series2,
            std::optional<CArray<double>> series_profiles,
            std::optional<CArray<double>> series_fallbacks, double series_fallback_above,
            std::optional<py::function> dual_kernels, bool panel_writes) {
  if (x1.ndim() != 2 || (x2 && x2->ndim() != 2)) throw std::invalid_argument("x must be 2-D");
  const py::ssize_t n1 = x1.shape(0), d = x1.shape(1);
  const py::ssize_t n2 = x2 ? x2->shape(0) : n1;
  if (x2 && x2->shape(1) != d) throw std::invalid_argument("x1 and x2 differ in features");
  T* nngp_ptr = output_ptr(nngp, n1, n2, "nngp");
  T* ntk_ptr = output_ptr(ntk, n1, n2, "ntk");

  // Between tiles one thread takes the GIL (python_poll.hpp); the engine stores nothing while
  // the callback runs, nor after the poll returned false.
  std::vector<py::array> host_outputs;
  if (nngp) host_outputs.push_back(*nngp);
  if (ntk) host_outputs.push_back(*ntk);
  ntkfast::python::PythonPoll poll(std::move(progress), std::move(host_outputs));
  ntkfast::GramOptions options;
  options.num_threads = num_threads;
  options.tile = tile;
  options.poll = poll.callback();
  options.panel_writes = panel_writes;
  options.series.set1 = series_tables(series1, n1, "series1");
  options.series.set2 = series_tables(series2, x2 ? n2 : 0, "series2");
  double max_tail_bound = 0.0;
  if (series_profiles) {
    if (series_profiles->ndim() != 2) throw std::invalid_argument("series_profiles must be 2-D");
    options.series.profiles = series_profiles->data();
    options.series.profile_count = series_profiles->shape(0);
    options.series.profile_len = series_profiles->shape(1);
  }
  if (series_fallbacks) {
    if (series_fallbacks->ndim() != 2) throw std::invalid_argument("series_fallbacks must be 2-D");
    options.series.fallbacks = series_fallbacks->data();
    options.series.fallback_count = series_fallbacks->shape(0);
    options.series.fallback_len = series_fallbacks->shape(1);
  }
  options.series.fallback_above = series_fallback_above;
  options.series.max_tail_bound = &max_tail_bound;
  int64_t fallback_pairs = 0;
  options.series.fallback_pairs = &fallback_pairs;
  PythonDualKernels callbacks(std::move(dual_kernels));
  options.dual_kernels = callbacks.callback();
  const T* x1_ptr = x1.data();
  const T* x2_ptr = x2 ? x2->data() : nullptr;
  callbacks.run([&] {
    poll.run_released<ntkfast::Cancelled>([&] {
      ntkfast::compute_gram<T>(prog, x1_ptr, n1, x2_ptr, n2, d, nngp_ptr, n2, ntk_ptr, n2, g_blas,
                               options);
    });
  });
  return py::make_tuple(max_tail_bound, fallback_pairs);
}

// gram's overload for T (float64 or float32 inputs and outputs).
template <class T>
void def_gram(py::module_& m) {
  m.def("gram", &gram<T>, py::arg("program"), py::arg("x1").noconvert(),
        py::arg("x2").noconvert(), py::arg("nngp").noconvert(), py::arg("ntk").noconvert(),
        py::arg("num_threads"), py::arg("tile"), py::arg("progress"),
        py::arg("series1").noconvert() = py::none(), py::arg("series2").noconvert() = py::none(),
        py::arg("series_profiles").noconvert() = py::none(),
        py::arg("series_fallbacks").noconvert() = py::none(),
        py::arg("series_fallback_above") = 1.0, py::arg("dual_kernels") = py::none(),
        py::arg("panel_writes") = false);
}

template <class T>
void diagonal(const Program& prog, const CArray<T>& x, std::optional<CArray<T>> nngp,
              std::optional<CArray<T>> ntk, int num_threads,
              std::optional<CArray<double>> series, std::optional<py::function> dual_kernels) {
  if (x.ndim() != 2) throw std::invalid_argument("x must be 2-D");
  const py::ssize_t n = x.shape(0), d = x.shape(1);
  auto vec_ptr = [n](std::optional<CArray<T>>& out, const char* name) -> T* {
    if (!out) return nullptr;
    if (out->ndim() != 1 || out->shape(0) != n)
      throw std::invalid_argument(std::string(name) + ": wrong shape");
    return out->mutable_data();
  };
  T* nngp_ptr = vec_ptr(nngp, "nngp");
  T* ntk_ptr = vec_ptr(ntk, "ntk");
  const T* x_ptr = x.data();
  const ntkfast::SeriesTables tables = series_tables(series, n, "series");
  PythonDualKernels callbacks(std::move(dual_kernels));
  callbacks.run([&] {
    py::gil_scoped_release release;
    ntkfast::compute_diagonal<T>(prog, x_ptr, n, d, nngp_ptr, ntk_ptr, num_threads, tables,
                                 callbacks.callback());
  });
}

// diagonal's overload for T.
template <class T>
void def_diagonal(py::module_& m) {
  m.def("diagonal", &diagonal<T>, py::arg("program"), py::arg("x").noconvert(),
        py::arg("nngp").noconvert(), py::arg("ntk").noconvert(), py::arg("num_threads"),
        py::arg("series").noconvert() = py::none(), py::arg("dual_kernels") = py::none());
}

// A band may be a row slice of a larger matrix: its rows strided, each row contiguous.
template <class T>
void check_band(const py::array_t<T>& band) {
  const auto item = py::ssize_t(sizeof(T));
  if (band.ndim() != 2 || (band.shape(1) > 1 && band.strides(1) != item) ||
      band.strides(0) % item != 0 || band.strides(0) < band.shape(1) * item)
    throw std::invalid_argument("band must be a 2-D array with contiguous rows");
}

// One band of a stored kernel against transposed vectors (band_product.hpp); the vectors are
// C-contiguous (k, n) float64 arrays, indexed from row0 (rows of the band) and col0 (its columns).
template <class T>
void band_matmat(const py::array_t<T>& band, int64_t row0, int64_t col0,
                 std::optional<CArray<double>> v_cols, std::optional<CArray<double>> v_rows,
                 std::optional<CArray<double>> out_rows, std::optional<CArray<double>> out_cols,
                 int64_t mirror, int num_threads) {
  check_band(band);
  const int64_t rows = band.shape(0), cols = band.shape(1);
  const int64_t ld = std::max<int64_t>(band.strides(0) / py::ssize_t(sizeof(T)), 1);
  mirror = std::clamp<int64_t>(mirror, 0, cols);
  const bool mirrored = mirror < cols;
  if (row0 < 0 || col0 < 0) throw std::invalid_argument("row0 and col0 must be >= 0");
  if (!out_rows && !mirrored) return;
  if ((out_rows && !v_cols) || (mirrored && (!v_rows || !out_cols)))
    throw std::invalid_argument("band_matmat: missing vectors");
  ntkfast::BandVectors vec;
  vec.k = -1;
  auto take = [&](auto& a, int64_t offset, int64_t extent, const char* name) {
    if (a->ndim() != 2 || a->shape(1) < offset + extent)
      throw std::invalid_argument(std::string(name) + ": wrong shape");
    if (vec.k >= 0 && a->shape(0) != vec.k)
      throw std::invalid_argument(std::string(name) + ": wrong number of vectors");
    vec.k = a->shape(0);
    return std::make_pair(offset, int64_t(a->shape(1)));
  };
  if (out_rows) {
    auto [o, ld_v] = take(v_cols, col0, cols, "v_cols");
    vec.v_cols = v_cols->data() + o, vec.ld_v_cols = ld_v;
    auto [o2, ld_o] = take(out_rows, row0, rows, "out_rows");
    vec.out_rows = out_rows->mutable_data() + o2, vec.ld_out_rows = ld_o;
  }
  if (mirrored) {
    auto [o, ld_v] = take(v_rows, row0, rows, "v_rows");
    vec.v_rows = v_rows->data() + o, vec.ld_v_rows = ld_v;
    auto [o2, ld_o] = take(out_cols, col0, cols, "out_cols");
    vec.out_cols = out_cols->mutable_data() + o2, vec.ld_out_cols = ld_o;
    // The mirrored updates may share an array with the row sums only where they do not overlap.
    if (out_rows && out_rows->data() == out_cols->data() && col0 + mirror < row0 + rows &&
        row0 < col0 + cols)
      throw std::invalid_argument("band_matmat: mirrored columns overlap the band's rows");
  }
  const T* data = band.data();
  py::gil_scoped_release release;
  ntkfast::band_matmat<T>(data, rows, cols, ld, vec, mirror, num_threads);
}

// One band of a symmetric kernel stored as upper bands (band_product.hpp): band =
// K[row0:row0 + rows, row0:row0 + cols] (its rows may be strided), v and out C-contiguous (k, n)
// float64 arrays.
template <class T>
void symmetric_band_matmat(const py::array_t<T>& band, int64_t row0, const CArray<double>& v,
                           CArray<double> out, int num_threads) {
  check_band(band);
  const int64_t rows = band.shape(0), cols = band.shape(1);
  if (rows > cols)
    throw std::invalid_argument("symmetric_band_matmat: the band must hold its diagonal block "
                                "(rows <= columns)");
  if (row0 < 0) throw std::invalid_argument("row0 must be >= 0");
  if (v.ndim() != 2 || out.ndim() != 2 || v.shape(0) != out.shape(0) || v.shape(1) != out.shape(1))
    throw std::invalid_argument("symmetric_band_matmat: v and out must be (k, n) arrays alike");
  if (v.shape(1) < row0 + cols) throw std::invalid_argument("v: wrong shape");
  const int64_t ld = std::max<int64_t>(band.strides(0) / py::ssize_t(sizeof(T)), 1);
  const int64_t k = v.shape(0), n = v.shape(1);
  const T* data = band.data();
  const double* v_ptr = v.data() + row0;
  double* out_ptr = out.mutable_data() + row0;
  py::gil_scoped_release release;
  ntkfast::symmetric_band_matmat<T>(data, rows, cols, ld, k, v_ptr, n, out_ptr, n, num_threads);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "ntkfast's compiled CPU engine (private; use the ntkfast package).";

  py::class_<Program>(m, "Program")
      .def(py::init(&make_program), py::arg("ops"), py::arg("pool"))
      .def_property_readonly("n_ops", &Program::n_ops);

  m.def("set_blas", &set_blas, py::arg("dgemm"), py::arg("sgemm"));

  def_gram<double>(m);
  def_gram<float>(m);
  def_diagonal<double>(m);
  def_diagonal<float>(m);

  m.def("band_matmat", &band_matmat<double>, py::arg("band").noconvert(), py::arg("row0"),
        py::arg("col0"), py::arg("v_cols").noconvert(), py::arg("v_rows").noconvert(),
        py::arg("out_rows").noconvert(), py::arg("out_cols").noconvert(), py::arg("mirror"),
        py::arg("num_threads"));
  m.def("band_matmat", &band_matmat<float>, py::arg("band").noconvert(), py::arg("row0"),
        py::arg("col0"), py::arg("v_cols").noconvert(), py::arg("v_rows").noconvert(),
        py::arg("out_rows").noconvert(), py::arg("out_cols").noconvert(), py::arg("mirror"),
        py::arg("num_threads"));
  m.def("symmetric_band_matmat", &symmetric_band_matmat<double>, py::arg("band").noconvert(),
        py::arg("row0"), py::arg("v").noconvert(), py::arg("out").noconvert(),
        py::arg("num_threads"));
  m.def("symmetric_band_matmat", &symmetric_band_matmat<float>, py::arg("band").noconvert(),
        py::arg("row0"), py::arg("v").noconvert(), py::arg("out").noconvert(),
        py::arg("num_threads"));

  // The op codes of program.hpp by name (the Python lowering checks its own table against them).
  py::dict op_kinds;
#define NTKFAST_OP_ENTRY(name, code) op_kinds[#name] = int(code);
  NTKFAST_OP_KINDS(NTKFAST_OP_ENTRY)
#undef NTKFAST_OP_ENTRY
  m.attr("OP_KINDS") = op_kinds;
  m.attr("MAX_DEGREE") = ntkfast::kMaxDegree;
  m.attr("MAX_SERIES_DEGREE") = ntkfast::kMaxSeriesDegree;
  m.attr("MAX_OPS") = ntkfast::kMaxOps;
  m.attr("MAX_THREADS") = ntkfast::kMaxThreads;
#if defined(NTKFAST_VERSION)
  m.attr("__version__") = NTKFAST_VERSION;
#endif
  m.def("in_forked_child", &ntkfast::in_forked_child,
        "True in a child forked after the engine started threads: it then runs single-threaded.");

  m.def("select_cpu_kernels", &ntkfast::select_cpu_kernels, py::arg("name"));
  m.def("default_tile", &ntkfast::default_tile, py::arg("n_features"));
  m.def("row_stride", &ntkfast::row_stride, py::arg("n"));
  // The Series fallback for one pair (tests: against closed forms and mpmath directly).
  m.def("series_pair_fallback", [](const CArray<double>& record, double a, double b, double rho) {
    if (record.ndim() != 1 || !ntkfast::fallback_record_valid(record.data(), record.shape(0)) ||
        record.data()[0] < 0)
      throw std::invalid_argument("record: not a fallback record");
    if (!(a >= 0 && b >= 0 && std::isfinite(a) && std::isfinite(b) && rho >= -1 && rho <= 1))
      throw std::invalid_argument("a, b: finite and >= 0; rho: in [-1, 1]");
    double nngp, dot;
    ntkfast::series_pair_fallback(record.data(), a, b, rho, &nngp, &dot);
    return py::make_tuple(nngp, dot);
  }, py::arg("record").noconvert(), py::arg("a"), py::arg("b"), py::arg("rho"));
  m.def("snap_tolerance", [](const std::string& dtype, int64_t d) {
    if (dtype == "float64") return ntkfast::snap_tolerance<double>(d);
    if (dtype == "float32") return ntkfast::snap_tolerance<float>(d);
    throw std::invalid_argument("dtype must be 'float32' or 'float64'");
  });
  m.def("build_info", []() {
    py::dict info;
    info["openmp"] = ntkfast::have_openmp();
    info["max_threads"] = ntkfast::max_threads();
    info["cpu_features"] = ntkfast::cpu_features();
    info["cpu_kernels"] = std::string(ntkfast::cpu_kernels().name);
    info["cpu_kernel_lanes"] = ntkfast::cpu_kernels().lanes;
    info["supported_cpu_kernels"] = ntkfast::supported_cpu_kernels();
    info["max_degree"] = ntkfast::kMaxDegree;
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = std::string("gcc ") + __VERSION__;
#else
    info["compiler"] = std::string("unknown");
#endif
    return info;
  });

  py::register_exception<ntkfast::Cancelled>(m, "Cancelled", PyExc_KeyboardInterrupt);
  // Raised as ntkfast._errors.EngineNonFinite(point_set, row, op, value, is_ntk, underflow); the
  // Python layer turns it into a NonFiniteKernelError (KernelUnderflowError) that names the layer.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ntkfast::NonFiniteKernel& e) {
      py::object cls = py::module_::import("ntkfast._errors").attr("EngineNonFinite");
      py::set_error(cls, cls(e.point_set, e.row, e.op, e.value, e.is_ntk, e.underflow));
    }
  });
}
