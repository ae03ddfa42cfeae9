// bindings_cuda.cpp -- the pybind11 binding of the CUDA engine (module ntkfast._cuda).
//
// A separate extension module so that `import ntkfast` works where CUDA is missing; it is imported
// only when the CUDA backend is asked for. Like the CPU binding it only unpacks arguments, releases
// the GIL around the calls and turns C++ failures into Python exceptions. Buffers are CuPy's:
// they arrive as raw device addresses (int), with the device ordinal and the cudaStream_t of the
// caller's current CuPy stream; validation and the tile loop live in python/ntkfast/_cuda_backend.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

#include "cuda_engine.hpp"

namespace py = pybind11;
namespace nc = ntkfast::cuda;

#ifndef NTKFAST_CUDA_ARCHS
#define NTKFAST_CUDA_ARCHS "unknown"
#endif
#ifndef NTKFAST_CUDA_TOOLKIT
#define NTKFAST_CUDA_TOOLKIT "unknown"
#endif

namespace {

// The ops in the CPU binding's format, (kind, degree, offset, params), validated by the caller
// through ntkfast._core.Program (the pool offsets of polynomial tables included) before they
// reach the device; only what keeps this packing well-formed is checked here.
py::bytes pack_program(const std::vector<std::tuple<int, int, int, std::vector<double>>>& ops) {
  std::vector<ntkfast::LayerOp> out;
  out.reserve(ops.size());
  for (const auto& [kind, degree, offset, params] : ops) {
    if (params.size() > 6) throw std::invalid_argument("program op: at most 6 parameters");
    if (kind < 0 || kind >= ntkfast::kNumOpKinds) throw std::invalid_argument("program op: unknown kind");
    if (degree < 0 || degree > ntkfast::kMaxDegree) throw std::invalid_argument("program op: bad degree");
    ntkfast::LayerOp op{};
    op.kind = kind;
    op.degree = degree;
    op.offset = offset;
    for (size_t k = 0; k < params.size(); ++k) op.p[k] = params[k];
    out.push_back(op);
  }
  return py::bytes(nc::pack_ops(out));
}

}  // namespace

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
    return info;
  });
  m.def("driver_version", &nc::driver_version, py::call_guard<py::gil_scoped_release>());
  m.def("pack_program", &pack_program, py::arg("ops"));

  m.def(
      "row_stats",
      [](const std::string& dtype, uintptr_t x, int64_t n, int64_t d, int64_t ld_x, uintptr_t ops,
         int32_t n_ops, uintptr_t pool, uintptr_t q, uintptr_t sq, int64_t stride, uintptr_t ntk_diag,
         uintptr_t status, int point_set, int device, uintptr_t stream, uintptr_t scale_exp,
         uintptr_t rescale) {
        const nc::Dtype dt = nc::parse_dtype(dtype);
        nc::DeviceProgram prog{ops, n_ops, pool};
        nc::DeviceRowTables tables{q, sq, stride, ntk_diag, scale_exp, rescale};
        py::gil_scoped_release release;
        nc::row_stats(dt, x, n, d, ld_x, prog, tables, status, point_set, device, stream);
      },
      py::arg("dtype"), py::arg("x"), py::arg("n"), py::arg("d"), py::arg("ld_x"), py::arg("ops"),
      py::arg("n_ops"), py::arg("pool"), py::arg("q"), py::arg("sq"), py::arg("stride"),
      py::arg("ntk_diag"), py::arg("status"), py::arg("point_set"), py::arg("device"),
      py::arg("stream"), py::arg("scale_exp") = uintptr_t(0), py::arg("rescale") = uintptr_t(0));

  m.def(
      "gram_tile",
      [](const std::string& dtype, uintptr_t gram, int64_t ld_gram, int64_t rows, int64_t cols,
         double inv_d, double snap_tol, uintptr_t ops, int32_t n_ops, uintptr_t pool, uintptr_t q1,
         uintptr_t sq1, int64_t stride1, uintptr_t q2, uintptr_t sq2, int64_t stride2, uintptr_t nngp,
         int64_t ld_nngp, uintptr_t nngp_mirror, int64_t ld_nngp_mirror, uintptr_t ntk,
         int64_t ld_ntk, uintptr_t ntk_mirror, int64_t ld_ntk_mirror, bool diagonal,
         uintptr_t diag_nngp, uintptr_t diag_ntk, int device, uintptr_t stream,
         uintptr_t scale_exp1, uintptr_t scale_exp2, uintptr_t rescale1, uintptr_t rescale2) {
        const nc::Dtype dt = nc::parse_dtype(dtype);
        nc::TileArgs a;
        a.gram = gram;
        a.ld_gram = ld_gram;
        a.rows = rows;
        a.cols = cols;
        a.inv_d = inv_d;
        a.snap_tol = snap_tol;
        a.prog = nc::DeviceProgram{ops, n_ops, pool};
        a.q1 = q1;
        a.sq1 = sq1;
        a.stride1 = stride1;
        a.q2 = q2;
        a.sq2 = sq2;
        a.stride2 = stride2;
        a.nngp = nngp;
        a.ld_nngp = ld_nngp;
        a.nngp_mirror = nngp_mirror;
        a.ld_nngp_mirror = ld_nngp_mirror;
        a.ntk = ntk;
        a.ld_ntk = ld_ntk;
        a.ntk_mirror = ntk_mirror;
        a.ld_ntk_mirror = ld_ntk_mirror;
        a.diagonal = diagonal;
        a.diag_nngp = diag_nngp;
        a.diag_ntk = diag_ntk;
        a.scale_exp1 = scale_exp1;
        a.scale_exp2 = scale_exp2;
        a.rescale1 = rescale1;
        a.rescale2 = rescale2;
        py::gil_scoped_release release;
        nc::gram_tile(dt, a, device, stream);
      },
      py::arg("dtype"), py::arg("gram"), py::arg("ld_gram"), py::arg("rows"), py::arg("cols"),
      py::arg("inv_d"), py::arg("snap_tol"), py::arg("ops"), py::arg("n_ops"), py::arg("pool"),
      py::arg("q1"), py::arg("sq1"), py::arg("stride1"), py::arg("q2"), py::arg("sq2"),
      py::arg("stride2"), py::arg("nngp"), py::arg("ld_nngp"), py::arg("nngp_mirror"),
      py::arg("ld_nngp_mirror"), py::arg("ntk"), py::arg("ld_ntk"), py::arg("ntk_mirror"),
      py::arg("ld_ntk_mirror"), py::arg("diagonal"), py::arg("diag_nngp"), py::arg("diag_ntk"),
      py::arg("device"), py::arg("stream"), py::arg("scale_exp1") = uintptr_t(0),
      py::arg("scale_exp2") = uintptr_t(0), py::arg("rescale1") = uintptr_t(0),
      py::arg("rescale2") = uintptr_t(0));

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
