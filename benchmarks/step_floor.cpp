// step_floor.cpp -- the standalone fused ReLU layer step that benchmarks/layer_steps.py times as a
// floor for the engine's per-entry cost (not part of the library; compiled by that script for
// one instruction set at a time, with the library's floating-point flags: no -ffast-math).
//
// One layer = Dense + ReLU on (c, t) per entry, everything in registers in one pass over a chunk
// of 64 entries in L1, with the per-row tables a real engine would have (1/√q and √q):
//   c <- W² c + b²,  t <- W² t + c                                   (Dense, 'ntk')
//   ρ = clip(c · (1/√q1) · (1/√q2), -1, 1),  θ = acos ρ,  sin θ = √(1 - ρ²)
//   c <- k1 √(q1 q2) sin θ + (k0 - k1 θ) c,  t <- (k0 - k1 θ) t     (ReLU: k0 = 1/2, k1 = 1/(2π))
// acos is either a polynomial (asin on [0, 1/2] after acos's reduction, tools/fit_atan.py) or
// glibc's vector acos (libmvec, when linked). This is cheaper than the engine's map, not a
// substitute for it: ρ formed by rounding loses the relative accuracy of 1 - ρ (θ ≈ √(2(1 - ρ))
// errs by ~ε/θ near ρ = ±1), which layer_math.hpp avoids with r = √(q1 q2 - c²) in FMAs.
//
//   g++ -O3 -std=c++17 -fno-math-errno -fno-trapping-math -ffp-contract=off -mavx2 -mfma
//       step_floor.cpp -o step_floor [-DFLOOR_LIBMVEC -lmvec]
//   ./step_floor            # prints "<variant> <ns per entry-layer>" lines
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>

#include <immintrin.h>

#if defined(__AVX512F__)
constexpr int kBytes = 64;
#define FLOOR_ISA "avx512"
#elif defined(__AVX2__)
constexpr int kBytes = 32;
#define FLOOR_ISA "avx2"
#else
constexpr int kBytes = 16;
#define FLOOR_ISA "sse2"
#endif

template <class T>
struct Lanes {
  typedef T type __attribute__((vector_size(kBytes)));
  static constexpr int n = kBytes / sizeof(T);
};

#if defined(FLOOR_LIBMVEC)
// glibc's vector math (x86-64 vector function ABI names: b = SSE, d = AVX2, e = AVX-512).
#if defined(__AVX512F__)
extern "C" Lanes<double>::type _ZGVeN8v_acos(Lanes<double>::type);
extern "C" Lanes<float>::type _ZGVeN16v_acosf(Lanes<float>::type);
inline Lanes<double>::type mvec_acos(Lanes<double>::type x) { return _ZGVeN8v_acos(x); }
inline Lanes<float>::type mvec_acos(Lanes<float>::type x) { return _ZGVeN16v_acosf(x); }
#elif defined(__AVX2__)
extern "C" Lanes<double>::type _ZGVdN4v_acos(Lanes<double>::type);
extern "C" Lanes<float>::type _ZGVdN8v_acosf(Lanes<float>::type);
inline Lanes<double>::type mvec_acos(Lanes<double>::type x) { return _ZGVdN4v_acos(x); }
inline Lanes<float>::type mvec_acos(Lanes<float>::type x) { return _ZGVdN8v_acosf(x); }
#else
extern "C" Lanes<double>::type _ZGVbN2v_acos(Lanes<double>::type);
extern "C" Lanes<float>::type _ZGVbN4v_acosf(Lanes<float>::type);
inline Lanes<double>::type mvec_acos(Lanes<double>::type x) { return _ZGVbN2v_acos(x); }
inline Lanes<float>::type mvec_acos(Lanes<float>::type x) { return _ZGVbN4v_acosf(x); }
#endif
#endif

template <class V>
inline V vsqrt(V x) {
  V r;
  for (unsigned i = 0; i < sizeof(V) / sizeof(x[0]); ++i) r[i] = std::sqrt(x[i]);
  return r;
}

// One fused multiply-add per vector (a lane-wise loop of __builtin_fma is not always vectorised).
template <class V, class S>
inline V fma_(V a, V b, V c) {
#if defined(__AVX512F__)
  if constexpr (sizeof(S) == 8) return (V)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
  else return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  if constexpr (sizeof(S) == 8) return (V)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
  else return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

// asin(u) = u + u z P(z), z = u², |u| <= 1/2 (tools/fit_atan.py: float64 degree 11, 0.58 ulp;
// float32 degree 4, 0.54 ulp), and acos(x) = π/2 - asin x for |x| <= 1/2, 2 asin √((1 - |x|)/2)
// above (π minus that for x < 0).
constexpr double kAsin64[] = {0.16666666666665408,  0.07500000000337013,  0.0446428568283291,
                              0.030381959136916256, 0.022371758052064487, 0.017359704732462882,
                              0.01388523583653859,  0.012169208781023478, 0.00652798925450439,
                              0.019528223413133924, -0.01622418304145986, 0.03191221989870703};
constexpr float kAsin32[] = {0.16666752099990845f, 0.07495297491550446f, 0.04547037556767464f,
                             0.02417951449751854f, 0.04216630756855011f};

template <class V, class S>
inline V poly_acos(V x) {
  constexpr int deg = sizeof(S) == 8 ? 11 : 4;
  const V a = x < 0 ? -x : x;
  const auto big = a > S(0.5);
  const V z = big ? S(0.5) - S(0.5) * a : a * a;
  const V u = big ? vsqrt(z) : a;
  V poly = V{} + S(sizeof(S) == 8 ? kAsin64[deg] : kAsin32[deg]);
#pragma GCC unroll 16
  for (int k = deg - 1; k >= 0; --k)
    poly = fma_<V, S>(poly, z, V{} + S(sizeof(S) == 8 ? kAsin64[k] : kAsin32[k]));
  const V as = fma_<V, S>(u * z, poly, u);
  const V th = big ? as + as : S(1.5707963267948966) - as;
  return x < 0 ? S(3.141592653589793) - th : th;
}

// Two passes over the chunk (Dense, ρ and sin θ; then θ and the update): each a short dependency
// chain, so the out-of-order core overlaps the chunk's vectors (one pass is ~20 % slower here).
template <class S, bool Mvec>
void layer(S iq1, S sq1, const S* iq2, const S* sq2, S* c, S* t) {
  typedef typename Lanes<S>::type V;
  constexpr int n = Lanes<S>::n;
  const S w2 = 1.0, b2 = 0.0, k0 = 0.5, k1 = S(1 / (2 * 3.141592653589793));
  alignas(64) S rho_buf[64], sine_buf[64];
  for (int j = 0; j < 64; j += n) {
    V cv, tv, i2;
    std::memcpy(&cv, c + j, sizeof cv);
    std::memcpy(&tv, t + j, sizeof tv);
    std::memcpy(&i2, iq2 + j, sizeof i2);
    cv = fma_<V, S>(V{} + w2, cv, V{} + b2);
    tv = fma_<V, S>(V{} + w2, tv, cv);
    V rho = cv * iq1 * i2;
    rho = rho > S(1) ? V{} + S(1) : rho;
    rho = rho < S(-1) ? V{} - S(1) : rho;
    const V sine = vsqrt(fma_<V, S>(-rho, rho, V{} + S(1)));
    std::memcpy(c + j, &cv, sizeof cv);
    std::memcpy(t + j, &tv, sizeof tv);
    std::memcpy(rho_buf + j, &rho, sizeof rho);
    std::memcpy(sine_buf + j, &sine, sizeof sine);
  }
  for (int j = 0; j < 64; j += n) {
    V cv, tv, s2, rho, sine;
    std::memcpy(&cv, c + j, sizeof cv);
    std::memcpy(&tv, t + j, sizeof tv);
    std::memcpy(&s2, sq2 + j, sizeof s2);
    std::memcpy(&rho, rho_buf + j, sizeof rho);
    std::memcpy(&sine, sine_buf + j, sizeof sine);
    V theta;
#if defined(FLOOR_LIBMVEC)
    if (Mvec)
      theta = mvec_acos(rho);
    else
#endif
      theta = poly_acos<V, S>(rho);
    const V dot = fma_<V, S>(V{} - k1, theta, V{} + k0);
    cv = fma_<V, S>(k1 * sq1 * s2, sine, dot * cv);
    tv = dot * tv;
    std::memcpy(c + j, &cv, sizeof cv);
    std::memcpy(t + j, &tv, sizeof tv);
  }
}

// CPU time of this thread: other processes on a shared machine do not inflate it.
double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

template <class S, bool Mvec>
double time_layers() {
  constexpr int kLayers = 10, kReps = 4000, kTrials = 40;
  alignas(64) static S iq[kLayers][64], sq[kLayers][64];
  alignas(64) S c[64], t[64];
  for (int l = 0; l < kLayers; ++l)
    for (int j = 0; j < 64; ++j) {
      const double q = 0.5 + 1.5 * ((j * 13 + l * 7) % 64) / 64.0;
      sq[l][j] = S(std::sqrt(q));
      iq[l][j] = S(1 / std::sqrt(q));
    }
  double best = 1e30;
  for (int trial = 0; trial < kTrials; ++trial) {
    const double start = thread_seconds();
    for (int r = 0; r < kReps; ++r) {
      for (int j = 0; j < 64; ++j) {
        c[j] = S(0.6 * double((j * 37 + r) % 64) / 64.0 - 0.3);
        t[j] = S(1);
      }
      for (int l = 0; l < kLayers; ++l) layer<S, Mvec>(S(1), S(1), iq[l], sq[l], c, t);
    }
    const double seconds = thread_seconds() - start;
    best = std::min(best, seconds);
    volatile S sink = c[0] + t[0];
    (void)sink;
  }
  return best / (double(kReps) * kLayers * 64) * 1e9;
}

int main() {
  std::printf("isa %s\n", FLOOR_ISA);
  std::printf("float64 poly-acos %.3f\n", time_layers<double, false>());
#if defined(FLOOR_LIBMVEC)
  std::printf("float64 libmvec-acos %.3f\n", time_layers<double, true>());
#endif
  std::printf("float32 poly-acos %.3f\n", time_layers<float, false>());
#if defined(FLOOR_LIBMVEC)
  std::printf("float32 libmvec-acos %.3f\n", time_layers<float, true>());
#endif
  return 0;
}
