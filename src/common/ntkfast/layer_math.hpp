// layer_math.hpp -- the per-entry layer maps of ntkfast, written once for the CPU and the GPU.
//
// Math: the NNGP recursion of Lee et al. 2018 and the NTK recursion of Jacot et al. 2018 /
// Arora et al. 2019, in neural-tangents' conventions (Novak et al. 2020):
//   every entry (x, x') of a Gram matrix carries two running numbers through the network:
//     c = Σ(x, x')   the NNGP cross-covariance,   t = Θ(x, x')   the NTK,
//   and each layer op maps (c, t) given the per-row variances q1 = Σ(x, x), q2 = Σ(x', x')
//   entering the op (and their square roots sq1, sq2, tabulated once per row):
//     Dense:      c <- W² c + b²,   t <- γ·c_new + α·c_old + W² t + β     (α, β, γ: parameterization)
//     activation: c <- E[φ(u)φ(v)], t <- E[φ'(u)φ'(v)] · t,  (u, v) ~ N(0, [[q1, c], [c, q2]]).
//   A per-row variance goes through the same function with c = q1 = q2, so the diagonal of a Gram
//   matrix and the per-row variances agree to the last bit.
//
// Symmetry: every formula is symmetric in (q1, q2) to the last bit (q1 + q2 before anything is
// added to it, products of the two formed together), because a symmetric Gram computes entry
// (j, i) as (i, j) with the roles swapped and a duplicate row must equal the original.
//
// Lanes: every function is a template on the lane type V: a scalar (float/double, host or CUDA
// device), a GCC vector of doubles or a Pack of them (the CPU kernels, see simd.hpp). Only
// arithmetic, comparisons and nt_select(mask, a, b) are used, which mean the same for all of
// them; nt_sqrt, nt_exp, nt_fma, nt_max, nt_abs, ... are overloaded (one instruction each on the
// CPU vectors).
//
// Guards (never -ffast-math: they rely on IEEE semantics):
//   r² = q1 q2 - c² is formed with FMAs (no cancellation as ρ -> ±1, exactly 0 for a duplicate
//   row) and clamped at 0; s = √(q1 q2), where needed, is q1 itself when q1 == q2;
//   θ comes from atan2(r, c) (accurate at ρ = ±1), with θ = π/2 where q1 q2 = 0 and c = 0
//   (the limit of a zero-variance pre-activation; neural-tangents' convention);
//   √(q1 q2) is formed as √q1·√q2; products of two variances must stay inside the double range,
//   which both engines check on the per-row variances before computing a Gram matrix
//   (row_step.hpp).
#pragma once

#include <cmath>
#include <cstdint>

#include "program.hpp"

// Always inlined: the CPU kernels run these on simd.hpp's Packs (2-4 vectors), where a call would
// pass every value through memory and GCC's size heuristics often decline to inline.
#if defined(__CUDACC__)
#define NTKFAST_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define NTKFAST_HD inline __attribute__((always_inline))
#else
#define NTKFAST_HD inline
#endif

// Each CPU instruction-set variant compiles this header into its own inline namespace, so the
// linker never merges an AVX-512 copy of a function into code that runs on a plain x86-64 CPU.
#ifndef NTKFAST_ISA_NAMESPACE
#define NTKFAST_ISA_NAMESPACE generic
#endif

// A switch over OpKind that forgets an op must not compile (program.hpp); the flags say so too,
// this keeps it true for any build that includes the header.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic error "-Wswitch"
#endif

namespace ntkfast {
inline namespace NTKFAST_ISA_NAMESPACE {

// ------------------------------------------------------------------------------------------------
// Scalar overloads (host and device). The CPU vector overloads live in simd.hpp.

NTKFAST_HD double nt_sqrt(double x) { return sqrt(x); }
NTKFAST_HD float nt_sqrt(float x) { return sqrtf(x); }
NTKFAST_HD double nt_exp(double x) { return exp(x); }
NTKFAST_HD float nt_exp(float x) { return expf(x); }
// nt_fma: a·b + c rounded once, always (exactness matters where it is used).
// nt_mad: a·b + c, fused where the hardware has FMA, else multiply-then-add: for speed only.
// The kernels are compiled with -ffp-contract=off, so these are the only fused operations and
// the same expression rounds the same way in every context (a duplicate row equals the diagonal).
NTKFAST_HD double nt_fma(double a, double b, double c) { return fma(a, b, c); }
NTKFAST_HD float nt_fma(float a, float b, float c) { return fmaf(a, b, c); }
#if defined(__CUDA_ARCH__) || defined(__FMA__)
NTKFAST_HD double nt_mad(double a, double b, double c) { return fma(a, b, c); }
NTKFAST_HD float nt_mad(float a, float b, float c) { return fmaf(a, b, c); }
#else
NTKFAST_HD double nt_mad(double a, double b, double c) { return a * b + c; }
NTKFAST_HD float nt_mad(float a, float b, float c) { return a * b + c; }
#endif

// A lane value from a scalar (works for scalars and GCC vectors alike). x - 0 is x exactly, also
// for x = -0 (x + 0 is not), so the compiler may drop the subtraction and keep a plain broadcast.
template <class V>
NTKFAST_HD V splat(double x) { return x - V{}; }

// m ? a : b lane by lane (a scalar bool, a GCC vector mask, or simd.hpp's PackMask).
template <class M, class V>
NTKFAST_HD V nt_select(M m, V a, V b) { return m ? a : b; }

// The CPU vector overloads of these (simd.hpp) compute the same with one instruction each.
template <class V>
NTKFAST_HD V nt_max(V a, V b) { return nt_select(a > b, a, b); }
template <class V>
NTKFAST_HD V nt_min(V a, V b) { return nt_select(a < b, a, b); }
// |a| with the sign bit cleared (|-0| = +0), and a with its sign flipped where s has its sign bit
// set (a · sign(s), exact).
NTKFAST_HD double nt_abs(double a) { return fabs(a); }
NTKFAST_HD float nt_abs(float a) { return fabsf(a); }
NTKFAST_HD double nt_xorsign(double a, double s) { return copysign(1.0, s) * a; }

constexpr double kPi = 3.14159265358979323846;
constexpr double kHalfPi = 1.57079632679489661923;
constexpr double kQuarterPi = 0.78539816339744830962;
constexpr double kTanPi8 = 0.41421356237309504880;

// base + Scale·atan(w) for |w| <= tan(π/8) (Scale = 1 or 2: the constants scale exactly):
// base + Scale·(w + w z P(z)), z = w², P the degree-9 minimax fit of tools/fit_atan.py (relative
// error 0.16 ulp before rounding, 0.65 ulp as evaluated here). Horner's rule: fewer operations
// than Estrin's scheme, and the CPU kernels keep enough independent entries in flight that the
// longer dependency chain costs nothing.
template <int Scale, class V>
NTKFAST_HD V base_plus_atan(V base, V w) {
  constexpr double k = Scale;
  const V z = w * w;
  V p = nt_mad(splat<V>(k * 0.02125985465703717), z, splat<V>(k * -0.04359096199725628));
  p = nt_mad(p, z, splat<V>(k * 0.05692539356211354));
  p = nt_mad(p, z, splat<V>(k * -0.06641121267638711));
  p = nt_mad(p, z, splat<V>(k * 0.07690068309805519));
  p = nt_mad(p, z, splat<V>(k * -0.0909078241313454));
  p = nt_mad(p, z, splat<V>(k * 0.1111110665361545));
  p = nt_mad(p, z, splat<V>(k * -0.1428571419526196));
  p = nt_mad(p, z, splat<V>(k * 0.19999999999088963));
  p = nt_mad(p, z, splat<V>(k * -0.3333333333333015));
  return nt_mad(w * z, p, base + k * w);
}

// The angle θ ∈ [0, π] of (c, r ≥ 0), i.e. atan2(r, c), π/2 when both are 0, as θ = base + atan(w)
// with |w| <= tan(π/8): one division serves both the octant reduction (atan(small/big), swapped to
// π/2 - that when r >= |c|, reflected to π - that when c < 0) and the tan(π/8) reduction
// (atan(u) = π/4 + atan((u - 1)/(u + 1))). The two signs of the octant fold into w (atan is odd).
// Split in two so that the CPU engine can run the reduction and the polynomial as separate
// passes over a chunk (shorter dependency chains); angle() composes them.
template <class V>
struct AngleParts {
  V w, base;
};

template <class V>
NTKFAST_HD AngleParts<V> angle_parts(V r, V c) {
  const V ac = nt_abs(c);
  // >=, not >: at r = c = 0 (a zero-variance pair, q1 q2 = 0) this gives θ = π/2, the uncorrelated
  // limit (angle_or_half_pi), at no cost; at r = |c| > 0 both octants give π/4 (or 3π/4) exactly.
  const auto swap = r >= ac;
  const auto negative = c < 0;
  const V big = nt_select(swap, r, ac);
  const V small = nt_select(swap, ac, r);
  const auto hi = small > kTanPi8 * big;
  const V num = nt_select(hi, small - big, small);
  const V den = nt_max(nt_select(hi, small + big, big), splat<V>(1e-300));
  const V base0 = nt_select(hi, splat<V>(kQuarterPi), splat<V>(0.0));
  const V base1 = nt_select(swap, kHalfPi - base0, base0);
  const V w = num / den;
  return {nt_xorsign(nt_select(swap, -w, w), c), nt_select(negative, kPi - base1, base1)};
}

template <class V>
NTKFAST_HD V angle_from_parts(const AngleParts<V>& parts) {
  return base_plus_atan<1>(parts.base, parts.w);
}

template <class V>
NTKFAST_HD V angle(V r, V c) {
  return angle_from_parts(angle_parts(r, c));
}

// atan2(y, x) for x > 0: π/2 - angle(x, y), formed as (π/2 - base) + atan(-w), so that a result
// near 0 keeps its relative accuracy (π/2 - base is exact for every base angle_parts gives).
template <class V>
NTKFAST_HD V atan2_right(V y, V x) {
  const AngleParts<V> parts = angle_parts(x, y);
  return base_plus_atan<1>(kHalfPi - parts.base, -parts.w);
}

// The same θ = atan2(r, c) for the arc-cosine family, whose s = √(q1 q2) = √(r² + c²) comes from
// the per-row tables, by the half angle: tan(θ/2) = r / (s + |c|) ∈ [0, 1], reflected to π - θ
// for c < 0; above tan(π/8) the reduction θ/2 = π/4 + atan((r - d)/(r + d)), d = s + |c|, so one
// division gives θ = base + 2 atan(w), |w| <= tan(π/8). No octant swap: ~5 operations fewer than
// angle_parts, for a relative error of θ of at most 2.1 ulp instead of 1.5 (measured against
// mpmath on 20,000 pairs with ρ uniform, ρ -> ±1 and ρ -> 0; s rounds once more than r). r = c = 0
// (a zero-variance pair) gives θ = π/2 exactly (>= below); c = ±0 < r gives π/2 to ~2 ulp (r and
// s round differently).
template <class V>
NTKFAST_HD AngleParts<V> arccos_angle_parts(V r, V c, V s) {
  const V d = s + nt_abs(c);
  const auto hi = r >= kTanPi8 * d;
  const V num = nt_select(hi, r - d, r);
  const V den = nt_max(nt_select(hi, r + d, d), splat<V>(1e-300));
  const V base0 = nt_select(hi, splat<V>(kHalfPi), splat<V>(0.0));
  return {nt_xorsign(num, c) / den, nt_select(c < 0, kPi - base0, base0)};
}

template <class V>
NTKFAST_HD V arccos_angle_from_parts(const AngleParts<V>& parts) {
  return base_plus_atan<2>(parts.base, parts.w);
}

// √(q1 q2) without overflow, and exactly q1 when q1 == q2.
template <class V>
NTKFAST_HD V pair_scale(V q1, V q2, V sq1, V sq2) {
  return nt_select(q1 == q2, q1, sq1 * sq2);
}

// r² = q1 q2 - c² = s² (1 - ρ²) ≥ 0 with error ~ε r² (not ~ε q1 q2): both products are formed
// exactly inside FMAs, so nothing cancels as ρ -> ±1, and a duplicate row gives exactly 0.
template <class V>
NTKFAST_HD V sine_sq(V q1, V q2, V c) {
  const V p = c * c;
  return nt_max(nt_fma(q1, q2, -p) - nt_fma(c, c, -p), splat<V>(0.0));
}

// ------------------------------------------------------------------------------------------------
// The ops. Each maps (c, t) for one entry; WithNtk = false skips the NTK arithmetic.
// q1, q2 are the per-row variances entering the op, sq1, sq2 their square roots.

template <class V>
struct PairStats {
  V q1, q2, sq1, sq2;
};

template <bool WithNtk, class V>
NTKFAST_HD void op_dense(const LayerOp& op, V& c, V& t) {
  const V w2 = splat<V>(op.p[0]);
  const V c_new = nt_mad(w2, c, splat<V>(op.p[1]));
  if (WithNtk) {
    if (op.p[2] == 0.0 && op.p[3] == 0.0 && op.p[4] == 1.0)  // 'ntk': t <- W² t + c_new
      t = nt_mad(w2, t, c_new);
    else
      t = nt_mad(splat<V>(op.p[4]), c_new, nt_mad(splat<V>(op.p[2]), c, nt_mad(w2, t, splat<V>(op.p[3]))));
  }
  c = c_new;
}

// a·min(x, 0) + b·max(x, 0) (ReLU, LeakyReLU, Abs): the arc-cosine kernel of order 1,
//   E[φφ] = (a-b)²/(2π) (r - θ c) + (a²+b²)/2 c,   E[φ'φ'] = (a²+b²)/2 - (a-b)² θ/(2π).
// In pieces (r = √(q1 q2 - c²), θ's reduction, θ, the update) so the CPU engine can run them as
// separate passes over a chunk: each pass is a shorter dependency chain, and the out-of-order core
// keeps more lanes in flight (the hottest loop of the library).
template <class V>
NTKFAST_HD V abrelu_sine(const PairStats<V>& ps, V c) {
  return nt_sqrt(sine_sq(ps.q1, ps.q2, c));
}

template <bool WithNtk, class V>
NTKFAST_HD void abrelu_update(const LayerOp& op, V r, V theta, V& c, V& t) {
  const V k1 = splat<V>(op.p[0]);
  const V dot = nt_mad(-k1, theta, splat<V>(op.p[1]));
  c = nt_mad(k1, r, dot * c);
  if (WithNtk) t = dot * t;
}

template <bool WithNtk, class V>
NTKFAST_HD void op_abrelu(const LayerOp& op, const PairStats<V>& ps, V& c, V& t) {
  const V r = abrelu_sine(ps, c);
  abrelu_update<WithNtk>(op, r, arccos_angle_from_parts(arccos_angle_parts(r, c, ps.sq1 * ps.sq2)),
                         c, t);
}

// θ with the zero-variance limit: where q1 q2 = 0 the pair is uncorrelated (θ = π/2), whatever
// rounding left in c (Cauchy-Schwarz says c = 0 there; neural-tangents' convention too).
template <class V>
NTKFAST_HD V angle_or_half_pi(V r, V c, V q1q2) {
  const V theta = angle(r, c);
  return nt_select(q1q2 == 0, splat<V>(kHalfPi), theta);
}

// sign(x): E = (2/π) asin ρ = (2/π)(π/2 - θ), exactly 0 at θ = π/2 and 1 at θ = 0 (no FMA can
// leave a residue there); the derivative is 0 a.e., so the NTK stops here.
template <bool WithNtk, class V>
NTKFAST_HD void op_sign(const PairStats<V>& ps, V& c, V& t) {
  const V theta = angle_or_half_pi(nt_sqrt(sine_sq(ps.q1, ps.q2, c)), c, ps.q1 * ps.q2);
  c = (kHalfPi - theta) * (2.0 / kPi);
  if (WithNtk) t = splat<V>(0.0);
}

// max(0, x)^n (Cho & Saul's arc-cosine kernel of order n) without dividing by s:
//   g_n = s^n J_n(θ)/(2π):  g_0 = (π-θ)/(2π), g_1 = (r + (π-θ) c)/(2π),
//   g_n = (2n-1) c g_{n-1} + (n-1)² r² g_{n-2};   E[φφ] = g_n,  E[φ'φ'] = n² g_{n-1}.
template <bool WithNtk, class V>
NTKFAST_HD void op_rectified_monomial(const LayerOp& op, const PairStats<V>& ps, V& c, V& t) {
  const int n = op.degree;
  const V r2 = sine_sq(ps.q1, ps.q2, c);
  const V r = nt_sqrt(r2);
  const V theta = angle_or_half_pi(r, c, ps.q1 * ps.q2);
  const V g0 = (kPi - theta) * (0.5 / kPi);
  V g_prev = g0;                          // g_{k-1}
  V g_cur = (r + (kPi - theta) * c) * (0.5 / kPi);  // g_k, k = 1
  if (n == 0) {
    c = g0;
    if (WithNtk) t = splat<V>(0.0);
    return;
  }
  for (int k = 2; k <= n; ++k) {
    const V g_next = (2.0 * k - 1.0) * c * g_cur + double((k - 1) * (k - 1)) * r2 * g_prev;
    g_prev = g_cur;
    g_cur = g_next;
  }
  c = g_cur;
  if (WithNtk) t = double(n) * double(n) * g_prev * t;
}

// a·erf(b·x) + c: after scaling by b², with P = (1 + 2q1)(1 + 2q2) written as
//   D = P - 4c² = 1 + 2(q1 + q2) + 4 r²  (≥ 1, no cancellation),
//   E = (2/π) asin(2c/√P) = (2/π) atan2(2c, √D),   E[φ'φ'] = (4/π)/√D;  then ×a², +c² on E only.
template <bool WithNtk, class V>
NTKFAST_HD void op_erf(const LayerOp& op, const PairStats<V>& ps, V& c, V& t) {
  const double a2 = op.p[0], b2 = op.p[1], c2 = op.p[2];
  const V q1 = b2 * ps.q1, q2 = b2 * ps.q2, cb = b2 * c;
  const V root = nt_sqrt(1.0 + 2.0 * (q1 + q2) + (4.0 * b2 * b2) * sine_sq(ps.q1, ps.q2, c));
  c = (a2 * (2.0 / kPi)) * atan2_right(2.0 * cb, root) + c2;
  if (WithNtk) t = ((a2 * b2 * (4.0 / kPi)) / root) * t;
}

// x·Φ(x) (exact GELU); neural-tangents' closed form (Tsuchida et al.), with
//   δ² = (1 + q1)(1 + q2) - c² = 1 + q1 + q2 + r²  written without cancellation, and
//   P = (1 + q1)(1 + q2):  E[φφ] = ((c² + q1 q2 δ²)/(P δ) + c·atan2(c, δ))/(2π) + c/4,
//   E[φ'φ'] = (1/δ² + (2 + q1 + q2)/P)·c/(2πδ) + 1/4 + atan2(c, δ)/(2π).
// Each product is formed divided by P first (q1 q2 δ² alone overflows from q ~ 1e77), and
// 1 + (1 - q1 q2)/P is written as (2 + q1 + q2)/P: the difference lost ~ε·√q of E[φ'φ'].
template <bool WithNtk, class V>
NTKFAST_HD void op_gelu(const PairStats<V>& ps, V& c, V& t) {
  // Two divisions serve the five quotients of the closed form.
  const V inv_p = 1.0 / ((1.0 + ps.q1) * (1.0 + ps.q2));
  const V delta_sq = 1.0 + (ps.q1 + ps.q2) + sine_sq(ps.q1, ps.q2, c);
  const V delta = nt_sqrt(delta_sq);
  const V inv_delta = 1.0 / delta;
  const V ang = atan2_right(c, delta);
  const V c_in = c;
  c = (((c_in * c_in) * inv_p + ((ps.q1 * ps.q2) * inv_p) * delta_sq) * inv_delta +
       c_in * ang) * (0.5 / kPi) +
      0.25 * c_in;
  if (WithNtk) {
    const V first = (inv_delta * inv_delta + (2.0 + (ps.q1 + ps.q2)) * inv_p) * c_in *
                    inv_delta * (0.5 / kPi);
    t = (first + 0.25 + ang * (0.5 / kPi)) * t;
  }
}

// a·sin(b·x + c):  E = a²/2 (e^{b²(c - σ/2)} - cos 2c · e^{-b²(c + σ/2)}),  σ = q1 + q2;
//   E[φ'φ'] = a² b²/2 (e^{b²(c - σ/2)} + cos 2c · e^{-b²(c + σ/2)}).  Cos is Sin with c + π/2.
template <bool WithNtk, class V>
NTKFAST_HD void op_sin(const LayerOp& op, const PairStats<V>& ps, V& c, V& t) {
  const double half_a2 = op.p[0], b2 = op.p[1], cos2c = op.p[2];
  const V half_sum = 0.5 * (ps.q1 + ps.q2);
  const V e1 = nt_exp(b2 * (c - half_sum));
  const V e2 = cos2c * nt_exp(-b2 * (c + half_sum));
  c = half_a2 * (e1 - e2);
  if (WithNtk) t = (half_a2 * b2) * (e1 + e2) * t;
}

// √2 sin(√(2γ) x + π/4):  E = exp(-γ (q1 + q2 - 2c)),  E[φ'φ'] = 2γ E.
template <bool WithNtk, class V>
NTKFAST_HD void op_rbf(const LayerOp& op, const PairStats<V>& ps, V& c, V& t) {
  const double gamma = op.p[0];
  const V e = nt_exp(gamma * (2.0 * c - (ps.q1 + ps.q2)));
  c = e;
  if (WithNtk) t = (2.0 * gamma) * e * t;
}

// a·exp(b·x):  E = a² exp(b² ((q1 + q2)/2 + c)),  E[φ'φ'] = a² b² exp(...).
template <bool WithNtk, class V>
NTKFAST_HD void op_exp(const LayerOp& op, const PairStats<V>& ps, V& c, V& t) {
  const double a2 = op.p[0], b2 = op.p[1];
  const V e = nt_exp(b2 * (0.5 * (ps.q1 + ps.q2) + c));
  c = a2 * e;
  if (WithNtk) t = (a2 * b2) * e * t;
}

// Kernel-only "normalised Gaussian" map: E = s exp(γ (ρ + shift)), t <- γ exp(γ (ρ + shift)) t.
// A zero-variance row has s = 0: E -> 0 and ρ := 0 (neural-tangents uses s ≥ 1e-15 instead).
template <bool WithNtk, class V>
NTKFAST_HD void op_exp_normalized(const LayerOp& op, const PairStats<V>& ps, V& c, V& t) {
  const double gamma = op.p[0], shift = op.p[1];
  const V s = pair_scale(ps.q1, ps.q2, ps.sq1, ps.sq2);
  V rho = c / nt_max(s, splat<V>(1e-300));
  if (op.degree) rho = nt_min(nt_max(rho, splat<V>(-1.0)), splat<V>(1.0));
  const V e = nt_exp(gamma * (rho + shift));
  c = s * e;
  if (WithNtk) t = gamma * e * t;
}

// a·exp(b·x²):  det² = (1 - 2b q1)(1 - 2b q2) - 4b²c² = 1 - 2b(q1 + q2) + 4b² r²,
//   E = a²/det,  E[φ'φ'] = a² 4b² c / det³.  For b > 0 the expectation diverges where det² ≤ 0 (+inf).
template <bool WithNtk, class V>
NTKFAST_HD void op_gaussian(const LayerOp& op, const PairStats<V>& ps, V& c, V& t) {
  const double a2 = op.p[0], b = op.p[1];
  const V det = nt_sqrt(nt_max(1.0 - 2.0 * b * (ps.q1 + ps.q2) + 4.0 * b * b * sine_sq(ps.q1, ps.q2, c),
                               splat<V>(0.0)));
  const V inv = 1.0 / det;
  const V c_in = c;
  c = a2 * inv;
  if (WithNtk) t = (a2 * 4.0 * b * b) * c_in * inv * inv * inv * t;
}

// exp(-x²) sin(x): with D = |I + 2Λ| = 1 + 2(q1 + q2) + 4 r² and g± = exp((1 + q1 + q2 ± 2c)/(2D) - 1/2),
//   E = (g₊ - g₋) / (2√D);   E[φ'φ'] = ∂E/∂c (Price's theorem)
//     = 2c (g₊ - g₋)/D^{3/2} + (g₊ h₊ - g₋ h₋)/(2√D),   h± = (±D + 4c(1 + q1 + q2 ± 2c))/D².
template <bool WithNtk, class V>
NTKFAST_HD void op_gabor(const PairStats<V>& ps, V& c, V& t) {
  const V D = 1.0 + 2.0 * (ps.q1 + ps.q2) + 4.0 * sine_sq(ps.q1, ps.q2, c);
  const V one_sum = 1.0 + (ps.q1 + ps.q2);
  const V inv_D = 1.0 / D;
  const V root = nt_sqrt(D);
  const V gp = nt_exp((one_sum + 2.0 * c) * (0.5 * inv_D) - 0.5);
  const V gm = nt_exp((one_sum - 2.0 * c) * (0.5 * inv_D) - 0.5);
  const V c_in = c;
  c = (gp - gm) * (0.5 / root);
  if (WithNtk) {
    const V hp = (D + 4.0 * c_in * (one_sum + 2.0 * c_in)) * inv_D * inv_D;
    const V hm = (-D + 4.0 * c_in * (one_sum - 2.0 * c_in)) * inv_D * inv_D;
    t = (2.0 * c_in * (gp - gm) * inv_D / root + (gp * hp - gm * hm) * (0.5 / root)) * t;
  }
}

// Polynomial Σ a_k x^k by its Hermite expansion (neural-tangents' Polynomial / Monomial):
//   E[p(u) p(v)] = Σ_l l! c^l A_l(q1) A_l(q2),  A_l(q) = Σ_i a_{2i+l} (2i+l)!/(2^i i! l!) q^i.
// pool[offset ...]: for the NNGP then for p' (the NTK), per l = 0..n a count m_l, l!, then m_l
// coefficients of A_l in q. No square root and no division: exact at zero variance.
template <class V>
NTKFAST_HD V hermite_dual(const double* table, V q1, V q2, V c) {
  const int n = int(table[0]);
  const double* rec = table + 1;
  V acc = splat<V>(0.0);
  V c_pow = splat<V>(1.0);
  for (int l = 0; l <= n; ++l) {
    const int m = int(rec[0]);
    const double weight = rec[1];
    const double* a = rec + 2;
    V a1 = splat<V>(a[m - 1]), a2 = splat<V>(a[m - 1]);
    for (int i = m - 2; i >= 0; --i) {
      a1 = a1 * q1 + a[i];
      a2 = a2 * q2 + a[i];
    }
    acc = acc + weight * c_pow * (a1 * a2);
    c_pow = c_pow * c;
    rec += 2 + m;
  }
  return acc;
}

template <bool WithNtk, class V>
NTKFAST_HD void op_polynomial(const LayerOp& op, const double* pool, const PairStats<V>& ps,
                              V& c, V& t) {
  const double* nngp_table = pool + op.offset;
  const double* ntk_table = pool + int(op.p[0]);
  const V c_in = c;
  c = hermite_dual(nngp_table, ps.q1, ps.q2, c_in);
  if (WithNtk) t = hermite_dual(ntk_table, ps.q1, ps.q2, c_in) * t;
}

// neural-tangents' Hermite(n): c <- c^n, t <- n c^{n-1} t (valid for unit-variance inputs only).
template <bool WithNtk, class V>
NTKFAST_HD void op_hermite(const LayerOp& op, V& c, V& t) {
  const int n = op.degree;
  V pow_prev = splat<V>(1.0);  // c^{n-1}
  for (int k = 1; k < n; ++k) pow_prev = pow_prev * c;
  if (WithNtk) t = n == 0 ? splat<V>(0.0) : double(n) * pow_prev * t;  // n: one per op, not a lane
  c = n == 0 ? splat<V>(1.0) : pow_prev * c;
}

// One op on one entry (lanes). The CPU engine hoists this switch out of its loops; the CUDA kernel
// and the per-row recursion call it as is.
template <bool WithNtk, class V>
NTKFAST_HD void apply_op(const LayerOp& op, const double* pool, const PairStats<V>& ps, V& c, V& t) {
  switch (static_cast<OpKind>(op.kind)) {
    case kDense: op_dense<WithNtk>(op, c, t); break;
    case kIdentity: break;
    case kABRelu: op_abrelu<WithNtk>(op, ps, c, t); break;
    case kErf: op_erf<WithNtk>(op, ps, c, t); break;
    case kGelu: op_gelu<WithNtk>(ps, c, t); break;
    case kSin: op_sin<WithNtk>(op, ps, c, t); break;
    case kRbf: op_rbf<WithNtk>(op, ps, c, t); break;
    case kExp: op_exp<WithNtk>(op, ps, c, t); break;
    case kExpNormalized: op_exp_normalized<WithNtk>(op, ps, c, t); break;
    case kGaussian: op_gaussian<WithNtk>(op, ps, c, t); break;
    case kGabor: op_gabor<WithNtk>(ps, c, t); break;
    case kSign: op_sign<WithNtk>(ps, c, t); break;
    case kRectifiedMonomial: op_rectified_monomial<WithNtk>(op, ps, c, t); break;
    case kPolynomial: op_polynomial<WithNtk>(op, pool, ps, c, t); break;
    case kHermite: op_hermite<WithNtk>(op, c, t); break;
    case kSeries:    // needs per-row tables: the engines run it themselves (cpu_kernels.cpp)
    case kCallback:  // evaluated by the caller between program segments (engine.cpp)
      c = splat<V>(NAN);
      if (WithNtk) t = splat<V>(NAN);
      break;
  }
}

// Snap of the input Gram: the GEMM and the per-row norms round differently, so a duplicate (or a
// scaled or negated) row can show |ρ| = 1 - O(√d ε). Correlations within `tol` of ±1 are set to ±1
// exactly; otherwise θ ≈ √(2 (1 - |ρ|)) would turn a rounding of ε into an error of √ε.
template <class V>
NTKFAST_HD V snap_input_correlation(V c, V s, double tol) {
  const V ac = nt_abs(c);
  return nt_select(ac >= (1.0 - tol) * s, nt_select(c < 0, -s, s), c);
}

}  // namespace NTKFAST_ISA_NAMESPACE
}  // namespace ntkfast

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
