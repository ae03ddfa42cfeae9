// simd.hpp -- the CPU lane types for layer_math.hpp: a GCC/Clang vector of doubles whose width
// follows the instruction set this translation unit is compiled for (2 for SSE2, 4 for AVX2,
// 8 for AVX-512), and Pack<G>, G such vectors, that the tile kernel runs the layer maps on.
// Include it before layer_math.hpp so the overloads are visible to the templates there.
//
// Why a Pack: one layer map on one vector is a ~100-cycle chain of dependent operations (a square
// root, a division, a polynomial), while the hardware can issue ~2 vector operations per cycle. A
// Pack applies every elementary operation to its G vectors one after the other, so the
// instruction stream itself interleaves G independent chains and the out-of-order core has them
// in its window together (Erf on Zen 4, AVX-512: 3.0 -> 2.1 ns per entry-layer with G = 4). A GCC
// vector wider than the hardware would say the same more briefly, but GCC 12 lowers its
// comparisons and selects to scalar code.
#pragma once

#include <cmath>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifndef NTKFAST_ISA_NAMESPACE
#define NTKFAST_ISA_NAMESPACE generic
#endif

namespace ntkfast {
inline namespace NTKFAST_ISA_NAMESPACE {

#if defined(__AVX512F__)
constexpr int kLanes = 8;
#elif defined(__AVX2__)
constexpr int kLanes = 4;
#else
constexpr int kLanes = 2;
#endif

#define NTKFAST_SIMD_INLINE inline __attribute__((always_inline))

typedef double vdouble __attribute__((vector_size(kLanes * sizeof(double))));
// What a comparison of two vdouble gives: a lane is all ones where true.
typedef decltype(vdouble{} < vdouble{}) vmask;

// Lane-wise loops over builtins: the compiler emits one vector square root (-fno-math-errno);
// exp has no vector form without -ffast-math's libmvec, so it stays a call per lane.
NTKFAST_SIMD_INLINE vdouble nt_sqrt(vdouble x) {
  vdouble r;
  for (int i = 0; i < kLanes; ++i) r[i] = __builtin_sqrt(x[i]);
  return r;
}

// With FMA hardware (AVX2, AVX-512) this is one vector FMA; the generic x86-64 variant calls the
// C library's (exact, slower) fma per lane.
NTKFAST_SIMD_INLINE vdouble nt_fma(vdouble a, vdouble b, vdouble c) {
  vdouble r;
  for (int i = 0; i < kLanes; ++i) r[i] = __builtin_fma(a[i], b[i], c[i]);
  return r;
}

#if defined(__FMA__)
NTKFAST_SIMD_INLINE vdouble nt_mad(vdouble a, vdouble b, vdouble c) { return nt_fma(a, b, c); }
#else
NTKFAST_SIMD_INLINE vdouble nt_mad(vdouble a, vdouble b, vdouble c) { return a * b + c; }
#endif

// nt_max(a, b) = a > b ? a : b and nt_min(a, b) = a < b ? a : b lane by lane, NaN and ±0 included,
// which is exactly what the x86 max/min instructions compute (GCC emits a compare and a blend for
// the conditional form under AVX-512).
NTKFAST_SIMD_INLINE vdouble nt_max(vdouble a, vdouble b) {
#if defined(__AVX512F__)
  return _mm512_mask_max_pd(a, 0xFF, a, b);  // all lanes; unlike _mm512_max_pd, no GCC 12 warning
#elif defined(__AVX__)
  return _mm256_max_pd(a, b);
#elif defined(__SSE2__)
  return _mm_max_pd(a, b);
#else
  return a > b ? a : b;
#endif
}
NTKFAST_SIMD_INLINE vdouble nt_min(vdouble a, vdouble b) {
#if defined(__AVX512F__)
  return _mm512_mask_min_pd(a, 0xFF, a, b);
#elif defined(__AVX__)
  return _mm256_min_pd(a, b);
#elif defined(__SSE2__)
  return _mm_min_pd(a, b);
#else
  return a < b ? a : b;
#endif
}

// Sign-bit operations (a cast between GCC vectors of the same size reinterprets the bits).
NTKFAST_SIMD_INLINE vmask sign_bits() { return (vmask)(-vdouble{}); }  // -(+0) = -0: the sign bit
NTKFAST_SIMD_INLINE vdouble nt_abs(vdouble a) { return (vdouble)((vmask)a & ~sign_bits()); }
NTKFAST_SIMD_INLINE vdouble nt_xorsign(vdouble a, vdouble s) {
  return (vdouble)((vmask)a ^ ((vmask)s & sign_bits()));
}

NTKFAST_SIMD_INLINE vdouble nt_exp(vdouble x) {
  vdouble r;
  for (int i = 0; i < kLanes; ++i) r[i] = ::exp(x[i]);
  return r;
}

// ------------------------------------------------------------------------------------------------
// Pack<G>: G vdoubles, operated on part by part (every operator, nt_select, nt_sqrt, ...). The
// results are those of the vdouble operations, bit for bit: a Gram entry computed in a Pack equals
// the same entry computed by the per-row pass on a single vdouble.

template <int G>
struct Pack {
  vdouble v[G];
};
template <int G>
struct PackMask {
  vmask v[G];
};

#define NTKFAST_PACK_PARTS(T, EXPR)             \
  T r;                                          \
  for (int g = 0; g < G; ++g) r.v[g] = EXPR;    \
  return r;
#define NTKFAST_PACK_OPERATOR(R, OP)                                                        \
  template <int G>                                                                          \
  NTKFAST_SIMD_INLINE R<G> operator OP(const Pack<G>& a, const Pack<G>& b) {                \
    NTKFAST_PACK_PARTS(R<G>, a.v[g] OP b.v[g])                                              \
  }                                                                                         \
  template <int G>                                                                          \
  NTKFAST_SIMD_INLINE R<G> operator OP(const Pack<G>& a, double b) {                        \
    NTKFAST_PACK_PARTS(R<G>, a.v[g] OP b)                                                   \
  }                                                                                         \
  template <int G>                                                                          \
  NTKFAST_SIMD_INLINE R<G> operator OP(double a, const Pack<G>& b) {                        \
    NTKFAST_PACK_PARTS(R<G>, a OP b.v[g])                                                   \
  }
NTKFAST_PACK_OPERATOR(Pack, +)
NTKFAST_PACK_OPERATOR(Pack, -)
NTKFAST_PACK_OPERATOR(Pack, *)
NTKFAST_PACK_OPERATOR(Pack, /)
NTKFAST_PACK_OPERATOR(PackMask, <)
NTKFAST_PACK_OPERATOR(PackMask, <=)
NTKFAST_PACK_OPERATOR(PackMask, >)
NTKFAST_PACK_OPERATOR(PackMask, >=)
NTKFAST_PACK_OPERATOR(PackMask, ==)
#undef NTKFAST_PACK_OPERATOR

// Unary and n-ary functions of Packs, part by part.
template <int G>
NTKFAST_SIMD_INLINE PackMask<G> operator&(const PackMask<G>& a, const PackMask<G>& b) {
  PackMask<G> r;
  for (int g = 0; g < G; ++g) r.v[g] = a.v[g] & b.v[g];
  return r;
}

#define NTKFAST_PACK_FUNCTION(R, NAME, PARAMS, EXPR) \
  template <int G>                                  \
  NTKFAST_SIMD_INLINE R<G> NAME PARAMS {            \
    NTKFAST_PACK_PARTS(R<G>, EXPR)                  \
  }
NTKFAST_PACK_FUNCTION(Pack, operator-, (const Pack<G>& a), -a.v[g])
NTKFAST_PACK_FUNCTION(Pack, nt_select, (const PackMask<G>& m, const Pack<G>& a, const Pack<G>& b),
                      m.v[g] ? a.v[g] : b.v[g])
NTKFAST_PACK_FUNCTION(Pack, nt_sqrt, (const Pack<G>& a), nt_sqrt(a.v[g]))
NTKFAST_PACK_FUNCTION(Pack, nt_exp, (const Pack<G>& a), nt_exp(a.v[g]))
NTKFAST_PACK_FUNCTION(Pack, nt_abs, (const Pack<G>& a), nt_abs(a.v[g]))
NTKFAST_PACK_FUNCTION(Pack, nt_max, (const Pack<G>& a, const Pack<G>& b), nt_max(a.v[g], b.v[g]))
NTKFAST_PACK_FUNCTION(Pack, nt_min, (const Pack<G>& a, const Pack<G>& b), nt_min(a.v[g], b.v[g]))
NTKFAST_PACK_FUNCTION(Pack, nt_xorsign, (const Pack<G>& a, const Pack<G>& s),
                      nt_xorsign(a.v[g], s.v[g]))
NTKFAST_PACK_FUNCTION(Pack, nt_fma, (const Pack<G>& a, const Pack<G>& b, const Pack<G>& c),
                      nt_fma(a.v[g], b.v[g], c.v[g]))
NTKFAST_PACK_FUNCTION(Pack, nt_mad, (const Pack<G>& a, const Pack<G>& b, const Pack<G>& c),
                      nt_mad(a.v[g], b.v[g], c.v[g]))
#undef NTKFAST_PACK_FUNCTION
#undef NTKFAST_PACK_PARTS

}  // namespace NTKFAST_ISA_NAMESPACE
}  // namespace ntkfast
