// series_math.hpp -- the per-entry math of a Series op (program.hpp), shared by the CPU engine
// (cpu_kernels.cpp's series_chunk, which runs it on a chunk of lanes) and the CUDA engine
// (cuda_engine.cu's series kernels, one entry per thread).
//
// Math: Mehler's formula. For u = √q1 z1, v = √q2 z2 with corr(z1, z2) = ρ,
//   E[φ(u)φ(v)] = F(ρ) = Σ_k A_k(q1) A_k(q2) ρ^k,   E[φ'(u)φ'(v)] = Σ_k B_k(q1) B_k(q2) ρ^k,
// with A_k(q) = E[φ(√q z) He_k(z)]/√k! and B_k likewise for φ' (the per-row tables, engine.hpp
// SeriesTables). Since B_k(q) = √(k+1) A_{k+1}(q)/√q, the second series is F'(ρ)/√(q1 q2)
// (Price's theorem), which one Horner pass gives with F: 3 flops and one load per term. Rows with
// √(q1 q2) below kSeriesMinScale, where dividing would amplify the rounding of A, sum the B series
// instead. By Cauchy-Schwarz the terms from n on are at most |ρ|^n times the tables' tail profile,
// so the fewest terms that bound allows are summed (series_terms: per chunk of entries on the
// CPU, at its largest |ρ|; per entry on the GPU). An entry whose own bound after all the terms
// exceeds fallback_above is computed by 2-D quadrature instead (series_fallback.hpp). A pair with
// c = q1 = q2 (a duplicate row) takes the row's own E[φ²], E[φ'²]: the diagonal, to the last bit.
//
// Table layout: row r of an op's tables for row i of a point set is at table[r * stride + i]:
// r = 0, 1: E[φ²], E[φ'²]; r = 2 .. K + 2: A_0..A_K; r = K + 3 .. 2K + 3: B_0..B_K.
#pragma once

#include <cstdint>

#include "layer_math.hpp"
#include "program.hpp"

namespace ntkfast {
inline namespace NTKFAST_ISA_NAMESPACE {

constexpr double kSeriesMinScale = 1e-6;

// ρ = c / √(q1 q2) clamped to [-1, 1]; 0 where a variance is 0 (then A_k = B_k = 0 for k > 0, so
// ρ does not matter).
NTKFAST_HD double series_correlation(double c, double scale) {
  const double r = scale > 0 ? c / scale : 0.0;
  return r > 1.0 ? 1.0 : (r < -1.0 ? -1.0 : r);
}

// A duplicate row: c = q1 = q2 (it takes the exact diagonal; its ρ = 1 must neither set the terms
// nor send it to the fallback).
NTKFAST_HD bool series_duplicate(double c, double q1, double q2) { return c == q1 && q2 == q1; }

// The fewest terms n (1 <= n <= degree) whose tail bound |ρ|^n profile[n] is <= 1 (profile[n] is
// non-increasing), else degree; F then sums A_0..A_n (B_0..B_{n-1} through F'). `bound`: the
// bound left, |ρ|^n profile[n] with |ρ|^n as repeated products.
NTKFAST_HD int64_t series_terms(double rho_abs, const double* profile, int64_t degree,
                                double& bound) {
  int64_t n = 1;
  double power = rho_abs;
  while (n < degree && power * profile[n] > 1.0) {
    power *= rho_abs;
    ++n;
  }
  bound = power * profile[n];
  return n;
}

// An entry's own bound after n terms, for the fallback's choice (pow: as the CPU engine).
NTKFAST_HD double series_own_bound(double rho_abs, int64_t n, const double* profile) {
  return pow(rho_abs, double(n)) * profile[n];
}

// The row recursion through a Series op: the row's own E[φ²] (m0) and E[φ'²] (m1).
template <bool WithNtk, class V>
NTKFAST_HD void series_row_step(V m0, V m1, V& t, V& q_next, V& sq_next) {
  q_next = m0;
  sq_next = nt_sqrt(q_next);
  if (WithNtk) t = t * m1;
}

// F(ρ) and, with the NTK, E[φ'(u)φ'(v)] from n + 1 terms, for one entry: a1, b1 the A_0, B_0 of
// its first row (stride s1), a2, b2 of its second (stride s2); scale = √q1·√q2. The operations
// of series_chunk's vector loop for one lane.
template <bool WithNtk>
NTKFAST_HD void series_sum(const double* a1, const double* b1, int64_t s1, const double* a2,
                           const double* b2, int64_t s2, int64_t n, double rho, double scale,
                           double& e, double& ed) {
  e = a1[n * s1] * a2[n * s2];
  double de = 0.0;
  for (int64_t q = n - 1; q >= 0; --q) {
    if (WithNtk) de = nt_mad(de, rho, e);
    e = nt_mad(e, rho, a1[q * s1] * a2[q * s2]);
  }
  ed = de / scale;
  if (WithNtk && !(scale >= kSeriesMinScale)) {  // rare: the B series itself
    double direct = b1[(n - 1) * s1] * b2[(n - 1) * s2];
    for (int64_t q = n - 2; q >= 0; --q) direct = nt_mad(direct, rho, b1[q * s1] * b2[q * s2]);
    ed = direct;
  }
}

}  // namespace NTKFAST_ISA_NAMESPACE
}  // namespace ntkfast
