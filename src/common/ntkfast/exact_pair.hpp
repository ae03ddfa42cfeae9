// exact_pair.hpp -- near-parallel entries (|ρ| -> 1) computed from the input rows, for both engines.
//
// Why: the tile kernels take c = x·x'/d from a GEMM, whose rounding (~√d ε |x||x'|) is all of
// r² = q1 q2 - c² when the rows are nearly parallel; the arc-cosine family turns an error δ of r²
// into an error ~δ/θ of θ, and a degree-0 map (Sign, the step function) turns the error of 1 - ρ
// into an error of θ' ≈ √(2(1 - ρ)), layer after layer. So an entry whose input |ρ| is within
// kNearParallelTol of 1 (a cheap test after the GEMM) is recomputed here, scalar, in double:
//
// State: besides (c, t) the entry carries r2 = q1 q2 - c² and e = q1 + q2 - 2c (the squared
// distance of the pair in feature space), each with a small relative error, where q1, q2 are the
// tabulated per-row variances entering the op.
//   Input:  from the rows themselves: G = |x1|²|x2|² - ⟨x1,x2⟩² is the Gram determinant of
//           (x1, y), y = x2 - τ x1 for any τ; with τ the projection coefficient y is nearly
//           orthogonal to x1 and G = |x1|²|y|² - ⟨x1,y⟩² has no cancellation. r2 = G/d²,
//           e = |x1 - x2|²/d, c = (τ|x1|² + ⟨x1,y⟩)/d.
//   Dense:  r2 <- W⁴ r2 + W² b² e,  e <- W² e  (exact identities of the affine map).
//   ABRelu, Sign, RectifiedMonomial: θ = atan2(√r2, c) (or φ = π - θ = atan2(√r2, -c) beyond π/2,
//           each with a small relative error), then 1 ∓ ρ' of the output from forms free of
//           cancellation (below), r2' = q1' q2' (1 - ρ')(1 + ρ'), e' = (√q1' - √q2')² + 2√(q1'q2')(1 - ρ').
//   other ops: the ordinary maps of layer_math.hpp on the accurate c; r2', e' then come from c'
//           (their θ is not amplified, but a following arc-cosine op sees only the usual accuracy).
// c and t always follow the ordinary formulas of layer_math.hpp (they are not ill-conditioned), on
// the accurate θ. e' takes √q1' - √q2' from the tables (absolute error ~ε√q): exact for the degree-0
// maps (equal output variances), and below their own rounding for the others unless a degree-0 map
// follows a layer where the two rows' variances differ by ~θ (mixed networks; ~1e-12 then).
//
// Left to the ordinary path (exact_pair_entry returns false): identical rows (they must equal the
// diagonal to the last bit, and the ordinary path does that), rows whose squared norms leave
// [2^-480, 2^480] and entries with a rescaled row (row_step.hpp) at any op.
// Symmetry: the rows are put in a canonical order first and every formula is symmetric in
// (q1, q2), so entry (i, j) equals (j, i) to the last bit, as on the ordinary path.
#pragma once

#include <cmath>
#include <cstdint>

#include "layer_math.hpp"
#include "program.hpp"

namespace ntkfast {
inline namespace NTKFAST_ISA_NAMESPACE {

// |ρ| of the input Gram at least 1 - this (and q1 q2 > 0): recompute the entry here. At the
// boundary θ ≈ 5.5e-3, where the ordinary path's error of θ (~ε/θ) is ~4e-14 absolute.
constexpr double kNearParallelTol = 0x1p-16;

template <class V>
NTKFAST_HD auto near_parallel(V c, V s) -> decltype(s > 0) {
  return (nt_abs(c) >= (1.0 - kNearParallelTol) * s) & (s > 0);
}

struct ExactPair {
  double c, t, r2, e;
};

// h(θ) = sin θ - θ cos θ (≥ 0 on [0, π]) with a small relative error, given sin θ and cos θ: its
// Taylor series Σ_{k≥1} (-1)^{k+1} 2k θ^{2k+1}/(2k+1)! below 1 (10 terms: the 11th is below 2^-60
// of θ³/3), where the direct form loses up to all of its digits as θ -> 0 (above 1, at most ~3x).
NTKFAST_HD double sin_minus_theta_cos(double th, double sin_th, double cos_th) {
  const double z = th * th;
  if (th < 0x1p-5) {  // the common case, where 5 terms do (the 6th is below 2^-62 of the first)
    double p = 1.0 / 3991680.0;
    p = p * z - 1.0 / 45360.0;
    p = p * z + 1.0 / 840.0;
    p = p * z - 1.0 / 30.0;
    p = p * z + 1.0 / 3.0;
    return th * z * p;
  }
  if (th < 1.0) {
    double p = -1.0 / 2554547108585472000.0;
    p = p * z + 1.0 / 6758061133824000.0;
    p = p * z - 1.0 / 22230464256000.0;
    p = p * z + 1.0 / 93405312000.0;
    p = p * z - 1.0 / 518918400.0;
    p = p * z + 1.0 / 3991680.0;
    p = p * z - 1.0 / 45360.0;
    p = p * z + 1.0 / 840.0;
    p = p * z - 1.0 / 30.0;
    p = p * z + 1.0 / 3.0;
    return th * z * p;
  }
  return sin_th - th * cos_th;
}

// The sums below run in 4 interleaved partial sums: one chain of d dependent FMAs would take ~4d
// cycles (d = 784: ~1 µs a pass).
constexpr int kPartials = 4;

NTKFAST_HD double sum_partials(const double* s) { return (s[0] + s[1]) + (s[2] + s[3]); }

// Σ y_k² and Σ x1_k y_k for y = x2 - τ x1 (one rounding per component, fma).
template <class T>
NTKFAST_HD void residual_sums(const T* x1, const T* x2, int64_t d, double tau, double& y2,
                              double& ay) {
  double s[kPartials] = {}, t[kPartials] = {};
  int64_t k = 0;
  for (; k + kPartials <= d; k += kPartials)
    for (int l = 0; l < kPartials; ++l) {
      const double a = double(x1[k + l]);
      const double y = nt_fma(-tau, a, double(x2[k + l]));
      s[l] = nt_fma(y, y, s[l]);
      t[l] = nt_fma(a, y, t[l]);
    }
  for (; k < d; ++k) {
    const double a = double(x1[k]);
    const double y = nt_fma(-tau, a, double(x2[k]));
    s[0] = nt_fma(y, y, s[0]);
    t[0] = nt_fma(a, y, t[0]);
  }
  y2 = sum_partials(s);
  ay = sum_partials(t);
}

// (c, r2, e) of the input layer from the rows (see the top). False: leave the entry to the
// ordinary path (identical rows, norms out of range).
template <class T>
NTKFAST_HD bool exact_input_pair(const T* x1, const T* x2, int64_t d, double inv_d, ExactPair& p) {
  int64_t k0 = 0;
  while (k0 < d && x1[k0] == x2[k0]) ++k0;
  if (k0 == d) return false;
  if (x1[k0] > x2[k0]) {  // canonical order: (x_i, x_j) and (x_j, x_i) give the same bits
    const T* tmp = x1;
    x1 = x2;
    x2 = tmp;
  }
  double a2s[kPartials] = {}, b2s[kPartials] = {}, abs_[kPartials] = {}, dists[kPartials] = {};
  for (int64_t k = 0; k < d; k += kPartials)
    for (int l = 0; l < kPartials; ++l) {
      if (k + l >= d) break;
      const double a = double(x1[k + l]), b = double(x2[k + l]), diff = a - b;
      a2s[l] = nt_fma(a, a, a2s[l]);
      b2s[l] = nt_fma(b, b, b2s[l]);
      abs_[l] = nt_fma(a, b, abs_[l]);
      dists[l] = nt_fma(diff, diff, dists[l]);
    }
  const double a2 = sum_partials(a2s), b2 = sum_partials(b2s);
  // Products of two squared norms (and their square) stay inside the double range.
  constexpr double lo = 0x1p-480, hi = 0x1p480;
  if (!(a2 >= lo && a2 <= hi && b2 >= lo && b2 <= hi)) return false;
  // τ = ⟨x1,x2⟩/|x1|² leaves y = x2 - τ x1 orthogonal to x1 up to ~√d ε|x2|; where that is not
  // small against y itself (θ ≲ √d ε: scaled copies), τ is refined once by y's projection, which
  // leaves ~ε|x2|. Then ⟨x1,y⟩² ≤ |x1|²|y|²/256 and G = |x1|²|y|² - ⟨x1,y⟩² has no cancellation.
  double tau = sum_partials(abs_) / a2, y2, ay;
  residual_sums(x1, x2, d, tau, y2, ay);
  if (ay * ay * 256.0 > a2 * y2) {
    tau = tau + ay / a2;
    residual_sums(x1, x2, d, tau, y2, ay);
  }
  // |x1|²|y|² - ⟨x1,y⟩², both products exact inside FMAs (sine_sq).
  const double g = sine_sq(a2, y2, ay);
  p.c = nt_fma(tau, a2, ay) * inv_d;
  p.t = 0.0;
  p.r2 = g * inv_d * inv_d;
  p.e = sum_partials(dists) * inv_d;
  return true;
}

// r2' and e' from 1 - ρ' and 1 + ρ' of the output (variances from the tables, `out`).
NTKFAST_HD void exact_set_from_rho(const PairStats<double>& out, double one_minus, double one_plus,
                                   ExactPair& p) {
  const double s = out.sq1 * out.sq2;
  const double dq = out.sq1 - out.sq2;
  p.r2 = out.q1 * out.q2 * (one_minus * one_plus);
  p.e = dq * dq + 2.0 * s * one_minus;
  if (!(p.r2 >= 0.0)) p.r2 = 0.0;
}

// r2' and e' of an output from c' alone (the ordinary accuracy), for the other ops.
NTKFAST_HD void exact_set_from_c(const PairStats<double>& out, ExactPair& p) {
  const double s = out.sq1 * out.sq2;
  const double dq = out.sq1 - out.sq2;
  p.r2 = sine_sq(out.q1, out.q2, p.c);
  p.e = dq * dq + 2.0 * (p.c > 0 ? p.r2 / (s + p.c) : s - p.c);
}

// One op on a near-parallel entry: (c, t) by the ordinary formulas at the accurate angle, r2 and e
// by the forms above. in: the variances entering the op, out: those entering the next one.
template <bool WithNtk>
NTKFAST_HD void exact_pair_op(const LayerOp& op, const double* pool, const PairStats<double>& in,
                              const PairStats<double>& out, ExactPair& p) {
  const bool arc_cosine = op.kind == kABRelu || op.kind == kSign || op.kind == kRectifiedMonomial;
  if (op.kind == kDense) {
    const double w2 = op.p[0], b2 = op.p[1];
    p.r2 = w2 * w2 * p.r2 + w2 * b2 * p.e;
    p.e = w2 * p.e;
    op_dense<WithNtk>(op, p.c, p.t);
    return;
  }
  if (op.kind == kIdentity) return;
  if (!arc_cosine || !(in.q1 > 0 && in.q2 > 0)) {  // zero variance: the ordinary θ = π/2 limit
    apply_op<WithNtk>(op, pool, in, p.c, p.t);
    exact_set_from_c(out, p);
    return;
  }
  const double s = in.sq1 * in.sq2;
  const double r = sqrt(p.r2), c = p.c;
  // θ where it is at most π/2, else φ = π - θ: each with a small relative error.
  const bool far = c < 0;
  // angle(): layer_math.hpp's atan2 (≤ 1.5 ulp relative), a few times cheaper than the C library's
  const double phi = far ? angle(r, -c) : 0.0;
  const double theta = far ? kPi - phi : angle(r, c);
  const double small = far ? phi : theta;  // the angle to the nearer of ρ = ±1
  // 1 - cos(small) = sin²/(1 + cos) = r²/(s (s + |c|)): no cancellation, no call.
  const double inv_s = 1.0 / s;
  const double vers = p.r2 * inv_s / (s + nt_abs(c));
  const double sin_small = r * inv_s, cos_small = nt_abs(c) * inv_s;
  // Only these three get here (arc_cosine); other ops took the ordinary path above.
  if (op.kind == kABRelu) {
    // a·min(x,0) + b·max(x,0): k1 = (a-b)²/(2π), k0 = (a²+b²)/2, ab = a·b (p2).
    //   ρ' = cos θ + κ h(θ)  (κ = k1/k0 ≤ 2/π):  1 - ρ' = vers θ - κ h(θ), no cancellation;
    //   θ = π - φ:  c'/s = k1 h(φ) - ab cos φ,  E[φ'φ'] = ab + k1 φ,
    //   1 - ρ' = (k0 + ab)/k0 - (ab/k0) vers φ - κ h(φ),  1 + ρ' = π κ + (ab/k0) vers φ + κ h(φ).
    const double k1 = op.p[0], k0 = op.p[1], ab = op.p[2];
    if (!(k0 > 0)) {  // a = b = 0: everything is 0
      apply_op<WithNtk>(op, pool, in, p.c, p.t);
      exact_set_from_c(out, p);
      return;
    }
    const double kappa = k1 / k0, h = sin_minus_theta_cos(small, sin_small, cos_small);
    double one_minus, one_plus;
    if (!far) {
      const double dot = nt_mad(-k1, theta, k0);  // op_abrelu's operations
      p.c = nt_mad(k1, r, dot * c);
      if (WithNtk) p.t = dot * p.t;
      one_minus = vers - kappa * h;
      one_plus = 2.0 - one_minus;
    } else {
      p.c = s * k1 * h + ab * c;  // s (k1 h(φ) - ab cos φ), cos φ = -c/s
      if (WithNtk) p.t = (ab + k1 * phi) * p.t;
      one_minus = (k0 + ab) / k0 - (ab / k0) * vers - kappa * h;
      one_plus = kPi * kappa + (ab / k0) * vers + kappa * h;
    }
    exact_set_from_rho(out, one_minus, one_plus, p);
    return;
  }
  if (op.kind == kSign) {
    // E = (2/π) asin ρ = 1 - 2θ/π:  1 - ρ' = 2θ/π,  1 + ρ' = 2φ/π.
    p.c = (kHalfPi - theta) * (2.0 / kPi);
    if (WithNtk) p.t = 0.0;
    exact_set_from_rho(out, theta * (2.0 / kPi), (far ? phi : kPi - theta) * (2.0 / kPi), p);
    return;
  }
  {  // RectifiedMonomial
    // Cho & Saul's J_n / (2π) at unit variances, j_n(θ); ρ' = j_n(θ)/j_n(0), j_n(0) = (2n-1)!!/2.
    // The deficits e_n = j_n(0) - j_n(θ) by their own recursion (from j's):
    //   e_0 = θ/(2π),  e_1 = (π vers θ - h(θ))/(2π),
    //   e_n = (2n-1) (vers θ · j_{n-1}(0) + cos θ · e_{n-1}) - (n-1)² sin²θ j_{n-2}(θ),
    // where the last two terms cancel at most ~2x. c', t' by the ordinary recursion on c, r2
    // (for n = 1 beyond π/2 as s h(φ)/(2π), its cancellation-free form; n ≥ 2 there keeps the
    // ordinary absolute accuracy).
    const int n = op.degree;
    const double cos_t = c * inv_s, sin2 = p.r2 * inv_s * inv_s;
    const double h = sin_minus_theta_cos(small, sin_small, cos_small);
    const double th_vers = far ? 2.0 - vers : vers;  // vers θ = 2 - vers φ
    // j_0 = (π - θ)/(2π), from φ itself beyond π/2 (π - (π - φ) would lose φ's relative accuracy)
    double j_prev2 = 0.0, j_prev = (far ? phi : kPi - theta) * (0.5 / kPi);  // j_{k-2}, j_{k-1}
    double g_prev = j_prev, g_cur = j_prev;  // g_{k-1}, g_k (with s^k)
    double e_cur = theta * (0.5 / kPi), j0_cur = 0.5;  // e_k, j_k(0)
    if (n >= 1) {
      const double j1 = far ? h * (0.5 / kPi) : (sqrt(sin2) + (kPi - theta) * cos_t) * (0.5 / kPi);
      e_cur = far ? 0.5 - h * (0.5 / kPi) : (kPi * vers - h) * (0.5 / kPi);
      g_cur = (r + (kPi - theta) * c) * (0.5 / kPi);
      if (far) g_cur = s * h * (0.5 / kPi);
      j_prev2 = j_prev;
      j_prev = j1;
      for (int k = 2; k <= n; ++k) {
        const double j_k = (2.0 * k - 1.0) * cos_t * j_prev + double((k - 1) * (k - 1)) * sin2 * j_prev2;
        const double e_k = (2.0 * k - 1.0) * (th_vers * j0_cur + cos_t * e_cur) -
                           double((k - 1) * (k - 1)) * sin2 * j_prev2;
        const double g_k = (2.0 * k - 1.0) * c * g_cur + double((k - 1) * (k - 1)) * p.r2 * g_prev;
        j0_cur = (2.0 * k - 1.0) * j0_cur;
        e_cur = e_k;
        j_prev2 = j_prev;
        j_prev = j_k;
        g_prev = g_cur;
        g_cur = g_k;
      }
    }
    p.c = g_cur;
    if (WithNtk) p.t = n == 0 ? 0.0 : double(n) * double(n) * g_prev * p.t;
    const double one_minus = e_cur / j0_cur;
    exact_set_from_rho(out, one_minus, 2.0 - one_minus, p);
  }
}

// The whole program on one near-parallel entry, rows x1, x2 (d features) and their tables (q[k *
// stride], sq likewise, rescale likewise or null). False: leave the entry to the ordinary path.
template <bool WithNtk, class T>
NTKFAST_HD bool exact_pair_entry(const ProgramView& prog, const T* x1, const T* x2, int64_t d,
                                 double inv_d, const double* q1, const double* sq1,
                                 const int32_t* rescale1, int64_t stride1, const double* q2,
                                 const double* sq2, const int32_t* rescale2, int64_t stride2,
                                 double& c, double& t) {
  for (int k = 0; k < prog.n_ops; ++k)
    if ((rescale1 && rescale1[k * stride1] != 0) || (rescale2 && rescale2[k * stride2] != 0))
      return false;
  ExactPair p;
  if (!exact_input_pair(x1, x2, d, inv_d, p)) return false;
  for (int k = 0; k < prog.n_ops; ++k) {
    const PairStats<double> in{q1[k * stride1], q2[k * stride2], sq1[k * stride1], sq2[k * stride2]};
    const PairStats<double> out{q1[(k + 1) * stride1], q2[(k + 1) * stride2],
                                sq1[(k + 1) * stride1], sq2[(k + 1) * stride2]};
    exact_pair_op<WithNtk>(prog.ops[k], prog.pool, in, out, p);
  }
  c = p.c;
  t = p.t;
  return true;
}

}  // namespace NTKFAST_ISA_NAMESPACE
}  // namespace ntkfast
