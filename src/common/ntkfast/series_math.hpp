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
#include "row_step.hpp"
#include "series_fallback.hpp"

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

// ------------------------------------------------------------------------------------------------
// One entry at a time (the CUDA engine's Series kernels, and _cuda._series_gram_host, their
// emulation on the CPU for the tests): the terms chosen for the entry's own |ρ|.

// What a Series op reads besides the per-row tables (engine.hpp SeriesOptions); plain pointers.
struct SeriesData {
  const double* profiles;   // per op (its p1): profile_len values
  int64_t profile_len;
  const double* fallbacks;  // per op: a record of fallback_len values; null: no fallback
  int64_t fallback_len;
  double fallback_above;
  const FallbackRules* rules;  // with fallbacks
};

// What the entries of a thread left: the largest tail bound, and how many took the fallback.
struct SeriesTally {
  double bound = 0.0;
  unsigned long long fallbacks = 0;
};

// A Series op on one entry: m1, m2 point at the op's first table row (E[φ²]) for the entry's
// row and column (strides s1, s2). Returns false, leaving (c, t), for an entry that needs the 2-D
// quadrature where Fallback is false (the caller redoes it later with Fallback).
template <bool WithNtk, bool Fallback>
NTKFAST_HD bool series_entry(const SeriesData& s, const LayerOp& op, const double* m1, int64_t s1,
                             const double* m2, int64_t s2, const PairStats<double>& ps, double& c,
                             double& t, SeriesTally& tally) {
  const int64_t degree = op.degree;
  if (series_duplicate(c, ps.q1, ps.q2)) {  // the row's exact diagonal
    c = m1[0];
    if (WithNtk) t = t * m1[s1];
    return true;
  }
  const double scale = ps.sq1 * ps.sq2;
  const double rho = series_correlation(c, scale), rho_abs = nt_abs(rho);
  const double* profile = s.profiles + int64_t(op.p[1]) * s.profile_len;
  double bound;
  const int64_t n = series_terms(rho_abs, profile, degree, bound);
  if (bound > s.fallback_above && s.fallbacks) {
    const double* record = s.fallbacks + int64_t(op.p[1]) * s.fallback_len;
    if (record[0] >= 0.0) {
      const double own = series_own_bound(rho_abs, n, profile);
      if (own > s.fallback_above) {
        if (!Fallback) return false;
        double value, dot;
        series_pair_fallback_with(*s.rules, record, ps.sq1, ps.sq2, rho, &value, &dot);
        c = value;
        if (WithNtk) t = t * dot;
        ++tally.fallbacks;
        return true;
      }
      bound = own;
    }
  }
  if (bound > tally.bound) tally.bound = bound;
  const double *a1 = m1 + 2 * s1, *a2 = m2 + 2 * s2;
  double e, ed;
  series_sum<WithNtk>(a1, a1 + (degree + 1) * s1, s1, a2, a2 + (degree + 1) * s2, s2, n, rho, scale,
                      e, ed);
  c = e;
  if (WithNtk) t = t * ed;
  return true;
}

// One point set's per-row tables seen from one row: q[k * stride], sq likewise, the rescale
// exponents (may be null) and the Series tables (table[r * stride]), all offset to the row.
struct SeriesRow {
  const double* q;
  const double* sq;
  const int32_t* rescale;
  const double* table;
  int64_t stride;
};

// The whole program on one entry whose (c, t) enter op 0 (c snapped, t = 0): every op as the
// CUDA tile kernel runs it (rescaled homogeneous ops included), Series ops by series_entry.
template <bool WithNtk, bool Fallback>
NTKFAST_HD bool series_program_entry(const LayerOp* ops, int n_ops, const double* pool,
                                     const SeriesData& s, const SeriesRow& r1, const SeriesRow& r2,
                                     double& c, double& t, SeriesTally& tally) {
  for (int k = 0; k < n_ops; ++k) {
    const int64_t o1 = k * r1.stride, o2 = k * r2.stride;
    const PairStats<double> ps{r1.q[o1], r2.q[o2], r1.sq[o1], r2.sq[o2]};
    const LayerOp& op = ops[k];
    if (op.kind == kSeries) {
      const int64_t row0 = int64_t(op.p[0]);
      if (!series_entry<WithNtk, Fallback>(s, op, r1.table + row0 * r1.stride, r1.stride,
                                           r2.table + row0 * r2.stride, r2.stride, ps, c, t,
                                           tally))
        return false;
      continue;
    }
    apply_op_entry<WithNtk>(op, pool, ps, r1.rescale ? r1.rescale[o1] : 0,
                            r2.rescale ? r2.rescale[o2] : 0, c, t);
  }
  return true;
}

}  // namespace NTKFAST_ISA_NAMESPACE
}  // namespace ntkfast
