// series_fallback.hpp -- the dual kernels of a Series op by 2-D quadrature, for the pairs whose
// Hermite series (Mehler's formula) would need more terms than the tables hold: |ρ| near 1 at
// large variances, or an activation with a kink at 0 (its coefficients decay algebraically).
// Rare and scalar. Header-only and __host__ __device__ under nvcc, so the CPU engine (through
// src/cpp/ntkfast/series_fallback.cpp, compiled once at the baseline ISA) and the CUDA engine
// (cuda_engine.cu's series_fallback_kernel) run the same code on the same record.
//
// The activation comes as a record of piecewise Chebyshev interpolants of φ and φ' (built per
// layer in Python from the user's vectorised callable, so no Python runs per entry):
//   [0] kinked: 1 if φ' or φ'' may jump at 0, else 0; -1: no record (no fallback for this op)
//   [1] h, [2] B = M·h, [3] M, [4] G, [5] P
//   then 2·(M + G) panels of P Chebyshev coefficients for φ, and as many for φ'. Panel p < M
//   covers |y| in [p·h, (p + 1)·h], panel M + g covers |y| in [B·2^g, B·2^(g+1)]; panels
//   0..M+G-1 are for y >= 0, the next M + G for y < 0. Beyond the last panel the value at its
//   end is used (the quadrature's arguments reach past it only with Gaussian weight < 1e-22).
//
// The quadrature. For u = a·X, v = b·Y with Y = r·X + s·Z (r = |ρ|, s = √(1 - r²), Z independent
// of X):
//   E[φ(u)φ(v)] = ∫ φ(a x) G(x) dN(x),   G(x) = ∫ φ(±b (r x + s z)) dN(z),
// and likewise for φ' (ρ < 0: v's sign flipped, which φ(-y) absorbs). Near parallel pairs are
// the point, so s is small: G is φ smoothed at the spread t = b·s of v's argument.
//  - outer (x): Gauss-Legendre panels graded from the scale of the integrand's features at
//    x = 0 (1/a, 1/(b r), and s where φ has a kink: the smoothed kink of G) to |x| = 10;
//  - inner (z): Gauss-Hermite where v's argument is smooth on the Gaussian's scale (t small and
//    no kink within |z| < 10), with as few nodes as t allows (hermite_rule); else, for a kink
//    within |z| < 10 at small t, exactly from the truncated Gaussian moments (kink_moments); else
//    Gauss-Legendre panels graded from the z where v's argument crosses 0 (a kink there is a
//    panel edge, exactly).
// Panels are at most 1 wide: 12 Gauss-Legendre nodes then integrate the Gaussian factor to
// ~1e-16 of the panel's weight. The nodes and weights (FallbackRules) are computed once on the
// host (make_fallback_rules) and read from memory by both engines.
//
// Device notes: only arithmetic and the C math functions that CUDA provides for the device; the
// scratch is 6·P doubles (P <= kFallbackMaxPoints) of local memory, which is why the CUDA engine
// calls this from a kernel of its own and not from its tile kernels.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define NTKFAST_FALLBACK_HD __host__ __device__
#else
#define NTKFAST_FALLBACK_HD
#endif

#ifndef NTKFAST_ISA_NAMESPACE
#define NTKFAST_ISA_NAMESPACE generic
#endif

namespace ntkfast {

// The CPU engine's entry point (src/cpp/ntkfast/series_fallback.cpp: the rules made once, then
// series_pair_fallback_with below). Outside the ISA namespace: one definition for every ISA.
// E[φ(u)φ(v)] and E[φ'(u)φ'(v)] for u = a·X, v = b·Y, (X, Y) standard normal with correlation
// rho; about 1e-15 of the values' scale.
void series_pair_fallback(const double* record, double a, double b, double rho, double* nngp,
                          double* dot);

// Everything else is inline, so in the ISA's namespace: the linker never merges an AVX-512 copy
// into code that runs on a plain x86-64 CPU (layer_math.hpp).
inline namespace NTKFAST_ISA_NAMESPACE {

// Header fields of a fallback record, then the coefficients.
constexpr int64_t kFallbackHeader = 6;
// The largest P (coefficients per panel) a record may have (fallback_record_valid; Python's
// records have 20): it sizes the quadrature's scratch, local memory on the GPU.
constexpr int kFallbackMaxPoints = 32;

// Length of a record with M uniform and G geometric panels of P coefficients.
inline int64_t fallback_record_length(int64_t uniform, int64_t geometric, int64_t points) {
  return kFallbackHeader + 4 * (uniform + geometric) * points;
}

// Whether `record` (of `length` values) is a well-formed record or a -1 "none" record.
inline bool fallback_record_valid(const double* record, int64_t length) {
  if (length < 1) return false;
  if (record[0] == -1.0) return true;
  if (length < kFallbackHeader || !(record[0] == 0.0 || record[0] == 1.0)) return false;
  const double h = record[1], b = record[2], m = record[3], g = record[4], p = record[5];
  const bool integral = m == std::floor(m) && g == std::floor(g) && p == std::floor(p);
  if (!integral || !(m >= 1 && m <= 1e7 && g >= 1 && g <= 1000 && p >= 2 && p <= kFallbackMaxPoints))
    return false;
  if (!(h > 0 && std::isfinite(h) && b == m * h)) return false;
  return length >= fallback_record_length(int64_t(m), int64_t(g), int64_t(p));
}

namespace fallback {

constexpr double kRange = 10.0;         // |x|, |z| beyond: Gaussian weight below 2e-22
constexpr double kMaxPanel = 1.0;
constexpr double kSmoothSpread = 0.25;  // inner Gauss-Hermite for t up to this (error < 1e-30)
constexpr double kMinGrading = 1e-12;   // the finest outer panel near a smoothed kink
constexpr double kKinkReach = 12.0;     // the smoothed kink of G is below e^-72 beyond 12·s
constexpr int kLegendre = 12;
constexpr double kFallbackPi = 3.14159265358979323846;
constexpr double kInvSqrt2Pi = 0x1.9884533d43651p-2;  // 1.0 / sqrt(2.0 * kFallbackPi), as rounded

// Gauss-Hermite sizes, smallest first. With n nodes the rule integrates E f(y0 + t·Z) exactly
// for f a polynomial of degree 2n - 1; for f analytic on a disc of radius d about y0 (|f| <= M
// there) the Taylor terms left over sum to about 2·M·(2n - 1)!!·(t/d)^(2n) (E Z^2n = (2n-1)!!),
// so the n-node rule is used where that is below 1e-17·M (FallbackRules::hermite_ratio). The
// largest rule keeps the original criterion (t <= kSmoothSpread), not this bound.
constexpr int kHermiteSizes[] = {2, 4, 8, 12, 16, 24};
constexpr int kHermiteRules = int(sizeof(kHermiteSizes) / sizeof(kHermiteSizes[0]));
constexpr int kMaxHermite = 24;
constexpr double kHermiteTolerance = 1e-17;

// std::min, std::max and std::clamp, with their exact semantics (NaN included), for the device.
NTKFAST_FALLBACK_HD inline double min_of(double a, double b) { return b < a ? b : a; }
NTKFAST_FALLBACK_HD inline double max_of(double a, double b) { return a < b ? b : a; }
NTKFAST_FALLBACK_HD inline double clamp_to(double v, double lo, double hi) {
  return v < lo ? lo : (hi < v ? hi : v);
}

}  // namespace fallback

// The quadrature's nodes and weights: plain data, so the CUDA engine can copy it to the device.
struct FallbackRules {
  double gl_x[fallback::kLegendre], gl_w[fallback::kLegendre];  // on [-1, 1]
  // Σ w f(z) ≈ E f(Z), Z standard normal, one rule per kHermiteSizes entry.
  double gh_z[fallback::kHermiteRules][fallback::kMaxHermite];
  double gh_w[fallback::kHermiteRules][fallback::kMaxHermite];
  double hermite_ratio[fallback::kHermiteRules];  // the largest t/d for each rule (the last: unused)
  int gh_n[fallback::kHermiteRules];              // kHermiteSizes (a constexpr array is host-only)
};

namespace fallback {

// Gauss-Hermite (weight e^{-x²}): Newton on the orthonormal recurrence (Numerical Recipes'
// gauher), then z = √2·x and w/√π for the standard normal. Host only.
inline void hermite_nodes(int n, double* gz, double* gw) {
  double root[kMaxHermite];
  for (int i = 0; i < n / 2; ++i) {
    double z;
    if (i == 0) z = std::sqrt(2.0 * n + 1) - 1.85575 * std::pow(2.0 * n + 1, -0.16667);
    else if (i == 1) z = root[0] - 1.14 * std::pow(double(n), 0.426) / root[0];
    else if (i == 2) z = 1.86 * root[1] - 0.86 * root[0];
    else if (i == 3) z = 1.91 * root[2] - 0.91 * root[1];
    else z = 2.0 * root[i - 1] - root[i - 2];
    double dp = 0;
    for (int iter = 0; iter < 100; ++iter) {
      double p1 = std::pow(kFallbackPi, -0.25), p2 = 0.0;
      for (int j = 1; j <= n; ++j) {
        const double p3 = p2;
        p2 = p1;
        p1 = z * std::sqrt(2.0 / j) * p2 - std::sqrt(double(j - 1) / j) * p3;
      }
      dp = std::sqrt(2.0 * n) * p2;
      const double step = p1 / dp;
      z -= step;
      if (std::fabs(step) < 1e-15 * max_of(1.0, std::fabs(z))) break;
    }
    root[i] = z;
    const double w = 2.0 / (dp * dp) / std::sqrt(kFallbackPi);
    gz[i] = std::sqrt(2.0) * z;
    gw[i] = w;
    gz[n - 1 - i] = -std::sqrt(2.0) * z;
    gw[n - 1 - i] = w;
  }
}

}  // namespace fallback

// The rules, computed (host only; a few microseconds): Gauss-Legendre by Newton on P_n from the
// usual cosine guesses (Numerical Recipes' gauleg), the Gauss-Hermite rules by hermite_nodes.
inline FallbackRules make_fallback_rules() {
  using namespace fallback;
  FallbackRules r{};
  for (int i = 0; i < kLegendre; ++i) {
    double x = std::cos(kFallbackPi * (i + 0.75) / (kLegendre + 0.5)), p = 0, dp = 0;
    for (int iter = 0; iter < 100; ++iter) {
      double p0 = 1.0, p1 = x;
      for (int k = 2; k <= kLegendre; ++k) {
        const double p2 = ((2 * k - 1) * x * p1 - (k - 1) * p0) / k;
        p0 = p1;
        p1 = p2;
      }
      p = p1;
      dp = kLegendre * (x * p1 - p0) / (x * x - 1.0);
      const double step = p / dp;
      x -= step;
      if (std::fabs(step) < 1e-17) break;
    }
    r.gl_x[i] = x;
    r.gl_w[i] = 2.0 / ((1.0 - x * x) * dp * dp);
  }
  for (int rule = 0; rule < kHermiteRules; ++rule) {
    const int n = kHermiteSizes[rule];
    r.gh_n[rule] = n;
    hermite_nodes(n, r.gh_z[rule], r.gh_w[rule]);
    double double_factorial = 1.0;  // (2n - 1)!!
    for (int k = 1; k < 2 * n; k += 2) double_factorial *= k;
    r.hermite_ratio[rule] = std::pow(kHermiteTolerance / (2.0 * double_factorial), 0.5 / n);
  }
  return r;
}

namespace fallback {

// φ and φ' from a record, one panel lookup for both.
class Interpolant {
 public:
  NTKFAST_FALLBACK_HD explicit Interpolant(const double* record)
      : h_(record[1]), b_(record[2]), uniform_(int64_t(record[3])),
        geometric_(int64_t(record[4])), points_(int64_t(record[5])),
        phi_(record + kFallbackHeader),
        dphi_(phi_ + 2 * (uniform_ + geometric_) * points_) {}

  NTKFAST_FALLBACK_HD double h() const { return h_; }
  NTKFAST_FALLBACK_HD int64_t points() const { return points_; }
  // Panel 0 of y >= 0 (negative: of y < 0), φ's coefficients (derivative: φ''s).
  NTKFAST_FALLBACK_HD const double* first_panel(bool negative, bool derivative) const {
    return (derivative ? dphi_ : phi_) + (negative ? (uniform_ + geometric_) * points_ : 0);
  }

  NTKFAST_FALLBACK_HD void operator()(double y, double& f, double& df) const {
    double ay = fabs(y), lo, inv_width;
    int64_t panel;
    if (ay < b_) {
      panel = int64_t(ay / h_);
      if (panel > uniform_ - 1) panel = uniform_ - 1;
      lo = double(panel) * h_;
      inv_width = 1.0 / h_;
    } else {
      int e;
      frexp(ay / b_, &e);  // ay / b in [2^(e-1), 2^e)
      int64_t g = e - 1;
      if (g >= geometric_) {
        g = geometric_ - 1;
        ay = ldexp(b_, int(geometric_));
      }
      lo = ldexp(b_, int(g));
      inv_width = 1.0 / lo;
      panel = uniform_ + g;
    }
    if (y < 0) panel += uniform_ + geometric_;
    const double t = clamp_to(2.0 * (ay - lo) * inv_width - 1.0, -1.0, 1.0);
    // Both Clenshaw recurrences in one loop: independent chains, so they overlap.
    const double* c = phi_ + panel * points_;
    const double* d = dphi_ + panel * points_;
    const double t2 = 2.0 * t;
    double b1 = 0.0, b2 = 0.0, e1 = 0.0, e2 = 0.0;
    for (int64_t k = points_ - 1; k >= 1; --k) {
      const double b0 = t2 * b1 - b2 + c[k];
      const double e0 = t2 * e1 - e2 + d[k];
      b2 = b1;
      b1 = b0;
      e2 = e1;
      e1 = e0;
    }
    f = t * b1 - b2 + c[0];
    df = t * e1 - e2 + d[0];
  }

 private:
  double h_, b_;
  int64_t uniform_, geometric_, points_;
  const double* phi_;
  const double* dphi_;
};

// Taylor coefficients at T = -1 of the Chebyshev series c[0..n-1] in T, times scale^k:
// out[k] = p^(k)(-1)/k! · scale^k (repeated differentiation of the series, each divided by k).
// out[k] is written for k < n, and the result goes to out[k]·sign^k (sign = ±1, exact).
NTKFAST_FALLBACK_HD inline void taylor_at_left_end(const double* c, int64_t n, double scale,
                                                   double sign, double* out) {
  double cur[kFallbackMaxPoints];
  for (int64_t j = 0; j < n; ++j) cur[j] = c[j];
  double power = 1.0;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t m = n - k;  // cur holds m coefficients
    double value = 0.0;  // Σ cur[j]·T_j(-1), T_j(-1) = (-1)^j
    for (int64_t j = 0; j < m; ++j) value += j % 2 ? -cur[j] : cur[j];
    out[k] = k % 2 && sign < 0 ? -(value * power) : value * power;
    power *= scale;
    if (m == 1) break;
    // Derivative coefficients (m - 1 of them), divided by k + 1; in place: d[j-1] goes to cur[j]
    // once cur[j] is read, then everything moves down by one.
    double d_hi = 0.0, d_hi2 = 0.0;  // d[j+1], d[j+2]
    for (int64_t j = m - 1; j >= 1; --j) {
      const double dj = d_hi2 + 2.0 * double(j) * cur[j];  // d[j-1]
      cur[j] = dj;
      d_hi2 = d_hi;
      d_hi = dj;
    }
    cur[1] *= 0.5;
    for (int64_t j = 0; j < m - 1; ++j) cur[j] = cur[j + 1] / double(k + 1);
  }
}

// Calls visit(node, weight·pdf(node)) for Gauss-Legendre panels from `anchor` outwards to
// ±kRange (a side with anchor at its end has none), the first `first` wide, each twice the last,
// at most kMaxPanel; from `far` away from the anchor on, at least `far_width` wide.
template <class Visit>
NTKFAST_FALLBACK_HD void graded_panels(const FallbackRules& rules, double anchor, double first,
                                       Visit visit, double far = kRange, double far_width = 0.0) {
  for (int side = -1; side <= 1; side += 2) {
    double edge = anchor, width = first;
    while (side > 0 ? edge < kRange : edge > -kRange) {
      if (fabs(edge - anchor) >= far) width = max_of(width, far_width);
      const double next =
          side > 0 ? min_of(edge + width, kRange) : max_of(edge - width, -kRange);
      const double mid = 0.5 * (edge + next), half = 0.5 * fabs(next - edge);
      for (int k = 0; k < kLegendre; ++k) {
        const double x = mid + half * rules.gl_x[k];
        visit(x, half * rules.gl_w[k] * exp(-0.5 * x * x) * kInvSqrt2Pi);
      }
      edge = next;
      width = min_of(2.0 * width, kMaxPanel);
    }
  }
}

}  // namespace fallback

// series_pair_fallback with the rules given (see the CPU entry point above for the result).
NTKFAST_FALLBACK_HD inline void series_pair_fallback_with(const FallbackRules& r_,
                                                          const double* record, double a, double b,
                                                          double rho, double* nngp, double* dot) {
  using namespace fallback;
  const Interpolant phi(record);
  const bool kinked = record[0] > 0;
  const double sign = rho < 0 ? -1.0 : 1.0;
  const double r = min_of(fabs(rho), 1.0);
  const double s = sqrt((1.0 - r) * (1.0 + r));
  const double t = b * s;  // the spread of v's argument at a given x
  const double h = phi.h();
  const int64_t points = phi.points();

  // The fewest Gauss-Hermite nodes for spread t where φ is analytic within d of v's centre;
  // -1 where none qualifies (t > kSmoothSpread). The interpolant resolves φ on panels of width
  // h (record[1]) with P Chebyshev terms, so features of φ are no sharper than ~h: d <= h.
  auto hermite_rule = [&](double d) {
    const double ratio = t / d;
    for (int rule = 0; rule + 1 < kHermiteRules; ++rule)
      if (ratio <= r_.hermite_ratio[rule]) return rule;
    return t <= kSmoothSpread ? kHermiteRules - 1 : -1;
  };
  const int smooth_rule = hermite_rule(h);

  // Kink within |z| < 10 and 20·t <= h: v's argument stays within the first panel on each
  // side of 0, where φ and φ' are single polynomials; with u = z - z0 and v = ±t·u,
  //   G = Σ_k up[k]·E[u^k; u > 0] + Σ_k low[k]·E[u^k; u < 0],
  // the truncated Gaussian moments by their recurrence: exact, at the cost of a few terms.
  const bool moments = kinked && t > 0.0 && 20.0 * t <= h;
  double up[2][kFallbackMaxPoints], low[2][kFallbackMaxPoints];  // [0]: φ, [1]: φ'
  if (moments) {
    const double scale = 2.0 * t / h;  // T + 1 = 2|v|/h = scale·|u|
    for (int which = 0; which < 2; ++which) {
      // sign > 0: v > 0 where u > 0; |u|^k = (-u)^k on u < 0.
      taylor_at_left_end(phi.first_panel(sign < 0, which == 1), points, scale, 1.0, up[which]);
      taylor_at_left_end(phi.first_panel(sign > 0, which == 1), points, scale, -1.0, low[which]);
    }
  }
  auto kink_moments = [&](double z0, double& g, double& dg) {
    // L_k = E[(Z - z0)^k; Z < z0], U_k = E[(Z - z0)^k; Z > z0]:
    // L_0 = Φ(z0), L_1 = -pdf(z0) - z0·L_0; U_0 = Φ(-z0), U_1 = pdf(z0) - z0·U_0;
    // both I_{k+1} = k·I_{k-1} - z0·I_k (integration by parts against z·pdf = -pdf').
    // The recurrence loses relative accuracy on the side with the small mass, but its absolute
    // error stays ~1e-16 of Σ|up|, Σ|low| there (20·t <= h).
    const double pdf = exp(-0.5 * z0 * z0) * kInvSqrt2Pi;
    double l0 = 0.5 * erfc(-z0 / sqrt(2.0)), u0 = 0.5 * erfc(z0 / sqrt(2.0));
    double l1 = -pdf - z0 * l0, u1 = pdf - z0 * u0;
    g = up[0][0] * u0 + low[0][0] * l0;
    dg = up[1][0] * u0 + low[1][0] * l0;
    for (int64_t k = 1; k < points; ++k) {
      g += up[0][k] * u1 + low[0][k] * l1;
      dg += up[1][k] * u1 + low[1][k] * l1;
      const double l2 = double(k) * l0 - z0 * l1, u2 = double(k) * u0 - z0 * u1;
      l0 = l1;
      l1 = l2;
      u0 = u1;
      u1 = u2;
    }
  };

  // G(x) and its φ' counterpart.
  auto inner = [&](double x, double& g, double& dg) {
    const double center = r * x;
    if (t == 0.0) {
      phi(sign * b * center, g, dg);
      return;
    }
    const double z0 = -center / s;  // v's argument crosses 0 here
    g = dg = 0.0;
    // A kink at |z0| > 10: φ is analytic only on v's side of it, so d is also at most |v|'s
    // centre b·r·|x| = t·|z0| (the Gaussian mass past the kink is below 1e-22).
    const int rule = !kinked ? smooth_rule
                     : fabs(z0) > kRange ? hermite_rule(min_of(h, t * fabs(z0)))
                                         : -1;
    if (rule >= 0) {
      const int n = r_.gh_n[rule];
      const double* gz = r_.gh_z[rule];
      const double* gw = r_.gh_w[rule];
      for (int k = 0; k < n; ++k) {
        double f, df;
        phi(sign * b * (center + s * gz[k]), f, df);
        g += gw[k] * f;
        dg += gw[k] * df;
      }
      return;
    }
    if (moments) {
      kink_moments(z0, g, dg);
      return;
    }
    graded_panels(r_, clamp_to(z0, -kRange, kRange), 0.5 * min_of(1.0, 1.0 / t),
                  [&](double z, double w) {
                    double f, df;
                    phi(sign * b * (center + s * z), f, df);
                    g += w * f;
                    dg += w * df;
                  });
  };

  // Outer panels: graded from the finest feature at x = 0; a smoothed kink (scale s) only
  // matters within kKinkReach·s (beyond, G is φ's pieces smoothed, below e^-72 apart), from
  // where panels resume at the width the smooth features need. The interpolant's first panels
  // are polynomials, so φ(a·x) and G carry no singularity at 0 that needs finer grading there.
  double smooth_first = 0.5;
  if (a > 0) smooth_first = min_of(smooth_first, 0.5 / a);
  if (b * r > 0) smooth_first = min_of(smooth_first, 0.5 / (b * r));
  double first = smooth_first, far = kRange;
  if (kinked && s > 0) {
    const double scale = max_of(s, kMinGrading);
    first = min_of(first, scale);
    far = kKinkReach * scale;
  }
  double sum = 0.0, sum_dot = 0.0;
  graded_panels(
      r_, 0.0, first,
      [&](double x, double w) {
        double f, df, g, dg;
        phi(a * x, f, df);
        inner(x, g, dg);
        sum += w * f * g;
        sum_dot += w * df * dg;
      },
      far, smooth_first);
  *nngp = sum;
  *dot = sum_dot;
}

}  // namespace NTKFAST_ISA_NAMESPACE
}  // namespace ntkfast
