// series_fallback.cpp -- see series_fallback.hpp.
//
// For u = a·X, v = b·Y with Y = r·X + s·Z (r = |ρ|, s = √(1 - r²), Z independent of X):
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
// ~1e-16 of the panel's weight.
#include "ntkfast/series_fallback.hpp"

#include <algorithm>
#include <cmath>

namespace ntkfast {
namespace {

constexpr double kRange = 10.0;         // |x|, |z| beyond: Gaussian weight below 2e-22
constexpr double kMaxPanel = 1.0;
constexpr double kSmoothSpread = 0.25;  // inner Gauss-Hermite for t up to this (error < 1e-30)
constexpr double kMinGrading = 1e-12;   // the finest outer panel near a smoothed kink
constexpr double kKinkReach = 12.0;     // the smoothed kink of G is below e^-72 beyond 12·s
constexpr int kLegendre = 12;
constexpr int kMaxPoints = 64;          // fallback_record_valid's bound on P
constexpr double kPi = 3.14159265358979323846;
const double kInvSqrt2Pi = 1.0 / std::sqrt(2.0 * kPi);

// Gauss-Hermite sizes, smallest first. With n nodes the rule integrates E f(y0 + t·Z) exactly
// for f a polynomial of degree 2n - 1; for f analytic on a disc of radius d about y0 (|f| <= M
// there) the Taylor terms left over sum to about 2·M·(2n - 1)!!·(t/d)^(2n) (E Z^2n = (2n-1)!!),
// so the n-node rule is used where that is below 1e-17·M (Rules::hermite_ratio). The largest
// rule keeps the original criterion (t <= kSmoothSpread), not this bound.
constexpr int kHermiteSizes[] = {2, 4, 8, 12, 16, 24};
constexpr int kHermiteRules = int(sizeof(kHermiteSizes) / sizeof(kHermiteSizes[0]));
constexpr int kMaxHermite = 24;
constexpr double kHermiteTolerance = 1e-17;

struct Rules {
  double gl_x[kLegendre], gl_w[kLegendre];  // on [-1, 1]
  // Σ w f(z) ≈ E f(Z), Z standard normal, one rule per kHermiteSizes entry.
  double gh_z[kHermiteRules][kMaxHermite], gh_w[kHermiteRules][kMaxHermite];
  double hermite_ratio[kHermiteRules];  // the largest t/d for each rule (the last: unused)
  Rules() {
    // Gauss-Legendre: Newton on P_n from the usual cosine guesses (Numerical Recipes' gauleg).
    for (int i = 0; i < kLegendre; ++i) {
      double x = std::cos(kPi * (i + 0.75) / (kLegendre + 0.5)), p = 0, dp = 0;
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
      gl_x[i] = x;
      gl_w[i] = 2.0 / ((1.0 - x * x) * dp * dp);
    }
    for (int rule = 0; rule < kHermiteRules; ++rule) {
      const int n = kHermiteSizes[rule];
      hermite_nodes(n, gh_z[rule], gh_w[rule]);
      double double_factorial = 1.0;  // (2n - 1)!!
      for (int k = 1; k < 2 * n; k += 2) double_factorial *= k;
      hermite_ratio[rule] = std::pow(kHermiteTolerance / (2.0 * double_factorial), 0.5 / n);
    }
  }

  // Gauss-Hermite (weight e^{-x²}): Newton on the orthonormal recurrence (Numerical Recipes'
  // gauher), then z = √2·x and w/√π for the standard normal.
  static void hermite_nodes(int n, double* gz, double* gw) {
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
        double p1 = std::pow(kPi, -0.25), p2 = 0.0;
        for (int j = 1; j <= n; ++j) {
          const double p3 = p2;
          p2 = p1;
          p1 = z * std::sqrt(2.0 / j) * p2 - std::sqrt(double(j - 1) / j) * p3;
        }
        dp = std::sqrt(2.0 * n) * p2;
        const double step = p1 / dp;
        z -= step;
        if (std::fabs(step) < 1e-15 * std::max(1.0, std::fabs(z))) break;
      }
      root[i] = z;
      const double w = 2.0 / (dp * dp) / std::sqrt(kPi);
      gz[i] = std::sqrt(2.0) * z;
      gw[i] = w;
      gz[n - 1 - i] = -std::sqrt(2.0) * z;
      gw[n - 1 - i] = w;
    }
  }
};

const Rules& rules() {
  static const Rules instance;  // thread-safe initialisation (C++11)
  return instance;
}

// φ and φ' from a record (series_fallback.hpp), one panel lookup for both.
class Interpolant {
 public:
  explicit Interpolant(const double* record)
      : h_(record[1]), b_(record[2]), uniform_(int64_t(record[3])),
        geometric_(int64_t(record[4])), points_(int64_t(record[5])),
        phi_(record + kFallbackHeader),
        dphi_(phi_ + 2 * (uniform_ + geometric_) * points_) {}

  double h() const { return h_; }
  int64_t points() const { return points_; }
  // Panel 0 of y >= 0 (negative: of y < 0), φ's coefficients (derivative: φ''s).
  const double* first_panel(bool negative, bool derivative) const {
    return (derivative ? dphi_ : phi_) + (negative ? (uniform_ + geometric_) * points_ : 0);
  }

  void operator()(double y, double& f, double& df) const {
    double ay = std::fabs(y), lo, inv_width;
    int64_t panel;
    if (ay < b_) {
      panel = std::min(int64_t(ay / h_), uniform_ - 1);
      lo = double(panel) * h_;
      inv_width = 1.0 / h_;
    } else {
      int e;
      std::frexp(ay / b_, &e);  // ay / b in [2^(e-1), 2^e)
      int64_t g = e - 1;
      if (g >= geometric_) {
        g = geometric_ - 1;
        ay = std::ldexp(b_, int(geometric_));
      }
      lo = std::ldexp(b_, int(g));
      inv_width = 1.0 / lo;
      panel = uniform_ + g;
    }
    if (y < 0) panel += uniform_ + geometric_;
    const double t = std::clamp(2.0 * (ay - lo) * inv_width - 1.0, -1.0, 1.0);
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
void taylor_at_left_end(const double* c, int64_t n, double scale, double* out) {
  double cur[kMaxPoints], next[kMaxPoints];
  std::copy(c, c + n, cur);
  double power = 1.0;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t m = n - k;  // cur holds m coefficients
    double value = 0.0;  // Σ cur[j]·T_j(-1), T_j(-1) = (-1)^j
    for (int64_t j = 0; j < m; ++j) value += j % 2 ? -cur[j] : cur[j];
    out[k] = value * power;
    power *= scale;
    if (m == 1) break;
    // Derivative coefficients (m - 1 of them), divided by k + 1.
    double d_hi = 0.0, d_hi2 = 0.0;  // d[j+1], d[j+2]
    for (int64_t j = m - 1; j >= 1; --j) {
      const double dj = d_hi2 + 2.0 * double(j) * cur[j];  // d[j-1]
      next[j - 1] = dj;
      d_hi2 = d_hi;
      d_hi = dj;
    }
    next[0] *= 0.5;
    for (int64_t j = 0; j < m - 1; ++j) cur[j] = next[j] / double(k + 1);
  }
}

// Calls visit(node, weight·pdf(node)) for Gauss-Legendre panels from `anchor` outwards to
// ±kRange (a side with anchor at its end has none), the first `first` wide, each twice the last,
// at most kMaxPanel; from `far` away from the anchor on, at least `far_width` wide.
template <class Visit>
void graded_panels(const Rules& rules, double anchor, double first, Visit visit,
                   double far = kRange, double far_width = 0.0) {
  for (int side = -1; side <= 1; side += 2) {
    double edge = anchor, width = first;
    while (side > 0 ? edge < kRange : edge > -kRange) {
      if (std::fabs(edge - anchor) >= far) width = std::max(width, far_width);
      const double next =
          side > 0 ? std::min(edge + width, kRange) : std::max(edge - width, -kRange);
      const double mid = 0.5 * (edge + next), half = 0.5 * std::fabs(next - edge);
      for (int k = 0; k < kLegendre; ++k) {
        const double x = mid + half * rules.gl_x[k];
        visit(x, half * rules.gl_w[k] * std::exp(-0.5 * x * x) * kInvSqrt2Pi);
      }
      edge = next;
      width = std::min(2.0 * width, kMaxPanel);
    }
  }
}

}  // namespace

bool fallback_record_valid(const double* record, int64_t length) {
  if (length < 1) return false;
  if (record[0] == -1.0) return true;
  if (length < kFallbackHeader || !(record[0] == 0.0 || record[0] == 1.0)) return false;
  const double h = record[1], b = record[2], m = record[3], g = record[4], p = record[5];
  const bool integral = m == std::floor(m) && g == std::floor(g) && p == std::floor(p);
  if (!integral || !(m >= 1 && m <= 1e7 && g >= 1 && g <= 1000 && p >= 2 && p <= kMaxPoints))
    return false;
  if (!(h > 0 && std::isfinite(h) && b == m * h)) return false;
  return length >= fallback_record_length(int64_t(m), int64_t(g), int64_t(p));
}

void series_pair_fallback(const double* record, double a, double b, double rho, double* nngp,
                          double* dot) {
  const Rules& r_ = rules();
  const Interpolant phi(record);
  const bool kinked = record[0] > 0;
  const double sign = rho < 0 ? -1.0 : 1.0;
  const double r = std::min(std::fabs(rho), 1.0);
  const double s = std::sqrt((1.0 - r) * (1.0 + r));
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
  double up[2][kMaxPoints], low[2][kMaxPoints];  // [0]: φ, [1]: φ'
  if (moments) {
    const double scale = 2.0 * t / h;  // T + 1 = 2|v|/h = scale·|u|
    for (int which = 0; which < 2; ++which) {
      double positive[kMaxPoints], negative[kMaxPoints];
      taylor_at_left_end(phi.first_panel(false, which == 1), points, scale, positive);
      taylor_at_left_end(phi.first_panel(true, which == 1), points, scale, negative);
      // sign > 0: v > 0 where u > 0; |u|^k = (-u)^k on u < 0.
      const double* above = sign > 0 ? positive : negative;
      const double* below = sign > 0 ? negative : positive;
      for (int64_t k = 0; k < points; ++k) {
        up[which][k] = above[k];
        low[which][k] = k % 2 ? -below[k] : below[k];
      }
    }
  }
  auto kink_moments = [&](double z0, double& g, double& dg) {
    // L_k = E[(Z - z0)^k; Z < z0], U_k = E[(Z - z0)^k; Z > z0]:
    // L_0 = Φ(z0), L_1 = -pdf(z0) - z0·L_0; U_0 = Φ(-z0), U_1 = pdf(z0) - z0·U_0;
    // both I_{k+1} = k·I_{k-1} - z0·I_k (integration by parts against z·pdf = -pdf').
    // The recurrence loses relative accuracy on the side with the small mass, but its absolute
    // error stays ~1e-16 of Σ|up|, Σ|low| there (20·t <= h).
    const double pdf = std::exp(-0.5 * z0 * z0) * kInvSqrt2Pi;
    double l0 = 0.5 * std::erfc(-z0 / std::sqrt(2.0)), u0 = 0.5 * std::erfc(z0 / std::sqrt(2.0));
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
                     : std::fabs(z0) > kRange ? hermite_rule(std::min(h, t * std::fabs(z0)))
                                              : -1;
    if (rule >= 0) {
      const int n = kHermiteSizes[rule];
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
    graded_panels(r_, std::clamp(z0, -kRange, kRange), 0.5 * std::min(1.0, 1.0 / t),
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
  if (a > 0) smooth_first = std::min(smooth_first, 0.5 / a);
  if (b * r > 0) smooth_first = std::min(smooth_first, 0.5 / (b * r));
  double first = smooth_first, far = kRange;
  if (kinked && s > 0) {
    const double scale = std::max(s, kMinGrading);
    first = std::min(first, scale);
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

}  // namespace ntkfast
