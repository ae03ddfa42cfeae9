// errors.hpp -- exceptions the CPU and CUDA engines share (plain C++; the bindings translate them).
#pragma once

#include <cstdint>
#include <stdexcept>

namespace ntkfast {

// A per-row variance (or NTK diagonal) out of the range the engines compute exactly in, after
// some op (row_step.hpp): not finite, or not fitting the storage type (the kernel itself
// overflows, e.g. Exp or Gaussian(b > 0) with large variances), or, with `underflow`, so small
// (but not 0) that products of two variances entering the next op would underflow. Both engines
// raise it from the per-row pass, before any tile is computed; off-diagonal entries are bounded by
// the diagonal (the kernels are positive semi-definite), so this covers the matrix.
class NonFiniteKernel : public std::runtime_error {
 public:
  NonFiniteKernel(int point_set, int64_t row, int op, double value, bool is_ntk, bool underflow = false)
      : std::runtime_error(underflow ? "kernel variance underflow" : "non-finite kernel"),
        point_set(point_set), row(row), op(op), value(value), is_ntk(is_ntk), underflow(underflow) {}
  int point_set;  // 1 (x1) or 2 (x2)
  int64_t row;
  int op;         // the op after which it happened; -1: the input layer
  double value;
  bool is_ntk;
  bool underflow;
};

}  // namespace ntkfast
