// python_poll.hpp -- the poll both bindings give their engine's tile loop (header-only, pybind11).
//
// Called by one engine thread between tiles: it takes the GIL, serves Ctrl-C (PyErr_CheckSignals)
// and the progress callback, and checks that the callback left the host outputs where they were
// (NumPy lets it resize an output we write into, refcheck=False). A Python error is kept in
// `pending` and the poll returns false, which stops the loop; run_released() re-raises it.
#pragma once

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace ntkfast {
namespace python {

namespace py = pybind11;

// What must not change while an engine writes into a host output.
struct OutputLayout {
  const void* data = nullptr;
  std::vector<py::ssize_t> shape, strides;
  bool operator!=(const OutputLayout& other) const {
    return data != other.data || shape != other.shape || strides != other.strides;
  }
};

inline OutputLayout layout_of(const py::array& a) {
  OutputLayout layout;
  layout.data = a.data();
  layout.shape.assign(a.shape(), a.shape() + a.ndim());
  layout.strides.assign(a.strides(), a.strides() + a.ndim());
  return layout;
}

class PythonPoll {
 public:
  // `outputs`: the host arrays the engine writes into (their layouts are taken now).
  PythonPoll(std::optional<py::function> progress, std::vector<py::array> outputs)
      : progress_(std::move(progress)), outputs_(std::move(outputs)) {
    for (const py::array& a : outputs_) layouts_.push_back(layout_of(a));
  }

  bool has_progress() const { return progress_.has_value(); }

  // The engine's poll callback; `this` must outlive the computation.
  std::function<bool(int64_t, int64_t)> callback() {
    return [this](int64_t done, int64_t total) { return poll(done, total); };
  }

  // Runs `body` with the GIL released; a Cancelled (of either engine) caused by the poll
  // re-raises the Python error that caused it.
  template <class Cancelled, class F>
  void run_released(F&& body) {
    try {
      py::gil_scoped_release release;
      body();
    } catch (const Cancelled&) {
      if (pending_) throw *pending_;
      throw;
    }
  }

  const std::shared_ptr<py::error_already_set>& pending() const { return pending_; }

 private:
  bool stop() {  // keeps the Python error just raised, and stops the loop
    pending_ = std::make_shared<py::error_already_set>();
    return false;
  }

  bool poll(int64_t done, int64_t total) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) return stop();
    if (!progress_) return true;
    try {
      (*progress_)(done, total);
    } catch (py::error_already_set& e) {
      e.restore();
      return stop();
    }
    for (size_t k = 0; k < outputs_.size(); ++k) {
      if (!(layout_of(outputs_[k]) != layouts_[k])) continue;
      PyErr_SetString(PyExc_RuntimeError,
                      "progress callback resized or reallocated the output array; the "
                      "computation was stopped and the output is incomplete");
      return stop();
    }
    return true;
  }

  std::optional<py::function> progress_;
  std::vector<py::array> outputs_;
  std::vector<OutputLayout> layouts_;
  std::shared_ptr<py::error_already_set> pending_;
};

}  // namespace python
}  // namespace ntkfast
