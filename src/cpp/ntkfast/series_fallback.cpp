// series_fallback.cpp -- see series_fallback.hpp.
//
// For u = a·X, v = b·Y with Y = r·X + s·Z (r = |ρ|, s = √(1 - r²), Z independent of X):
//   E[φ(u)φ(v)] = ∫ φ(a x) G(x) dN(x),   G(x) = ∫ φ(±b (r x + s z)) dN(z),
// and likewise for φ' (ρ < 0: v's sign flipped, which φ(-y) absorbs). Near parallel pairs are
// the point, so s is small: G is φ smoothed at the spread t = b·s of v's argument.
//  - outer (x): Gauss-Legendre panels graded from the scale of the integrand's features at
//    x = 0 (1/a, 1/(b r), and s where φ has a kink: the smoothed kink of G) to |x| = 10;
//  - inner (z): Gauss-Hermite where v's argument is smooth on the Gaussian's scale (t small and
//    no kink within |z| < 10), else Gauss-Legendre panels graded from the z where v's argument
//    crosses 0 (a kink there is a panel edge, exactly).
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
constexpr int kLegendre = 12;
constexpr int kHermite = 24;
constexpr double kPi = 3.14159265358979323846;
const double kInvSqrt2Pi = 1.0 / std::sqrt(2.0 * kPi);

struct Rules {
  double gl_x[kLegendre], gl_w[kLegendre];  // on [-1, 1]
  double gh_z[kHermite], gh_w[kHermite];    // Σ w f(z) ≈ E f(Z), Z standard normal
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
    // Gauss-Hermite (weight e^{-x²}): Newton on the orthonormal recurrence (Numerical Recipes'
    // gauher), then z = √2·x and w/√π for the standard normal.
    const int n = kHermite;
    double root[kHermite];
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
      gh_z[i] = std::sqrt(2.0) * z;
      gh_w[i] = w;
      gh_z[n - 1 - i] = -std::sqrt(2.0) * z;
      gh_w[n - 1 - i] = w;
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

  void operator()(double y, double& f, double& df) const {
    double ay = std::fabs(y), lo, width;
    int64_t panel;
    if (ay < b_) {
      panel = std::min(int64_t(ay / h_), uniform_ - 1);
      lo = double(panel) * h_;
      width = h_;
    } else {
      int e;
      std::frexp(ay / b_, &e);  // ay / b in [2^(e-1), 2^e)
      int64_t g = e - 1;
      if (g >= geometric_) {
        g = geometric_ - 1;
        ay = std::ldexp(b_, int(geometric_));
      }
      lo = std::ldexp(b_, int(g));
      width = lo;
      panel = uniform_ + g;
    }
    if (y < 0) panel += uniform_ + geometric_;
    const double t = std::clamp(2.0 * (ay - lo) / width - 1.0, -1.0, 1.0);
    f = clenshaw(phi_ + panel * points_, t);
    df = clenshaw(dphi_ + panel * points_, t);
  }

 private:
  double clenshaw(const double* c, double t) const {
    double b1 = 0.0, b2 = 0.0;
    for (int64_t k = points_ - 1; k >= 1; --k) {
      const double b0 = 2.0 * t * b1 - b2 + c[k];
      b2 = b1;
      b1 = b0;
    }
    return t * b1 - b2 + c[0];
  }

  double h_, b_;
  int64_t uniform_, geometric_, points_;
  const double* phi_;
  const double* dphi_;
};

// Calls visit(node, weight·pdf(node)) for Gauss-Legendre panels from `anchor` outwards to
// ±kRange (a side with anchor at its end has none), the first `first` wide, each twice the last,
// at most kMaxPanel.
template <class Visit>
void graded_panels(const Rules& rules, double anchor, double first, Visit visit) {
  for (int side = -1; side <= 1; side += 2) {
    double edge = anchor, width = first;
    while (side > 0 ? edge < kRange : edge > -kRange) {
      const double next = side > 0 ? std::min(edge + width, kRange) : std::max(edge - width, -kRange);
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
  if (!integral || !(m >= 1 && m <= 1e7 && g >= 1 && g <= 1000 && p >= 2 && p <= 64)) return false;
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

  // G(x) and its φ' counterpart.
  auto inner = [&](double x, double& g, double& dg) {
    const double center = r * x;
    if (t == 0.0) {
      phi(sign * b * center, g, dg);
      return;
    }
    const double z0 = -center / s;  // v's argument crosses 0 here
    g = dg = 0.0;
    if (t <= kSmoothSpread && (!kinked || std::fabs(z0) > kRange)) {
      for (int k = 0; k < kHermite; ++k) {
        double f, df;
        phi(sign * b * (center + s * r_.gh_z[k]), f, df);
        g += r_.gh_w[k] * f;
        dg += r_.gh_w[k] * df;
      }
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

  double first = 0.5;
  if (a > 0) first = std::min(first, 0.5 / a);
  if (b * r > 0) first = std::min(first, 0.5 / (b * r));
  if (kinked && s > 0) first = std::min(first, std::max(s, kMinGrading));
  double sum = 0.0, sum_dot = 0.0;
  graded_panels(r_, 0.0, first, [&](double x, double w) {
    double f, df, g, dg;
    phi(a * x, f, df);
    inner(x, g, dg);
    sum += w * f * g;
    sum_dot += w * df * dg;
  });
  *nngp = sum;
  *dot = sum_dot;
}

}  // namespace ntkfast
