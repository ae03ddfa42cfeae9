// row_step.hpp -- one op of the per-row recursion, and the range policy for per-row variances.
//
// Shared by the CPU engine (cpu_kernels.cpp's row_pass, engine.cpp's check_row_stats) and the CUDA
// engine (cuda_engine.cu's row_pass_kernel), so both compute the same tables and reject the same
// rows, in the same order.
#pragma once

#include "layer_math.hpp"
#include "program.hpp"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic error "-Wswitch"
#endif

namespace ntkfast {
inline namespace NTKFAST_ISA_NAMESPACE {

// One op on a row's own variance, i.e. on (q1, q2, c) = (q, q, q): the variance entering the next
// op, its square root, and the NTK diagonal t. The diagonal of a Gram matrix runs the same function
// on the same numbers, so it equals this to the last bit.
template <bool WithNtk, class V>
NTKFAST_HD void row_step(const LayerOp& op, const double* pool, V q, V sq, V& t, V& q_next,
                         V& sq_next) {
  const PairStats<V> ps{q, q, sq, sq};
  V c = q;
  apply_op<WithNtk>(op, pool, ps, c, t);
  // A variance is >= 0; rounding may leave -0 or a tiny negative, which would flip signs later.
  // Not max(c, 0): that would turn a NaN into a finite 0 and hide it from the range check.
  q_next = nt_select(c <= 0, splat<V>(0.0), c);
  sq_next = nt_sqrt(q_next);
}

// Entering an op, a variance must leave room for products of two of them (q1·q2 in sine_sq,
// pair_scale, ...): at most 2^500, and, for the ops whose result depends on such a product
// relative to the variances themselves, either exactly 0 or at least 2^-500 (below ~2^-511 the
// product underflows and ρ, θ come out silently wrong, e.g. 37 % off for ReLU at q ~ 1e-200).
constexpr double kVarianceMax = 0x1p500;
constexpr double kVarianceMinNonzero = 0x1p-500;
// The smallest normal double: a variance below it (but not 0) has lost bits already.
constexpr double kDoubleMinNormal = 0x1p-1022;

// The positively homogeneous ops, φ(λx) = λ^n φ(x) for λ > 0, by degree n (-1: not homogeneous):
// then E[φ(λu)φ(μv)] = (λμ)^n E[φ(u)φ(v)] and E[φ'(λu)φ'(μv)] = (λμ)^(n-1) E[φ'(u)φ'(v)], so a pair
// of rows whose variances are out of range is computed exactly at rescaled variances
// (apply_op_rescaled). These are also the ops that form q1·q2 against c or c² (the arc-cosine
// family, Cho & Saul 2009, and the normalised exponential); Erf, Gelu, Gaussian and Gabor only add
// such products to terms of order 1 or q, where their underflow is below rounding, and
// Polynomial's products are the result's own magnitude, which the next op's check sees.
NTKFAST_HD int homogeneous_degree(const LayerOp& op) {
  switch (static_cast<OpKind>(op.kind)) {
    case kABRelu:
    case kExpNormalized:  // s·exp(γ(ρ + shift)): s = √(q1 q2) has degree 1, ρ degree 0
      return 1;
    case kSign:
      return 0;
    case kRectifiedMonomial:
      return op.degree;
    case kDense:
    case kIdentity:
    case kErf:
    case kGelu:
    case kSin:
    case kRbf:
    case kExp:
    case kGaussian:
    case kGabor:
    case kPolynomial:
    case kHermite:
    case kSeries:
    case kCallback:
      return -1;
  }
  return -1;
}

// The exponent e of a row entering a homogeneous op: 0 inside [2^-500, 2^500] (and for 0, NaN,
// Inf), else such that q·2^-2e is near 1.
NTKFAST_HD int32_t rescale_exponent(double q) {
  if (!(q > 0) || !(q <= 1.7976931348623157e308) || (q >= kVarianceMinNonzero && q <= kVarianceMax))
    return 0;
  int e = 0;
  frexp(q, &e);
  return int32_t(e / 2);
}

// A homogeneous op (homogeneous_degree >= 0) on one entry whose rows have rescale exponents e1, e2:
// the op runs on variances q·2^-2e (square roots √q·2^-e) and c·2^-(e1+e2), and the result is
// scaled back. Every scaling is by a power of two, so this is exact (unless a result leaves the
// double range, where the next op's range check sees it), and for e1 = e2 = 0 it is apply_op.
template <bool WithNtk>
NTKFAST_HD void apply_op_rescaled(const LayerOp& op, const double* pool, const PairStats<double>& ps,
                                  int32_t e1, int32_t e2, double& c, double& t) {
  const int degree = homogeneous_degree(op);
  const int e = e1 + e2;
  const PairStats<double> scaled{ldexp(ps.q1, -2 * e1), ldexp(ps.q2, -2 * e2), ldexp(ps.sq1, -e1),
                                 ldexp(ps.sq2, -e2)};
  c = ldexp(c, -e);
  apply_op<WithNtk>(op, pool, scaled, c, t);
  c = ldexp(c, degree * e);
  if (WithNtk) t = ldexp(t, (degree - 1) * e);
}

// An op on one entry whose rows have rescale exponents e1, e2 (0 where the table has none; only
// ever nonzero for homogeneous ops): apply_op_rescaled where one is set, else apply_op.
template <bool WithNtk>
NTKFAST_HD void apply_op_entry(const LayerOp& op, const double* pool, const PairStats<double>& ps,
                               int32_t e1, int32_t e2, double& c, double& t) {
  if (e1 != 0 || e2 != 0)
    apply_op_rescaled<WithNtk>(op, pool, ps, e1, e2, c, t);
  else
    apply_op<WithNtk>(op, pool, ps, c, t);
}

// row_step for a row with rescale exponent e entering a homogeneous op.
template <bool WithNtk>
NTKFAST_HD void row_step_rescaled(const LayerOp& op, const double* pool, double q, double sq,
                                  int32_t e, double& t, double& q_next, double& sq_next) {
  double c = q;
  apply_op_rescaled<WithNtk>(op, pool, PairStats<double>{q, q, sq, sq}, e, e, c, t);
  q_next = c <= 0 ? 0.0 : c;
  sq_next = nt_sqrt(q_next);
}

enum RowRange : int { kRowInRange = 0, kRowNonFinite = 1, kRowUnderflow = 2 };

// The variance q of a row entering `next_op` (null: the last one, the NNGP diagonal itself, which
// only has to fit the storage type, largest value storage_max). NaN fails every comparison.
// rescaling: the engine runs homogeneous ops through apply_op_rescaled (the CPU engine always;
// the CUDA engine when given a rescale table); they then take any finite variance that is 0 or
// normal. Otherwise a variance must lie in [2^-500, 2^500] (or be 0) for them, and at most 2^500
// for the other ops that read variances.
NTKFAST_HD RowRange check_row_variance(double q, const LayerOp* next_op, double storage_max,
                                       bool rescaling) {
  if (!next_op) return nt_abs(q) <= storage_max ? kRowInRange : kRowNonFinite;
  const bool homogeneous = homogeneous_degree(*next_op) >= 0;
  // Dense and Identity do not read the variances (Hermite reads only c): any finite one will do.
  const bool reads_variances =
      next_op->kind != kDense && next_op->kind != kIdentity && next_op->kind != kHermite;
  if (!(nt_abs(q) <= 1.7976931348623157e308)) return kRowNonFinite;
  if (!reads_variances) return kRowInRange;
  if (rescaling && homogeneous) return q > 0 && q < kDoubleMinNormal ? kRowUnderflow : kRowInRange;
  if (!(nt_abs(q) <= kVarianceMax)) return kRowNonFinite;
  if (q > 0 && q < kVarianceMinNonzero && homogeneous) return kRowUnderflow;
  return kRowInRange;
}

// The NTK diagonal only has to fit the storage type.
NTKFAST_HD RowRange check_ntk_diagonal(double t, double storage_max) {
  return nt_abs(t) <= storage_max ? kRowInRange : kRowNonFinite;
}

// GEMM-safe range of a row's squared norm ||x||²: inside it x·x' neither overflows nor loses bits
// to subnormals in the GEMM's element type T (float32: |x·x'| <= 2^60, and entry products that
// matter stay normal). Rows outside it are GEMMed as x·2^-e (exact) and each Gram entry is
// multiplied back by 2^(e_i + e_j) in double.
template <class T>
struct GemmSafeNormSq;
template <>
struct GemmSafeNormSq<float> {
  static constexpr double lo = 0x1p-60, hi = 0x1p60;
};
template <>
struct GemmSafeNormSq<double> {
  static constexpr double lo = 0x1p-600, hi = 0x1p600;
};

// e with ||x||² 2^-2e near 1 for a row outside the safe range, else 0: rows inside it GEMM exactly
// as without scaling, so results are bit-identical wherever no scaling was needed.
template <class T>
NTKFAST_HD int32_t gemm_scale_exponent(double norm_sq) {
  if (!(norm_sq > 0) || !(norm_sq <= 1.7976931348623157e308) ||
      (norm_sq >= GemmSafeNormSq<T>::lo && norm_sq <= GemmSafeNormSq<T>::hi))
    return 0;
  int e = 0;
  frexp(norm_sq, &e);
  return int32_t(e / 2);
}

// A nonzero input row whose variance ||x||²/d is not a normal double (0 or subnormal): it cannot be
// represented (the tables would hold 0 where the row is not 0, and Cauchy-Schwarz, the snap and
// every later op would treat it as a zero row), so both engines raise an underflow at the input.
NTKFAST_HD bool input_variance_underflows(double q, bool row_is_nonzero) {
  return row_is_nonzero && q < kDoubleMinNormal;
}

// Whether a reported value (a variance that failed check_row_variance or
// input_variance_underflows) failed by underflow: the CUDA host side only reads the value back.
// No other check fails a finite value this small.
NTKFAST_HD bool is_underflow_value(double q) { return q >= 0 && q < kVarianceMinNonzero; }

}  // namespace NTKFAST_ISA_NAMESPACE
}  // namespace ntkfast

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
