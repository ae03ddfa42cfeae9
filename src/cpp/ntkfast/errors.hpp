// errors.hpp -- exceptions the CPU and CUDA engines share (plain C++; the bindings translate them).
#pragma once

#include <cstdint>
#include <stdexcept>

namespace ntkfast {

// A per-row variance (or NTK diagonal) that is not finite, or does not fit the storage type, after
// some op: the kernel itself overflows (e.g. Exp or Gaussian(b > 0) with large variances). Both
// engines raise it from the per-row pass, before any tile is computed; off-diagonal entries are
// bounded by the diagonal (the kernels are positive semi-definite), so this covers the matrix.
class NonFiniteKernel : public std::runtime_error {
 public:
  NonFiniteKernel(int point_set, int64_t row, int op, double value, bool is_ntk)
      : std::runtime_error("non-finite kernel"), point_set(point_set), row(row), op(op),
        value(value), is_ntk(is_ntk) {}
  int point_set;  // 1 (x1) or 2 (x2)
  int64_t row;
  int op;         // the op after which it happened; -1: the input layer
  double value;
  bool is_ntk;
};

}  // namespace ntkfast
