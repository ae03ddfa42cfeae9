// series_fallback.hpp -- the dual kernels of a Series op by 2-D quadrature, for the pairs whose
// Hermite series (Mehler's formula) would need more terms than the tables hold: |ρ| near 1 at
// large variances, or an activation with a kink at 0 (its coefficients decay algebraically).
// Rare and scalar, compiled once (baseline ISA); cpu_kernels.cpp calls it per such entry.
//
// The activation comes as a record of piecewise Chebyshev interpolants of φ and φ' (built per
// layer in Python from the user's vectorised callable, so no Python runs per entry):
//   [0] kinked: 1 if φ' or φ'' may jump at 0, else 0; -1: no record (no fallback for this op)
//   [1] h, [2] B = M·h, [3] M, [4] G, [5] P
//   then 2·(M + G) panels of P Chebyshev coefficients for φ, and as many for φ'. Panel p < M
//   covers |y| in [p·h, (p + 1)·h], panel M + g covers |y| in [B·2^g, B·2^(g+1)]; panels
//   0..M+G-1 are for y >= 0, the next M + G for y < 0. Beyond the last panel the value at its
//   end is used (the quadrature's arguments reach past it only with Gaussian weight < 1e-22).
#pragma once

#include <cstdint>

namespace ntkfast {

// Header fields of a fallback record, then the coefficients.
constexpr int64_t kFallbackHeader = 6;

// Length of a record with M uniform and G geometric panels of P coefficients.
inline int64_t fallback_record_length(int64_t uniform, int64_t geometric, int64_t points) {
  return kFallbackHeader + 4 * (uniform + geometric) * points;
}

// E[φ(u)φ(v)] and E[φ'(u)φ'(v)] for u = a·X, v = b·Y, (X, Y) standard normal with correlation
// rho, by Gauss-Legendre panels graded towards the features of the integrand (and Gauss-Hermite
// where the inner integrand is smooth on the Gaussian's scale); about 1e-15 of the values' scale.
void series_pair_fallback(const double* record, double a, double b, double rho, double* nngp,
                          double* dot);

// Whether `record` (of `length` values) is a well-formed record or a -1 "none" record.
bool fallback_record_valid(const double* record, int64_t length);

}  // namespace ntkfast
